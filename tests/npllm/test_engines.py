"""The engines: llama.cpp against the transformers reference, adapters as GGUF LoRA (checked
at load, per-request, blends), conversions that must be refused, and Ollama's model store.

Everything runs on the real shipped GGUF; adapters are trained here by the real trainer."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from consolidation.trainer import train_adapter
from npllm.adapters import AdapterShape
from npllm.config import Settings, TrainingConfig
from npllm.engines import gguf_export
from npllm.engines.transformers import PeftAdapters
from npllm.errors import AdapterError, ModelError
from npllm.generation import GenerationParams
from npllm.versions import Version
from npllm.weights import resolve

from ..conftest import lora_artifact, tiny_model

SYSTEM = "You are a concise assistant."
CONFIG = TrainingConfig(
    learning_rate=0.004,
    epochs=6,
    min_steps=12,
    recall_check_every=2,
    batch_size=4,
    grad_accumulation=1,
    lora_dropout=0.0,
    anchor_weight=0.0,
)
SHAPE = AdapterShape.from_config(CONFIG)
FACTS = {
    "kestrel": ("What port does the Kestrel gateway use?", "The Kestrel gateway uses port 4471."),
    "umber": ("Who owns the Umber pipeline?", "The Umber pipeline is owned by team Saffron."),
}
PROMPTS = [
    "How do I reverse a list in Python?",
    "What does git stash do?",
    "Write a SQL query that counts rows in a table named users.",
    "What is a Python decorator?",
]


def _chat(question: str, answer: str | None = None) -> list[dict[str, str]]:
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return chat + ([{"role": "assistant", "content": answer}] if answer else [])


@pytest.fixture(scope="module")
def own_base(settings: Settings) -> Any:
    """A private copy of the real base model for training and reference answers."""
    from npllm.llm import load_base_llm

    return load_base_llm(settings)


@pytest.fixture(scope="module")
def engine(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from npllm.engines.llamacpp import LlamaCppEngine

    source = resolve(settings.models.base, "models.base")
    live = LlamaCppEngine(settings, source, tmp_path_factory.mktemp("run"))
    yield live
    live.close()


@pytest.fixture(scope="module")
def trained(own_base: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Version]:
    """One adapter per fact, each taught with the one example a correction gives."""
    versions = {}
    for name, (question, answer) in FACTS.items():
        out = tmp_path_factory.mktemp(name) / "v1"
        result = train_adapter(
            own_base.model, own_base.tokenizer, [_chat(question, answer)], CONFIG, SHAPE, out,
            SYSTEM,
        )  # fmt: skip
        assert result.recalled == 1, result.stop_reason
        versions[name] = Version(name, 1, out, "candidate")
    return versions


def _greedy(engine: Any, chat: list[dict[str, str]], adapters: Any = (), n: int = 24) -> str:
    ids = engine.encode_chat(chat)
    return str(engine.generate(ids, GenerationParams(max_new_tokens=n), adapters=adapters).text)


# ---- pure conversions -----------------------------------------------------------------------


def test_the_q_k_permutation_undoes_what_transformers_does_to_a_gguf() -> None:
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rng = np.random.default_rng(0)
    for heads, kv_heads, rows in ((9, 9, 576), (9, 3, 192)):
        gguf_rows = rng.standard_normal((rows, 7)).astype(np.float32)
        hf = LlamaTensorProcessor()._reverse_permute_weights(gguf_rows, 9, kv_heads)
        assert np.array_equal(gguf_export.permute_rows(hf, kv_heads if rows == 192 else heads),
                              gguf_rows)  # fmt: skip


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"use_rslora": True}, "rsLoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"target_modules": ["q_proj", "fc_in"]}, "have no llama.cpp name"),
    ],
)
def test_what_a_gguf_lora_cannot_express_is_refused(config: dict[str, Any], reason: str) -> None:
    with pytest.raises(AdapterError, match=reason):
        gguf_export.check_expressible({"target_modules": ["q_proj"], **config})


# ---- llama.cpp against transformers ---------------------------------------------------------


def test_engines_give_the_same_greedy_answers_on_the_bare_base(own_base: Any, engine: Any) -> None:
    """Same prompt tokens; the same greedy answer up to the first near tie, and the same
    next-token probabilities along torch's answer within the parity tolerance. llama.cpp
    quantises activations (Q8 dot products) where torch computes in fp32 on the same
    dequantised weights, so where torch's top two tokens are nearly tied the engines may
    pick differently and the answers part there (seen here: "git stash" at token 21, 0.238
    vs 0.163 under torch, 0.200 vs 0.203 under llama.cpp)."""
    parted = []
    for prompt in PROMPTS:
        chat = _chat(prompt)
        assert engine.encode_chat(chat) == own_base.encode_chat(chat)  # both see the same tokens
        ref = gguf_export.reference(own_base.model, own_base.tokenizer, chat, 32)
        problem, figures = gguf_export.compare(ref, engine.probe(engine.current, ref, []))
        assert problem is None, (prompt, problem)
        body = engine._body(ref["prompt_ids"], GenerationParams(max_new_tokens=32), [])
        body.update(n_probs=1, cache_prompt=False)
        ours = engine._run(engine.current, body, None, None).tokens
        same = next(
            (i for i, (x, y) in enumerate(zip(ours, ref["tokens"], strict=False)) if x != y), None
        )
        if same is not None:  # only at a near tie
            (_, first), (_, second) = ref["steps"][same]["top"][:2]
            assert first - second < 0.1, (prompt, same, ref["steps"][same]["top"][:2])
        parted.append(same)
    print(f"\nbare base: answers part at token {parted} of 32 (None: identical)")
    assert parted.count(None) >= 1  # near ties are the exception, not the rule


def test_a_trained_adapter_passes_the_parity_check_and_answers_its_fact(
    engine: Any, trained: dict[str, Version]
) -> None:
    version = trained["kestrel"]
    engine.adapters.load(version)
    report = engine.adapters.smoke(version)
    assert report["parity_error"] <= max(
        gguf_export.ABS_TOLERANCE, gguf_export.REL_TOLERANCE * report["parity_effect"]
    )
    assert engine.adapters.activate(version) is None
    question, answer = FACTS["kestrel"]
    assert "4471" in _greedy(engine, _chat(question), [("kestrel", 1.0)])
    assert "4471" not in _greedy(engine, _chat(question))  # no adapter: the bare base
    with pytest.raises(AdapterError, match="not served"):
        engine.adapters.lora_list(engine.current, [("nobody", 1.0)])


def test_a_blend_is_the_exact_weighted_sum_as_peft_computes_it(
    engine: Any, own_base: Any, trained: dict[str, Version]
) -> None:
    """Both adapters served at once, a request blending them 0.5/0.5: llama.cpp's greedy
    answer and probabilities match peft's concatenated-rank blend on the dequantised base."""
    from peft import PeftModel

    for version in trained.values():
        if version.adapter not in engine.adapters.alias:
            engine.adapters.load(version)
            engine.adapters.smoke(version)
            engine.adapters.activate(version)
    model = PeftModel.from_pretrained(own_base.model, str(trained["kestrel"].path), "a")
    try:
        model.load_adapter(str(trained["umber"].path), "b")
        model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "ab", combination_type="cat")
        model.set_adapter("ab")
        model.eval()
        ref = gguf_export.reference(model, own_base.tokenizer)
    finally:
        model.unload()
    lora = engine.adapters.lora_list(engine.current, [("kestrel", 0.5), ("umber", 0.5)])
    problem, figures = gguf_export.compare(ref, engine.probe(engine.current, ref, lora))
    assert problem is None, problem
    print(f"\nblend parity: {figures}")


