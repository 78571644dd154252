"""The cerebellum as the base LLM's draft model: drafting never changes the answer (the base
decides every token) and reports how many drafted tokens were accepted; broken versions,
foreign tokenizers and the reserved name are refused; old versions are pruned."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from npllm.adapters import CEREBELLUM, AdapterShape, check_name
from npllm.cerebellum import Cerebellum, load_model
from npllm.config import Settings
from npllm.errors import AdapterError, ConflictError, ModelError, RequestError
from npllm.generation import GenerationParams
from npllm.versions import BaseIdentity, Registry, Version

from ..conftest import LiveDaemon, lora_artifact, make_settings, save_tiny_llama

QUESTION = [{"role": "user", "content": "Write a Python function that adds two numbers."}]


def _cerebellum_version(llm: Any, path: Path, noise: float) -> Version:
    """A LoRA on a fresh copy of the base whose B matrices carry `noise` (0 = identity)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_pretrained(llm.meta["directory"], dtype=torch.float32)
    shape = AdapterShape.from_config(Settings().training)
    config = LoraConfig(
        r=shape.r, lora_alpha=shape.alpha, target_modules=list(shape.target_modules)
    )
    model = get_peft_model(fresh, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, noise) if noise else param.fill_(float("nan"))
    model.save_pretrained(str(path))
    return Version(CEREBELLUM, 1, path, "active")


def _drafting(settings: Settings) -> Settings:
    """The settings with cerebellum.role = draft (off by default)."""
    return settings.model_copy(
        update={"cerebellum": settings.cerebellum.model_copy(update={"role": "draft"})}
    )


def _torch(settings: Settings, base_llm: Any) -> Any:
    from npllm.engines.transformers import TransformersEngine

    return TransformersEngine(settings, base_llm)


def test_drafting_never_changes_the_answer_and_reports_acceptance(
    base_llm: Any, settings: Settings, tmp_path: Path
) -> None:
    """Under the transformers engine (assisted generation); tests/test_engines.py has the
    same under llama.cpp (speculative decoding)."""
    settings = _drafting(settings)
    cerebellum = Cerebellum(settings, base_llm, _torch(settings, base_llm))
    assert cerebellum.draft is None  # nothing trained yet: no drafting
    draft = cerebellum.build(_cerebellum_version(base_llm, tmp_path / "v1", noise=0.1))
    assert cerebellum.activate(draft) is None
    ids = base_llm.encode_chat(QUESTION)
    params = GenerationParams(max_new_tokens=32)
    plain = base_llm.generate_ids(ids, params)
    assert cerebellum.draft is not None
    drafted = base_llm.generate_ids(ids, params, assistant=cerebellum.draft.handle, draft_tokens=4)
    assert drafted.text == plain.text and plain.draft is None
    report = drafted.draft
    assert report is not None
    print(f"\ndraft report: {report}")
    assert report["proposed"] > 0 and 0 <= report["accepted"] <= report["proposed"]
    assert report["acceptance_rate"] == round(report["accepted"] / report["proposed"], 4)
    # The perturbed draft disagrees somewhere, yet the base's answer is unchanged.
    assert 0 < report["accepted"] < report["proposed"]
    off_config = settings.cerebellum.model_copy(update={"role": "off"})
    off_settings = settings.model_copy(update={"cerebellum": off_config})
    off = Cerebellum(off_settings, base_llm, _torch(off_settings, base_llm))
    off.activate(draft)
    assert off.draft is None and off.status()["drafting"] is False


def test_a_cerebellum_version_with_broken_weights_is_refused(
    base_llm: Any, settings: Settings, tmp_path: Path
) -> None:
    version = _cerebellum_version(base_llm, tmp_path / "nan", noise=0.0)
    with pytest.raises(AdapterError, match="cerebellum v1 produces NaN/inf logits"):
        Cerebellum(settings, base_llm, _torch(settings, base_llm)).build(version)
    missing = Version(CEREBELLUM, 2, tmp_path / "nowhere", "active")
    with pytest.raises(AdapterError, match="cannot load cerebellum v2 from"):
        Cerebellum(settings, base_llm, _torch(settings, base_llm)).build(missing)


