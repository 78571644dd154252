"""npllm/adapters.py: names and the one shape every adapter shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from npllm.adapters import AdapterShape, check_artifact, check_name
from npllm.errors import AdapterError, RequestError

from ..conftest import lora_artifact

SHAPE = AdapterShape(16, 32, ("k_proj", "o_proj", "q_proj", "v_proj"))


@pytest.mark.parametrize("name", ["", "..", "../x", "a/b", "Zorb", "-a", "a.b", "x" * 64, "ã"])
def test_bad_adapter_names_are_refused(name: str) -> None:
    with pytest.raises(RequestError, match="invalid adapter name"):
        check_name(name)


def test_an_adapter_of_the_shared_shape_is_accepted(tmp_path: Path) -> None:
    config = check_artifact(lora_artifact(tmp_path / "ok"), SHAPE)
    assert config["r"] == 16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 8}, "rank r is 8, not 16 (training.lora_r)"),
        ({"alpha": 16}, "lora_alpha is 16, not 32"),
        ({"target_modules": ["q_proj", "v_proj"]}, "target_modules are ['q_proj', 'v_proj']"),
        ({"use_dora": True}, "it uses DoRA"),
        ({"dtype": torch.float16}, "is F16, not F32"),
    ],
)
def test_a_wrongly_shaped_adapter_is_refused(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(AdapterError, match="does not fit this server") as caught:
        check_artifact(lora_artifact(tmp_path / "bad", **kwargs), SHAPE)
    assert message in str(caught.value)


def test_a_directory_without_an_adapter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="is not a peft adapter directory"):
        check_artifact(tmp_path, SHAPE)