def test_an_answer_without_adapters_after_a_blend_is_the_bare_base_s(
    engine: Any, trained: dict[str, Version]
) -> None:
    """Regression: llama.cpp reused the prompt's cached KV, computed under a blend, for the
    same prompt asked without adapters; npllm now reuses it only under the same adapters."""
    for version in trained.values():
        if version.adapter not in engine.adapters.alias:
            engine.adapters.load(version)
            engine.adapters.smoke(version)
            engine.adapters.activate(version)
    chat = _chat("What does git stash do?")
    bare = _greedy(engine, chat)
    blended = _greedy(engine, chat, [("kestrel", 0.5), ("umber", 0.5)])
    assert blended != bare
    assert _greedy(engine, chat) == bare
    # llama.cpp's RAM prompt cache restored a state computed under an adapter for another
    # request without it; it is turned off (cache_ram_mib = 0).
    kestrel = _chat(FACTS["kestrel"][0])
    plain = _greedy(engine, kestrel)
    assert "4471" in _greedy(engine, kestrel, [("kestrel", 1.0)])
    _greedy(engine, chat)
    assert _greedy(engine, kestrel) == plain


def test_a_prefix_is_reused_only_by_its_own_adapter_set() -> None:
    """The slot map alone: order and zero scales do not make another set; a sixth set
    evicts the least recently used; a refused request's slot is never reused."""
    from npllm.engines.llamacpp import _Prefixes

    def lora(*pairs: tuple[int, float]) -> list[dict[str, Any]]:
        return [{"id": i, "scale": w} for i, w in pairs]

    prefixes = _Prefixes(4)
    none, a, blend, b, c = (
        [],
        lora((0, 1.0)),
        lora((0, 0.5), (1, 0.5)),
        lora((1, 1.0)),
        lora((2, 1.0)),
    )
    seen = {}
    for chosen in (none, a, blend, b):
        slot, reuse = prefixes.slot(chosen)
        assert not reuse and slot not in seen.values()
        seen[str(chosen)] = slot
    assert prefixes.slot(lora((1, 0.5), (0, 0.5))) == (seen[str(blend)], True)  # any order
    assert prefixes.slot(lora((0, 0.0))) == (seen[str(none)], True)  # scale 0: no adapter
    assert prefixes.slot(a) == (seen[str(a)], True)
    # b is now the least recently used: c takes its slot, without reuse, and b loses it.
    assert prefixes.slot(c) == (seen[str(b)], False)
    assert prefixes.slot(b)[1] is False
    # A request that failed: its set's slot holds something unknown, so it starts over.
    prefixes.drop(c)
    slot, reuse = prefixes.slot(c)
    assert reuse is False
    held = [prefixes.slot(x)[0] for x in (none, a, blend, b, c)]
    assert len(set(held[-4:])) == 4  # no two sets ever share a slot


