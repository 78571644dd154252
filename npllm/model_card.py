"""What a model listing says about the served base LLM: its file's size, digest and time,
its architecture, parameter count and quantisation (Ollama's /api/tags shows these)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from npllm.weights import ModelSource


@dataclass(frozen=True)
class ModelCard:
    size: int  # bytes on disk
    digest: str  # sha256 of the file (of the weight files, for a directory)
    modified_at: datetime
    format: str  # "gguf" or "safetensors"
    family: str  # the architecture, e.g. "llama"
    parameter_size: str  # e.g. "135M"
    quantization_level: str  # e.g. "Q4_1"; "F32"/"BF16"... for unquantised weights
    parameter_count: int  # 0 when unknown


def model_card(source: ModelSource) -> ModelCard:
    """Read the card of `source` (a GGUF's header is read, not its weights; hashing the
    file takes a fraction of a second per 100 MB, so callers keep the card)."""
    files = [source.path] if source.path.is_file() else _weight_files(source.path)
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    stats = [path.stat() for path in files]
    card = ModelCard(
        size=sum(s.st_size for s in stats),
        digest=digest.hexdigest(),
        modified_at=datetime.fromtimestamp(max((s.st_mtime for s in stats), default=0), UTC),
        format="safetensors",
        family="unknown",
        parameter_size="unknown",
        quantization_level="unknown",
        parameter_count=0,
    )
    return _with_gguf_header(card, source.path) if source.kind == "gguf" else card


def _weight_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix in (".safetensors", ".bin"))


def _with_gguf_header(card: ModelCard, path: Path) -> ModelCard:
    from gguf import GGUFReader, LlamaFileType

    from npllm.engines.gguf_export import gguf_field

    reader = GGUFReader(str(path))
    count = sum(int(t.n_elements) for t in reader.tensors)
    file_type = gguf_field(reader, "general.file_type")
    try:
        quantization = LlamaFileType(int(file_type or -1)).name.removeprefix("MOSTLY_")
    except ValueError:
        quantization = "unknown"
    size_label = gguf_field(reader, "general.size_label")
    return replace(
        card,
        format="gguf",
        family=str(gguf_field(reader, "general.architecture") or "unknown"),
        parameter_size=str(size_label) if size_label else _size_label(count),
        quantization_level=quantization,
        parameter_count=count,
    )


def _size_label(count: int) -> str:
    """135_000_000 → "135.0M", as Ollama writes sizes."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)
