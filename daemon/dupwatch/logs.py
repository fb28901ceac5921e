"""structlog setup: JSON lines under systemd, a readable console on a terminal.

Every event has a stable snake_case name and its values in keys. File names are escaped so a
name with a newline, an ANSI escape or undecodable bytes can never break or forge a log line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]

# syslog priorities for journald's "<N>" stdout prefix, so `journalctl -p warning` works.
_SYSLOG_PRIORITY = {
    "critical": 2,
    "error": 3,
    "warning": 4,
    "info": 6,
    "debug": 7,
}

_CONTROL_CHARS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}


def printable(value: str | bytes | os.PathLike[str]) -> str:
    """Return a one-line, encodable rendering of a file name.

    Undecodable bytes (surrogate escapes from the filesystem) become ``\\xNN`` and control
    characters become ``\\xNN``, so the result can be written to any terminal or journal.
    """
    raw = os.fsencode(value) if not isinstance(value, bytes) else value
    text = raw.decode("utf-8", errors="backslashreplace")
    return text.translate(_CONTROL_CHARS)


def _escape_values(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, Path | bytes) or (isinstance(value, str) and key != "event"):
            event_dict[key] = printable(value)
    return event_dict


class _JournalJSONRenderer:
    """JSON renderer that prefixes each line with its syslog priority for journald."""

    def __init__(self, priority_prefix: bool) -> None:
        self._priority_prefix = priority_prefix

    def __call__(self, _logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        line = json.dumps(event_dict, default=str, sort_keys=False)
        if not self._priority_prefix:
            return line
        level = str(event_dict.get("level", method))
        return f"<{_SYSLOG_PRIORITY.get(level, 6)}>{line}"


class _StdStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` or ``sys.stderr`` is at the time of each record."""

    def __init__(self, name: str) -> None:
        self._std_name = name
        super().__init__()

    @property
    def stream(self) -> TextIO:
        stream: TextIO = getattr(sys, self._std_name)
        return stream

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass  # the stream is looked up on every write


# watchdog keeps the watches of a directory moved out of a root (inotify cannot say where it
# went) and, when that directory is moved back in, registers the same callback on them again
# with a RuntimeWarning ending in this text. Nothing is lost or doubled, and only watchdog's own
# bookkeeping could avoid it, so it is a debug detail rather than a warning for the journal.
_WATCHDOG_REWATCH = "It will be Overwritten"


class _DemoteWatchdogRewatch(logging.Filter):
    """Turns watchdog's re-registered-watch warning (captured from ``warnings``) into debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings" and record.levelno == logging.WARNING:
            message = record.getMessage()
            if _WATCHDOG_REWATCH in message and "watchdog" in message:
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def under_systemd() -> bool:
    """True when stdout goes to the journal (systemd sets JOURNAL_STREAM for the service)."""
    return "JOURNAL_STREAM" in os.environ or "INVOCATION_ID" in os.environ


def configure_logging(
    level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog and route the standard library's loggers through it.

    ``auto`` writes JSON when stdout is not a terminal (systemd, pipes) and a readable
    key=value console format on a terminal.
    """
    out = stream if stream is not None else sys.stdout
    if stream is sys.stdout or stream is sys.stderr:
        # Follow the interpreter's stream rather than hold today's object, which a test
        # harness or a daemoniser may close and replace.
        stream = None
        std_name = "stderr" if out is sys.stderr else "stdout"
    else:
        std_name = "stdout"
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _escape_values,
    ]
    renderer: Any
    if fmt == "json":
        renderer = _JournalJSONRenderer(priority_prefix=under_systemd())
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())

    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        cache_logger_on_first_use=False,
    )

    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StdStreamHandler(std_name)
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.addFilter(_DemoteWatchdogRewatch())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # Library warnings (Pillow's "Corrupt EXIF data", ...) become log events, not stray stderr.
    logging.captureWarnings(True)
    # Third-party chatter (watchdog's per-event debug, TensorFlow's start-up notes) stays quiet
    # unless something goes wrong.
    for noisy in ("watchdog", "tensorflow", "absl", "PIL"):
        logging.getLogger(noisy).setLevel(max(numeric_level, logging.WARNING))