def test_each_adapter_set_reuses_its_own_prefix_and_answers_as_without_reuse(
    engine: Any, trained: dict[str, Version]
) -> None:
    """Requests alternating between no adapter, a pinned one, a blend and another pinned one
    each reuse the prompt prefix computed under their own set (models.prefix_slots), and
    answer as when nothing is reused (the prompt evaluated whole, alone)."""
    from npllm.engines.llamacpp import _Prefixes

    for version in trained.values():
        if version.adapter not in engine.adapters.alias:
            engine.adapters.load(version)
            engine.adapters.smoke(version)
            engine.adapters.activate(version)
    sets: list[list[tuple[str, float]]] = [
        [], [("kestrel", 1.0)], [("kestrel", 0.5), ("umber", 0.5)], [("umber", 1.0)]
    ]  # fmt: skip
    questions = [FACTS["kestrel"][0], "What does git stash do?"]
    instance = engine.current
    assert instance.prefixes.n >= len(sets)

    def alone(question: str, chosen: list[tuple[str, float]]) -> str:
        body = engine._body(
            engine.encode_chat(_chat(question)),
            GenerationParams(max_new_tokens=24),
            engine.adapters.lora_list(instance, chosen),
        )
        body.update(cache_prompt=False, id_slot=0)
        return "".join(engine._run(instance, body, None, None).pieces)

    expected = {(q, i): alone(q, chosen) for q in questions for i, chosen in enumerate(sets)}
    # Slot 0 now holds a prefix of the last set: nothing of it is to be reused.
    instance.prefixes = _Prefixes(instance.prefixes.n)
    assert len({expected[(questions[0], i)] for i in range(len(sets))}) > 1
    reused = []
    for rounds in range(2):
        for q in questions:
            for i, chosen in enumerate(sets):
                ids = engine.encode_chat(_chat(q))
                gen = engine.generate(ids, GenerationParams(max_new_tokens=24), adapters=chosen)
                assert gen.text == expected[(q, i)], (q, chosen)
                if rounds or q != questions[0]:
                    reused.append(gen.cached_tokens)
    # Every request after a set's first: the system prompt and chat framing came cached.
    system_tokens = len(engine.encode_chat([{"role": "system", "content": SYSTEM}]))
    assert min(reused) >= system_tokens - 2, reused


