"""The one atomic writer (npllm/artifacts.py): whole or not at all, never through a link."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from npllm.artifacts import write_atomically, write_file_atomically


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_file_is_written_whole_with_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "plan.json"
    write_file_atomically(target, '{"a": 1}')
    assert target.read_text() == '{"a": 1}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_file_atomically(target, b"secret\n" * 100_000, mode=0o600)
    assert target.read_bytes() == b"secret\n" * 100_000
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_file_atomically(target, lambda path: path.write_text("exported"))
    assert target.read_text() == "exported" and _leftovers(target.parent) == []


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_text("old")

    def broken(path: Path) -> None:
        path.write_text("half")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        write_file_atomically(target, broken)
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


def test_a_link_at_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    target = tmp_path / "api-key"
    target.symlink_to(victim)
    write_file_atomically(target, "key\n", mode=0o600)
    assert victim.read_text() == "untouched"
    assert not target.is_symlink() and target.read_text() == "key\n"


def test_a_directory_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "v1"

    def fill(directory: Path) -> None:
        (directory / "nested").mkdir()
        (directory / "nested" / "weights.bin").write_bytes(b"w")
        (directory / "config.json").write_text("{}")

    write_atomically(target, fill)
    assert (target / "nested" / "weights.bin").read_bytes() == b"w"

    def broken(directory: Path) -> None:
        (directory / "config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(tmp_path / "v2", broken)
    assert not (tmp_path / "v2").exists() and _leftovers(tmp_path) == []
