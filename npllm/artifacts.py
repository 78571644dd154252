"""Artifacts on disk: a version's directory, written whole or not at all.

Every kind of version (an adapter, the cerebellum's LoRA, a modulator) is a directory
``<root>/<name>/v<N>/`` of files. They are written through a temp directory beside the
target, every file fsynced, then renamed into place, so a crash never leaves a
half-written version for the store to point at.
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


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Create directory `target` whole or not at all: `write` fills a temp dir beside it,
    every file is fsynced, the dir renamed into place, and the parent fsynced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(temp)
        for path in temp.iterdir():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
        os.replace(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