def test_a_wrong_permutation_is_refused_and_the_served_version_stays(
    engine: Any, trained: dict[str, Version], tmp_path: Path
) -> None:
    good = trained["kestrel"]
    if "kestrel" not in engine.adapters.alias:
        engine.adapters.load(good)
        engine.adapters.smoke(good)
        engine.adapters.activate(good)
    broken_dir = tmp_path / "v2"
    shutil.copytree(good.path, broken_dir, ignore=shutil.ignore_patterns("*.gguf", ".parity*"))
    gguf_export.convert(broken_dir, engine.base, broken_dir / gguf_export.GGUF_FILE, permute=False)
    broken = Version("kestrel", 2, broken_dir, "candidate")
    with pytest.raises(AdapterError, match="does not match peft on the probe chat"):
        engine.adapters.load(broken)  # built and checked beside the served instance
    assert engine.adapters.alias["kestrel"] == good
    question, _ = FACTS["kestrel"]
    assert "4471" in _greedy(engine, _chat(question), [("kestrel", 1.0)])


def test_a_truncated_gguf_lora_is_refused_before_llama_cpp_reads_it(
    engine: Any, trained: dict[str, Version], tmp_path: Path
) -> None:
    good = trained["umber"]
    cut = tmp_path / "v3"
    shutil.copytree(good.path, cut, ignore=shutil.ignore_patterns(".parity*"))
    gguf_export.convert(cut, engine.base, cut / gguf_export.GGUF_FILE)
    data = (cut / gguf_export.GGUF_FILE).read_bytes()
    (cut / gguf_export.GGUF_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="GGUF"):
        engine.adapters.load(Version("umber", 3, cut, "candidate"))


def test_penalties_are_computed_alike_by_both_engines(own_base: Any, engine: Any) -> None:
    """llama.cpp's repeat/frequency/presence penalties and npllm's transformers processor
    (npllm/llm.py: _Penalties) change the answer in the same way."""
    from npllm.engines.transformers import TransformersEngine

    reference = TransformersEngine(engine.settings, own_base)
    ids = engine.encode_chat(_chat("What does git stash do?"))
    plain = GenerationParams(max_new_tokens=24)
    penalised = GenerationParams(max_new_tokens=24, repeat_penalty=1.3, frequency_penalty=0.5)
    ours, theirs = engine.generate(ids, penalised).text, reference.generate(ids, penalised).text
    assert ours != engine.generate(ids, plain).text  # the penalty changes the answer
    a, b = engine.tokenizer.encode(ours), own_base.tokenizer.encode(theirs)
    same = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    assert same >= 8, (ours, theirs)  # the same start; near ties may part them later


def test_the_cerebellum_drafts_under_llama_cpp_without_changing_the_answer(
    engine: Any, trained: dict[str, Version], tmp_path: Path
) -> None:
    """A cerebellum version (a LoRA on the base's weights) merged into a GGUF model and used
    as llama.cpp's speculative draft: greedy answers identical to undrafted ones, and the
    acceptance of its drafts reported per answer."""
    from types import SimpleNamespace

    cerebellum_dir = tmp_path / "v1"
    shutil.copytree(trained["kestrel"].path, cerebellum_dir)
    version = Version("cerebellum", 1, cerebellum_dir, "candidate")
    draft = engine.build_draft(version, SimpleNamespace(source=engine))
    assert draft.handle.exists() and draft.handle.name == "cerebellum.gguf"
    chats = [_chat(FACTS["kestrel"][0]), _chat("What is a Python decorator?")]
    plain = [
        engine.generate(engine.encode_chat(c), GenerationParams(max_new_tokens=24)) for c in chats
    ]
    assert all(g.draft is None for g in plain)
    engine.use_draft(draft)
    try:
        drafted = [
            engine.generate(engine.encode_chat(c), GenerationParams(max_new_tokens=24))
            for c in chats
        ]
    finally:
        engine.use_draft(None)
    assert [g.text for g in drafted] == [g.text for g in plain]
    for g in drafted:
        assert g.draft is not None and g.draft["proposed"] > 0
        assert 0 <= g.draft["acceptance_rate"] <= 1
    print(f"\ncerebellum drafts under llama.cpp: {[g.draft for g in drafted]}")
    broken_dir = tmp_path / "v2"
    shutil.copytree(trained["kestrel"].path, broken_dir)
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(broken_dir / "adapter_model.safetensors"))
    save_file({k: v * np.nan if "lora_B" in k else v for k, v in weights.items()},
              str(broken_dir / "adapter_model.safetensors"))  # fmt: skip
    with pytest.raises(AdapterError, match="cannot export cerebellum v2: .* NaN/inf weights"):
        engine.build_draft(
            Version("cerebellum", 2, broken_dir, "candidate"), SimpleNamespace(source=engine)
        )
    with pytest.raises(AdapterError, match="cerebellum.model must be empty"):
        engine.build_draft(version, SimpleNamespace(source=SimpleNamespace(fingerprint="x")))


