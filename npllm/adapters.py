"""LoRA adapters: their names and the one shape they all share.

Every adapter is a peft LoRA on the frozen base with the same target modules, rank and
alpha (training.* in config), no DoRA, fp32 — so any of them can be loaded beside the
others and routed per request. Their versions live in the version store
(npllm/versions.py); each engine serves them (npllm/engines/: llama.cpp as GGUF LoRAs,
transformers through peft).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from npllm.artifacts import EXTRAS
from npllm.config import TrainingConfig
from npllm.errors import AdapterError, RequestError

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

CEREBELLUM = "cerebellum"  # the store's name of the cerebellum; no adapter may take it
MODULATOR = "modulator"  # the store's name of the modulator; no adapter may take it
RESERVED = {CEREBELLUM: "the cerebellum (the draft model)", MODULATOR: "the modulator"}


def check_name(name: str, what: str = "adapter") -> str:
    """Refuse names that are not `[a-z0-9][a-z0-9_-]{0,62}` (no paths, no dots)."""
    if not NAME.fullmatch(name):
        raise RequestError(
            f"invalid {what} name {name!r}: use 1-63 characters from a-z, 0-9, '_' and '-', "
            "starting with a letter or digit",
            param="name",
        )
    if what == "adapter" and name in RESERVED:
        raise RequestError(
            f"the name {name!r} is reserved for {RESERVED[name]}; pick another adapter name",
            param="name",
        )
    return name


@dataclass(frozen=True)
class AdapterShape:
    """What every adapter must share to be served together."""

    r: int
    alpha: int
    target_modules: tuple[str, ...]
    files: ClassVar[tuple[str, ...]] = ("adapter_config.json", "adapter_model.safetensors")
    optional: ClassVar[tuple[str, ...]] = EXTRAS

    @classmethod
    def from_config(cls, config: TrainingConfig) -> AdapterShape:
        return cls(config.lora_r, config.lora_alpha, tuple(sorted(config.lora_target_modules)))

    def to_dict(self) -> dict[str, object]:
        return {"r": self.r, "alpha": self.alpha, "target_modules": list(self.target_modules)}

    def check(self, path: Path) -> None:
        """Refuse a directory that is not a LoRA adapter of this shape (see check_artifact)."""
        check_artifact(path, self)


def check_artifact(path: Path, shape: AdapterShape) -> dict[str, Any]:
    """Refuse a directory that is not a LoRA adapter of the shared shape; return its config."""
    config_file, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not path.is_dir() or not config_file.is_file() or not weights.is_file():
        raise AdapterError(
            f"{path} is not a peft adapter directory (it needs adapter_config.json and "
            "adapter_model.safetensors, as written by save_pretrained)"
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{config_file} is not readable JSON: {exc}") from exc
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, not 'LORA'")
    if config.get("r") != shape.r:
        problems.append(f"rank r is {config.get('r')}, not {shape.r} (training.lora_r)")
    if config.get("lora_alpha") != shape.alpha:
        problems.append(
            f"lora_alpha is {config.get('lora_alpha')}, not {shape.alpha} (training.lora_alpha)"
        )
    targets = config.get("target_modules") or []
    if sorted(targets if isinstance(targets, list) else [targets]) != list(shape.target_modules):
        problems.append(
            f"target_modules are {sorted(targets)}, not {list(shape.target_modules)} "
            "(training.lora_target_modules)"
        )
    if config.get("use_dora"):
        problems.append("it uses DoRA, which cannot be routed per request")
    if config.get("modules_to_save"):
        problems.append("it saves whole modules (modules_to_save), not only LoRA weights")
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as tensors:
        for key in tensors.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
            dtype = tensors.get_slice(key).get_dtype()
            if dtype != "F32":
                problems.append(f"tensor {key} is {dtype}, not F32")
                break
    if problems:
        raise AdapterError(
            f"adapter at {path} does not fit this server: " + "; ".join(problems) + ". All "
            "adapters share one shape so that they can be served side by side."
        )
    return dict(config)
