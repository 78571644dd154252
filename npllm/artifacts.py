"""Artifacts on disk, written whole or not at all: the one atomic writer.

Every kind of version (an adapter, the cerebellum's LoRA, a modulator) is a directory
``<root>/<name>/v<N>/`` of files; caches (the dequantised base, the tokenizer, the ONNX
embedder), GGUF LoRAs, checkpoints, the night's plan, the API key and PostgreSQL's
settings are single files or directories too. All of them are written here: through a
temp file or directory beside the target (created O_EXCL, 0600), every file fsynced, then
renamed into place and the parent directory fsynced, so a crash never leaves a
half-written file for anyone to trust.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

# Files a LoRA version may carry besides the adapter: the MAS importance Ω accumulated over
# its cycles, and the retention probe (examples of earlier cycles), written by the sleep
# cycle; peft's answer to the parity probe, written by the trainer
# (npllm/engines/gguf_export.py).
EXTRAS = ("mas_omega.safetensors", "probe.jsonl", "reference.json", "scope.safetensors")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """Create directory `target` whole or not at all: `write` fills a temp dir beside it,
    every file in it is fsynced, the dir renamed into place, and the parent fsynced. An
    existing non-empty `target` makes the rename fail (OSError): another process finished
    first, or the caller removes the old one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(temp)
        for path in temp.rglob("*"):
            if path.is_file() and not path.is_symlink():
                _fsync(path)
        os.replace(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    _fsync(target.parent)


def write_file_atomically(
    target: Path,
    content: bytes | str | Callable[[Path], object],
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
) -> None:
    """Create or replace file `target` whole or not at all. `content` is written into a
    temp file beside it (bytes and text through the descriptor it was created with, O_EXCL
    and O_NOFOLLOW at 0600, so nothing anyone placed there is written through and nobody
    reads it half-written; a callable writes to the temp path itself: an exporter), which
    is fsynced, given `mode` (and `owner`, uid and gid), renamed over `target`, and the
    parent fsynced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    temp = Path(name)
    try:
        try:
            if not callable(content):
                data = memoryview(content.encode() if isinstance(content, str) else content)
                while data:
                    data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
        if callable(content):
            content(temp)
        _fsync(temp)
        os.chmod(temp, mode)
        if owner is not None:
            os.chown(temp, *owner)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync(target.parent)


def copy_files(
    source: Path, target: Path, required: Iterable[str], optional: Iterable[str]
) -> None:
    """Copy a version's files into place (never half-written); `optional` ones may be absent."""

    def copy(temp: Path) -> None:
        for name in required:
            shutil.copyfile(source / name, temp / name)
        for name in optional:
            if (source / name).exists():
                shutil.copyfile(source / name, temp / name)

    write_atomically(target, copy)