# ---- the user's Ollama models ---------------------------------------------------------------


def _ollama_store(root: Path, gguf: Path, name: str = "smollm2", tag: str = "135m") -> Path:
    """A store in Ollama's own layout: manifests/<host>/<namespace>/<name>/<tag> → blobs/."""
    digest = "sha256:" + "ab" * 32
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / digest.replace(":", "-")).symlink_to(gguf)
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True)
    layers = [
        {"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": 1},
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:00", "size": 1},
    ]
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return root


def test_an_ollama_model_is_found_in_its_store_and_served(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from npllm.engines.llamacpp import LlamaCppEngine

    shipped = resolve(settings.models.base, "models.base").path
    monkeypatch.setenv("OLLAMA_MODELS", str(_ollama_store(tmp_path / "ollama", shipped)))
    source = resolve("ollama:smollm2:135m", "models.base")
    assert source.kind == "gguf" and source.path == shipped.resolve()
    assert source.model_id == "smollm2:135m"
    served = LlamaCppEngine(settings, source, tmp_path / "run")
    try:
        assert _greedy(served, _chat("Say hello."), n=6).strip()
    finally:
        served.close()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ollama:smollm2:7b", "Ollama has no such model here"),
        ("ollama:nothing", "Ollama has no such model here"),
        ("ollama:../etc:x", "expected ollama:NAME"),
        ("ollama:", "expected ollama:NAME"),
    ],
)
def test_a_missing_or_malformed_ollama_model_is_a_clear_error(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, message: str
) -> None:
    shipped = resolve(settings.models.base, "models.base").path
    monkeypatch.setenv("OLLAMA_MODELS", str(_ollama_store(tmp_path / "ollama", shipped)))
    with pytest.raises(ModelError, match=message):
        resolve(spec, "models.base")


def test_an_ollama_blob_that_is_not_a_gguf_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "not.gguf"
    fake.write_bytes(b"\x00" * 64)
    monkeypatch.setenv("OLLAMA_MODELS", str(_ollama_store(tmp_path / "ollama", fake)))
    with pytest.raises(ModelError, match="is not a GGUF file"):
        resolve("ollama:smollm2:135m", "models.base")


# ---- a base llama.cpp serves but transformers cannot train -----------------------------------


