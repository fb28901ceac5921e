"""Configuration: the documented example, validation messages, durations, roots."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from dupwatch.config import Config, check_roots, load_config, parse_duration
from dupwatch.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_example_config_documents_every_key_with_its_default() -> None:
    assert load_config(EXAMPLE) == Config()
    document = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    for section in dataclasses.fields(Config):
        documented = set(document.get(section.name, {}))
        keys = {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        assert documented == keys, f"[{section.name}] example differs from the code"


def test_missing_config_path_means_built_in_defaults() -> None:
    assert load_config(None) == Config()


def test_every_problem_is_reported_at_once_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "[policy]\nsimilar_threshold = 1.5\nkepp = 'best'\n"
        "[watch]\nsettle_seconds = 'soon'\n"
        "[modle]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    assert f"{path}: [policy] similar_threshold: must be between 0 and 1, got 1.5" in problems
    assert any("[policy] kepp: unknown key (did you mean 'keep'?)" in p for p in problems)
    assert any("[watch] settle_seconds:" in p and "duration" in p for p in problems)
    assert any("[modle]: unknown section (did you mean 'model'?)" in p for p in problems)
    assert len(problems) == 4


def test_wrong_types_and_choices_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "[model]\nthreads = '2'\nbackend = 'cuda'\n[watch]\nforce_polling = 1\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert "[model] threads: must be a whole number" in text
    assert '[model] backend: must be one of "auto"' in text
    assert "[watch] force_polling: must be true or false" in text


def test_worker_count_is_automatic_by_default_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[model]\nworkers = 2\n", encoding="utf-8")
    assert load_config(path).model.workers == 2
    path.write_text("[model]\nworkers = -1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[model\] workers: must be between 0"):
        load_config(path)
    path.write_text("", encoding="utf-8")
    assert load_config(path).model.workers == 0  # one per core, at most two


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[watch\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")
    assert ConfigError(["x"]).exit_code == 78


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("6h", 21600.0), ("2d", 172800.0)],
)
def test_durations_accept_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_durations_from_toml_strings_and_numbers(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[watch]\nrescan_interval = '2h'\npoll_interval = 120\n", encoding="utf-8")
    config = load_config(path)
    assert config.watch.rescan_interval == 7200.0
    assert config.watch.poll_interval == 120.0


def test_roots_must_exist_and_not_nest(tmp_path: Path) -> None:
    outer = tmp_path / "photos"
    inner = outer / "2024"
    inner.mkdir(parents=True)
    assert check_roots([outer]) == []
    problems = check_roots([outer, inner, tmp_path / "missing"])
    assert any("missing is not an existing directory" in p for p in problems)
    assert any("lies inside" in p for p in problems)


def test_command_line_roots_are_added_once(tmp_path: Path) -> None:
    config = Config().with_roots([tmp_path, tmp_path])
    assert config.watch.roots == (tmp_path,)
