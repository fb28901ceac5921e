"""Configuration: one TOML file read into one frozen ``Config``.

Defaults live only on the dataclass fields. ``load_config`` reports every problem at once, each
naming its key (``config.toml: [policy] similar_threshold: must be between 0 and 1, got 1.5``),
and unknown keys are errors with a "did you mean".
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from dupwatch.errors import ConfigError

DEFAULT_EXTENSIONS = (
    "jpg",
    "jpeg",
    "png",
    "webp",
    "heic",
    "heif",
    "tif",
    "tiff",
    "bmp",
    "gif",
)

TierAction = Literal["quarantine", "log"]


# A duration in seconds; in TOML a number of seconds or a string like "90s", "30m", "6h", "30d".
Seconds = Annotated[float, "duration"]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Parse "90s", "30m", "6h", "30d" or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f'expected a duration like "90s", "30m", "6h" or "30d", got {text!r}')
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True, slots=True)
class WatchConfig:
    # Directories to watch, recursively. `dupwatch run ROOT...` adds to these.
    roots: tuple[Path, ...] = ()
    # Only files with these extensions (case-insensitive) are considered.
    include_extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    # Extra glob patterns (matched against each name) to ignore, beyond the built-in ones.
    ignore: tuple[str, ...] = ()
    # A file is processed once it has had no events and an unchanged size/mtime for this long.
    settle_seconds: Seconds = 5.0
    # Full reconciliation walk of every root: inotify gives latency, the walk gives correctness.
    rescan_interval: Seconds = 6 * 3600
    # Walk interval for roots on network filesystems, where inotify sees no remote writes.
    poll_interval: Seconds = 600
    # Treat every root as a network mount (walks only, no inotify).
    force_polling: bool = False


@dataclass(frozen=True, slots=True)
class DecodeConfig:
    # Refuse images declaring more pixels than this (decompression bombs, giant scans).
    max_megapixels: float = 100.0
    # Refuse files larger than this many MiB without reading them.
    max_file_mib: int = 512
    # Worker process limits: a decoder that hangs or balloons costs one file, not the daemon.
    worker_timeout: Seconds = 60.0
    worker_memory_mib: int = 1024

    @property
    def max_file_bytes(self) -> int:
        return self.max_file_mib * 2**20


@dataclass(frozen=True, slots=True)
class ModelConfig:
    # "auto" picks the fastest runtime that works on this CPU.
    backend: Literal["auto", "onnxruntime", "opencv", "tensorflow"] = "auto"
    # Threads for inference in each worker process.
    threads: int = 1
    # Worker processes that decode, fingerprint and verify (each holds the model, ~200 MB);
    # 0 = one per CPU core, at most 2. They run at the service's low CPU priority.
    workers: int = 0


@dataclass(frozen=True, slots=True)
class IndexConfig:
    # Rebuild the Annoy snapshot once this many vectors are in the recent buffer...
    rebuild_buffer_size: int = 5000
    # ...or once the oldest buffered vector is this old (if the buffer is not empty).
    rebuild_max_age: Seconds = 3600
    # How many neighbours each search asks for.
    neighbours: int = 10


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    # Embedding cosine similarity at or above which a neighbour is a candidate duplicate,
    # sent to verification (which decides); a file that is not a verified copy but at least
    # similar_threshold close to a known photo is "similar". Calibrated with bench/calibrate.py:
    # screenshots, letterboxed and cropped copies sit between 0.6 and 0.8.
    candidate_threshold: float = 0.70
    similar_threshold: float = 0.90
    # Which copy stays: "best" (more pixels, richer format, larger file, more EXIF, older) or
    # "first-seen" (the one already in the library).
    keep: Literal["best", "first-seen"] = "best"
    # What to do per tier. "log" never touches a file (a shadow mode).
    exact_action: TierAction = "quarantine"
    duplicate_action: TierAction = "quarantine"
    similar_action: Literal["log"] = "log"
    # Two photos from the same camera with different capture times are never duplicates.
    camera_time_veto: bool = True


@dataclass(frozen=True, slots=True)
class QuarantineConfig:
    # Directory created at the top of each root; moves stay on one filesystem (a rename).
    dir_name: str = ".dupwatch-quarantine"


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    # "auto": JSON when not on a terminal (systemd), readable key=value on a terminal.
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    watch: WatchConfig = field(default_factory=WatchConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def with_roots(self, roots: typing.Sequence[Path]) -> Config:
        """Return a copy watching ``roots`` in addition to the configured ones."""
        merged = tuple(dict.fromkeys([*self.watch.roots, *(Path(r) for r in roots)]))
        return dataclasses.replace(self, watch=dataclasses.replace(self.watch, roots=merged))


def _section_types() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Config, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _suggest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else f'"{value}"'


def _convert(hint: Any, value: Any) -> Any:
    """Convert a TOML value to ``hint``; raise ValueError with a user-facing message."""
    origin = typing.get_origin(hint)
    if typing.get_origin(hint) is Annotated:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"must be a duration, got {_describe(value)}")
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
        if seconds < 0:
            raise ValueError(f"must not be negative, got {_describe(value)}")
        return seconds
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            listed = ", ".join(f'"{c}"' for c in choices)
            raise ValueError(f"must be one of {listed}, got {_describe(value)}")
        return value
    if origin is tuple:
        (item_hint, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"must be a list, got {_describe(value)}")
        return tuple(_convert(item_hint, item) for item in value)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be a path string, got {_describe(value)}")
        return Path(value).expanduser()
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, got {_describe(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported config type {hint}")


def _build_section(
    section: str, cls: type[Any], table: Any, problems: list[str], where: str
) -> Any:
    if not isinstance(table, dict):
        problems.append(f"{where}[{section}]: must be a table, got {_describe(table)}")
        return cls()
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in hints:
            problems.append(f"{where}[{section}] {key}: unknown key{_suggest(key, names)}")
            continue
        try:
            values[key] = _convert(hints[key], raw)
        except ValueError as exc:
            problems.append(f"{where}[{section}] {key}: {exc}")
    return cls(**values)


def _check_ranges(config: Config, problems: list[str], where: str) -> None:
    def bad(section: str, key: str, message: str) -> None:
        problems.append(f"{where}[{section}] {key}: {message}")

    policy = config.policy
    for key in ("candidate_threshold", "similar_threshold"):
        value = getattr(policy, key)
        if not 0.0 <= value <= 1.0:
            bad("policy", key, f"must be between 0 and 1, got {value}")
    if policy.candidate_threshold > policy.similar_threshold:
        bad(
            "policy",
            "candidate_threshold",
            f"must not exceed similar_threshold ({policy.similar_threshold}), "
            f"got {policy.candidate_threshold}",
        )
    if config.watch.settle_seconds <= 0:
        bad("watch", "settle_seconds", "must be greater than 0")
    if config.watch.rescan_interval < 60:
        bad("watch", "rescan_interval", "must be at least 60 seconds")
    if config.watch.poll_interval < 5:
        bad("watch", "poll_interval", "must be at least 5 seconds")
    if not config.watch.include_extensions:
        bad("watch", "include_extensions", "must list at least one extension")
    if config.decode.max_megapixels <= 0:
        bad("decode", "max_megapixels", "must be greater than 0")
    if config.decode.max_file_mib <= 0:
        bad("decode", "max_file_mib", "must be greater than 0")
    if config.decode.worker_memory_mib < 256:
        bad("decode", "worker_memory_mib", "must be at least 256")
    if config.model.threads < 1:
        bad("model", "threads", "must be at least 1")
    if not 0 <= config.model.workers <= 16:
        bad("model", "workers", "must be between 0 (automatic) and 16")
    if config.index.rebuild_buffer_size < 1:
        bad("index", "rebuild_buffer_size", "must be at least 1")
    if not 1 <= config.index.neighbours <= 1000:
        bad("index", "neighbours", "must be between 1 and 1000")
    name = config.quarantine.dir_name
    if not name or "/" in name or name in {".", ".."}:
        bad("quarantine", "dir_name", f"must be a plain directory name, got {_describe(name)}")


def check_roots(roots: typing.Sequence[Path]) -> list[str]:
    """Problems with the roots to watch: each must be an existing directory, none nested."""
    problems = []
    resolved: list[Path] = []
    for root in roots:
        if not root.is_dir():
            problems.append(f"[watch] roots: {root} is not an existing directory")
            continue
        resolved.append(root.resolve())
    for a in resolved:
        for b in resolved:
            if a != b and a.is_relative_to(b):
                problems.append(
                    f"[watch] roots: {a} lies inside {b}; watch the outer directory only"
                )
    return problems


def parse_config(data: dict[str, Any], where: str = "") -> Config:
    """Build a ``Config`` from a parsed TOML document; raise ConfigError listing every problem."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    types_by_section = _section_types()
    for section, table in data.items():
        if section not in types_by_section:
            suggestion = _suggest(section, types_by_section)
            problems.append(f"{where}[{section}]: unknown section{suggestion}")
            continue
        sections[section] = _build_section(
            section, types_by_section[section], table, problems, where
        )
    config = Config(**sections)
    _check_ranges(config, problems, where)
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: Path | None) -> Config:
    """Read ``path`` (or return the built-in defaults when it is None)."""
    if path is None:
        return Config()
    where = f"{path}: "
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(data, where)