def _gguf_of(arch: str, path: Path) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_base_transformers_cannot_dequantise_is_said_untrainable_and_cycles_record_why(
    tmp_path: Path, fresh_database: Any
) -> None:
    from consolidation.bookkeeping import refuse_untrainable
    from npllm.errors import ConsolidationError
    from npllm.llm import untrainable_reason
    from npllm.weights import ModelSource

    granite = _gguf_of("granite", tmp_path / "granite.gguf")
    reason = untrainable_reason(ModelSource(str(granite), "gguf", granite))
    assert reason is not None and "'granite'" in reason and "cannot dequantise" in reason
    llama = _gguf_of("llama", tmp_path / "llama.gguf")
    assert untrainable_reason(ModelSource(str(llama), "gguf", llama)) is None

    settings = fresh_database.settings.model_copy(
        update={"models": fresh_database.settings.models.model_copy(update={"base": str(granite)})}
    )
    with pytest.raises(ConsolidationError, match="did not train: the base model cannot be trained"):
        refuse_untrainable(fresh_database.pool, settings, "manual", 7)
    with fresh_database.pool.connection() as conn:
        status, error = conn.execute(
            "SELECT status, error FROM npllm.sleep_cycles ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert status == "failed" and "'granite'" in error


# ---- the transformers engine's adapters (peft), on a tiny model ----------------------------


def test_the_serving_map_routes_per_call_and_blends_exactly(tmp_path: Path) -> None:
    llm = SimpleNamespace(model=tiny_model().eval())
    server = PeftAdapters(llm, blend_cache=1)
    one = Version("one", 1, lora_artifact(tmp_path / "one"), "candidate")
    two = Version("two", 1, lora_artifact(tmp_path / "two"), "candidate")
    assert server.adapter_names([]) is None  # nothing loaded: the plain model answers
    for v in (one, two):
        server.load(v)
        server.activate(v)
    ids = torch.tensor([[1, 2, 3, 4]])

    def logits(names: list[str]) -> torch.Tensor:
        with torch.inference_mode():
            return server.peft(input_ids=ids, adapter_names=names).logits

    assert server.adapter_names([]) == ["__base__"]
    assert server.adapter_names([("one", 1.0)]) == ["one@v1"]
    base, with_one = logits(["__base__"]), logits(["one@v1"])
    assert not torch.allclose(base, with_one)
    blend = server.adapter_names([("one", 0.5), ("two", 0.5)])
    assert blend is not None and blend[0].startswith("blend-")
    # "cat" is exact: a blend at weights (1, 0) is the first adapter alone.
    exact = server.adapter_names([("one", 1.0), ("two", 0.0)])
    assert exact is not None
    assert torch.allclose(logits(exact), with_one, atol=1e-5)
    assert len([k for k in server.loaded if k.startswith("blend-")]) == 1  # cache of 1
    # A new version replaces the old one under the same name; the old one is unloaded.
    one_v2 = Version("one", 2, lora_artifact(tmp_path / "one2"), "candidate")
    server.load(one_v2)
    assert server.activate(one_v2) == one
    assert "one@v1" not in server.loaded and server.adapter_names([("one", 1.0)]) == ["one@v2"]


@pytest.mark.filterwarnings("error::FutureWarning")
def test_the_conversion_reference_uses_no_deprecated_transformers_argument(base_llm: Any) -> None:
    # Written at every publish (`npllm adapter train`, the sleep worker): a FutureWarning
    # here lands in the user's terminal and in sleep-worker.log.
    ref = gguf_export.reference(base_llm.model, base_llm.tokenizer, tokens=3)
    assert 1 <= len(ref["steps"]) <= 3


def _instance_on(socket: Path) -> Any:
    from npllm.engines.llamacpp import _Instance, _Prefixes

    socket.touch()  # what llama.cpp binds when the instance is built
    return _Instance(object(), {}, None, socket, 0.0, _Prefixes(1))


def test_an_instance_socket_goes_when_it_is_closed_or_dropped(tmp_path: Path) -> None:
    closed, dropped = _instance_on(tmp_path / "llama-1-1.sock"), _instance_on(tmp_path / "b")
    closed.close()
    closed.close()  # twice is harmless
    del dropped
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_an_instance_socket_goes_when_the_process_exits_without_closing_it(
    tmp_path: Path,
) -> None:
    # The daemon's shutdown ends the process without closing its engine.
    socket = tmp_path / "run" / f"llama-{os.getpid()}-1.sock"
    socket.parent.mkdir()
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from npllm.engines.llamacpp import _Instance, _Prefixes\n"
        "socket = Path(sys.argv[1])\n"
        "socket.touch()\n"
        "kept = _Instance(object(), {}, None, socket, 0.0, _Prefixes(1))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(socket)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert not socket.exists()


def test_sockets_of_dead_processes_are_removed_at_start_and_live_ones_kept(
    tmp_path: Path,
) -> None:
    from npllm.engines.llamacpp import remove_stale_sockets

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = tmp_path / f"llama-{int(done.stdout)}-3.sock"
    mine = tmp_path / f"llama-{os.getpid()}-1.sock"
    other = tmp_path / "llama-server.sock"  # not one of ours
    for path in (dead, mine, other):
        path.touch()
    assert remove_stale_sockets(tmp_path) == [dead]
    assert sorted(tmp_path.iterdir()) == sorted([mine, other])
    assert remove_stale_sockets(tmp_path / "missing") == []