def test_a_cerebellum_model_must_exist_and_share_the_base_tokenizer(
    base_llm: Any, data_dir: Path, tmp_path: Path
) -> None:
    missing = make_settings(data_dir, NPLLM_CEREBELLUM__MODEL=str(tmp_path / "absent"))
    with pytest.raises(ModelError, match="cerebellum.model"):
        load_model(missing, base_llm)
    other = save_tiny_llama(tmp_path / "other-tokenizer", extra_tokens=("<npllm-extra>",))
    foreign = make_settings(data_dir, NPLLM_CEREBELLUM__MODEL=str(other))
    with pytest.raises(ModelError, match="has another tokenizer than the base LLM"):
        load_model(foreign, base_llm)
    assert load_model(make_settings(data_dir), base_llm) is base_llm


def test_the_name_cerebellum_is_reserved_for_it() -> None:
    with pytest.raises(RequestError, match="'cerebellum' is reserved for the cerebellum"):
        check_name("cerebellum")
    assert check_name("cerebellum", CEREBELLUM) == "cerebellum"


def test_publishing_a_cerebellum_is_refused_when_it_is_off() -> None:
    import asyncio

    from services.api import Service

    unused: Any = None
    off: Any = SimpleNamespace(cerebellum=None)
    service = Service(unused, unused, off, unused, unused, unused, unused, unused)
    with pytest.raises(ConflictError, match=r'the cerebellum is off \(cerebellum.role = "off"\)'):
        asyncio.run(service.add_cerebellum("/no/such/cerebellum", "", {}, None))
    with pytest.raises(ConflictError, match=r'the cerebellum is off \(cerebellum.role = "off"\)'):
        service.cerebellum_status()


def test_cerebellum_and_adapters_keep_separate_versions_and_old_ones_are_pruned(
    fresh_database: Any, tmp_path: Path
) -> None:
    pool = fresh_database.pool
    shape = AdapterShape.from_config(Settings().training)
    base = BaseIdentity("tiny", "f" * 32)
    adapters = Registry(pool, tmp_path / "adapters", shape, base, keep=2)
    brain = Registry(pool, tmp_path / "adapters", shape, base, kind=CEREBELLUM, keep=2)
    artifact = lora_artifact(tmp_path / "art")
    adapters.activate(adapters.add_version("coding", artifact))
    versions = []
    for _ in range(5):
        v = brain.add_version(CEREBELLUM, artifact)
        brain.activate(v)
        versions.append(v)
    assert [v.adapter for v, _ in adapters.active()] == ["coding"]
    assert [v.adapter for v, _ in brain.active()] == [CEREBELLUM]
    assert [a["name"] for a in adapters.listing()] == ["coding"]
    kept = {v["version"]: v["status"] for v in brain.listing()[0]["versions"]}
    # Beyond keep_versions: the row stays (history), the files go.
    assert kept == {1: "pruned", 2: "pruned", 3: "retired", 4: "retired", 5: "active"}
    assert not versions[0].path.exists() and not versions[1].path.exists()
    assert versions[2].path.exists() and brain.previous(CEREBELLUM).version == 4
    with pytest.raises(RequestError, match="reserved for the cerebellum"):
        adapters.add_version(CEREBELLUM, artifact)


def test_the_daemon_reports_its_cerebellum(daemon: LiveDaemon) -> None:
    """Off by default (cerebellum.role); the name stays reserved and publishing says how to
    turn it on."""
    with daemon.http() as http:
        assert http.get("/v1/status").json()["cerebellum"] == {"role": "off"}
        off = http.get("/v1/cerebellum")
        assert off.status_code == 409 and 'set it to "draft"' in off.json()["error"]["message"]
        r = http.post("/v1/cerebellum/versions", json={"path": "/tmp/x"})
        assert r.status_code == 409 and "the cerebellum is off" in r.json()["error"]["message"]
        r = http.post("/v1/adapters/cerebellum/versions", json={"path": "/tmp/x"})
        assert r.status_code == 400
        assert "reserved for the cerebellum" in r.json()["error"]["message"]
        answer = http.post(
            "/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 4}
        ).json()
        assert answer["npllm"]["cerebellum"] is None  # no drafting
