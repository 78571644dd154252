"""The llama.cpp engine: the quantised GGUF served in-process by llama.cpp's own server code
(the PyPI wheel ``xllamacpp``), adapters as GGUF LoRAs chosen per request.

- No fp32 copy of the base lives in the serving process: llama.cpp memory-maps the GGUF,
  and only the tokenizer is loaded in Python (npllm assembles the prompt itself with the
  GGUF's chat template, so this engine and the transformers one see the same token ids).
- The xllamacpp server listens on no TCP port: its HTTP side is bound to a Unix socket in
  the daemon's private run directory and never used; requests go through
  ``Server.handle_completions`` in this process.
- Adapters are fixed when a ``Server`` is built, so every change of the served set (a
  publish, a rollback, a deletion) builds a new instance beside the current one, checks
  it, flips to it between requests and frees the old one (the GGUF pages are shared; each
  instance has its own KV cache). All of it runs on the daemon's generation thread.
- Each loaded adapter starts at scale 0 (``lora_init_without_apply``); a request lists the
  ones it uses with their weights, so a blend of 2-3 is the exact weighted sum of their
  updates and a request with none computes none of them.

One concept, over ~400 lines: the llama.cpp engine (its server instances, adapters and
generation).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npllm.artifacts import write_atomically
from npllm.config import Settings
from npllm.engines import gguf_export
from npllm.engines.base import Draft
from npllm.errors import AdapterError, ModelError
from npllm.generation import Generation, GenerationParams, encode_chat, ensure_chat_template
from npllm.llm import _DraftCount, base_fingerprint, gguf_cache_dir
from npllm.versions import Version
from npllm.weights import ModelSource, resolve

log = logging.getLogger("npllm.engines.llamacpp")

DRAFT_FILE = "cerebellum.gguf"  # a cerebellum version merged into the base, as a GGUF model


def free_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def load_tokenizer(source: ModelSource, cache_root: Path) -> Any:
    """The base's tokenizer, without its weights: from the dequantised copy's directory when
    there is one (the sleep worker writes it), else read from the GGUF itself and kept in a
    small tokenizer-only directory for the next start."""
    from transformers import AutoTokenizer

    full = gguf_cache_dir(source, cache_root)
    own = full.with_name(full.name + "-tokenizer")
    for directory in (full, own):
        if (directory / "tokenizer_config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            break
    else:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                source.path.parent, gguf_file=source.path.name
            )
        except Exception as exc:
            raise ModelError(
                f"models.base: cannot read the tokenizer of {source.path}: {exc}"
            ) from exc
        try:  # whole or not at all: another process may be reading it already
            write_atomically(own, tokenizer.save_pretrained)
        except OSError as exc:
            log.info("tokenizer not kept in %s: %s", own, exc)  # another process did
    return ensure_chat_template(tokenizer)


@dataclass
class _Instance:
    """One xllamacpp server: the base, the adapters it was built with (version key → its
    llama.cpp id) and the draft model, if any."""

    server: Any
    ids: dict[str, int]
    draft: Draft | None
    socket: Path
    built_ms: float
    prefixes: _Prefixes

    def __post_init__(self) -> None:
        # The socket goes when the instance is closed, dropped unclosed, or still alive when
        # the process exits (the daemon's shutdown does not close its engine).
        self._remove_socket = weakref.finalize(self, self.socket.unlink, missing_ok=True)

    def close(self) -> None:
        self.server = None  # the C++ server is freed with its last reference
        self._remove_socket()


_SOCKET = re.compile(r"^llama-(\d+)-\d+\.sock$")  # llama-<pid>-<serial>.sock (_build)


def remove_stale_sockets(run_dir: Path) -> list[Path]:
    """Remove the instance sockets that processes no longer alive left in `run_dir` (killed,
    or from before sockets were removed at exit); those of live processes (the daemon, its
    sleep worker) stay. The ones removed."""
    removed = []
    for path in run_dir.glob("llama-*.sock"):
        match = _SOCKET.match(path.name)
        if match is None or _alive(int(match[1])):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class _Prefixes:
    """Which llama.cpp slot keeps the prompt prefix computed under which adapter set.

    The instance has `n` slots sharing one KV cache of the model's context (llama.cpp's
    unified KV: each slot may use all of it, and idle slots' cells are given up when a
    request needs them). A request goes to the slot of its adapter set and reuses the
    prefix cached there (system prompt, memories, earlier turns); a set without a slot
    takes the least recently used one with the prompt cache off, so a prefix computed under
    other adapters is never reused (llama.cpp matches cached prompts by tokens alone)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._sets: dict[tuple[tuple[int, float], ...], int] = {}  # most recent last

    def slot(self, lora: list[dict[str, Any]]) -> tuple[int, bool]:
        """(slot id, whether its cached prefix was computed under exactly `lora`)."""
        key = self._key(lora)
        if key in self._sets:
            slot = self._sets.pop(key)
            self._sets[key] = slot
            return slot, True
        free = sorted(set(range(self.n)) - set(self._sets.values()))
        if free:
            slot = free[0]
        else:
            oldest = next(iter(self._sets))
            slot = self._sets.pop(oldest)
        self._sets[key] = slot
        return slot, False

    @staticmethod
    def _key(lora: list[dict[str, Any]]) -> tuple[tuple[int, float], ...]:
        """An adapter set, whatever its order; a scale of 0 is no adapter."""
        return tuple(sorted((int(x["id"]), float(x["scale"])) for x in lora if x["scale"]))

    def drop(self, lora: list[dict[str, Any]]) -> None:
        """Forget the slot of this adapter set (its next request evaluates the whole prompt)."""
        self._sets.pop(self._key(lora), None)


@dataclass
class _Request:
    pieces: list[str] = field(default_factory=list)
    finish: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)
    probs: list[dict[int, float]] = field(default_factory=list)
    error: str | None = None
    cancelled: bool = False


class LlamaCppEngine:
    name = "llama.cpp"

    def __init__(self, settings: Settings, source: ModelSource, run_dir: Path) -> None:
        import xllamacpp

        self._xlc = xllamacpp
        self.settings = settings
        self.source = source
        self.run_dir = run_dir
        self.base = gguf_export.base_info(source.path)
        self.context_length = self.base.context_length
        self.tokenizer = load_tokenizer(source, settings.model_cache_path)
        self.fingerprint = base_fingerprint(source, source.path)
        self.threads = settings.models.threads or free_cores()
        self._serial = itertools.count(1)
        self._current: _Instance | None = None  # built by serve() or the first request
        for path in remove_stale_sockets(run_dir):
            log.info(json.dumps({"event": "stale_socket_removed", "socket": str(path)}))
        self.adapters = LlamaCppAdapters(self)

    @property
    def model_id(self) -> str:
        return self.source.model_id

    # ---- instances ----------------------------------------------------------------------

    def _build(self, files: dict[str, Path], draft: Draft | None) -> _Instance:
        """A new server on the base with `files` (version key → GGUF LoRA) loaded at scale 0
        and `draft` as its speculative draft model."""
        started = time.perf_counter()
        xlc = self._xlc
        params = xlc.CommonParams()
        params.model.path = str(self.source.path)
        params.n_ctx = self.context_length
        slots = self.settings.models.prefix_slots
        params.n_parallel = slots
        params.kv_unified = True  # every slot may use the whole context (see _Prefixes)
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.verbosity = -1
        # No prompt cache in RAM across requests: llama.cpp restores a saved prompt state
        # by token similarity alone, so a state computed under one adapter was reused for a
        # request without it (tests/test_engines.py); the slots' own caches stay, one per
        # adapter set (_Prefixes).
        params.cache_ram_mib = 0
        params.cache_idle_slots = False  # (llama.cpp's default saves idle slots to that cache)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        socket = self.run_dir / f"llama-{os.getpid()}-{next(self._serial)}.sock"
        socket.unlink(missing_ok=True)  # left by a crashed process of this pid: would not bind
        params.hostnames = [str(socket)]  # a Unix socket in the private run dir: no TCP port
        keys = list(files)
        params.lora_adapters = [xlc.CommonAdapterLoraInfo(str(files[k]), 0.0) for k in keys]
        params.lora_init_without_apply = True
        if draft is not None:
            spec = params.speculative
            spec.types = [xlc.common_speculative_type.COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]
            spec.draft.mparams.path = str(draft.handle)
            spec.draft.n_max = self.settings.cerebellum.draft_tokens
            spec.draft.n_min = 0
            spec.draft.cpuparams.n_threads = self.threads
            spec.draft.cpuparams_batch.n_threads = self.threads
        try:
            server = xlc.Server(params)
        except Exception as exc:
            raise ModelError(f"llama.cpp could not load {self.source.path}: {exc}") from exc
        built = _Instance(
            server, {k: i for i, k in enumerate(keys)}, draft, socket, 0.0, _Prefixes(slots)
        )
        built.built_ms = round((time.perf_counter() - started) * 1000, 1)
        return built

    @property
    def current(self) -> _Instance:
        """The instance serving requests (built with no adapters if nothing was served)."""
        if self._current is None:
            self._current = self._build({}, None)
        return self._current

    def flip(self, instance: _Instance) -> None:
        """Serve `instance` from the next request on; free the one it replaces (called on
        the generation thread, between requests: nothing runs on the old one)."""
        old, self._current = self._current, instance
        if old is not None and old is not instance:
            old.close()

    # ---- generation ---------------------------------------------------------------------

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return encode_chat(self.tokenizer, messages)

    def generate(
        self,
        prompt_ids: list[int],
        params: GenerationParams,
        *,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        adapters: Sequence[tuple[str, float]] = (),
        draft: Draft | None = None,
    ) -> Generation:
        started = time.perf_counter()
        instance = self.current
        lora = self.adapters.lora_list(instance, adapters)
        body = self._body(prompt_ids, params, lora)
        # Reuse a cached prompt only when it was computed with the same adapters: seen
        # here, llama.cpp reused a prefix computed under a blend for a request without any.
        body["id_slot"], body["cache_prompt"] = instance.prefixes.slot(lora)
        try:
            result = self._run(instance, body, on_text, cancel)
        except ModelError:
            instance.prefixes.drop(lora)  # what the slot holds now is not known
            raise
        report = None
        if instance.draft is not None:
            t = result.timings
            count = _DraftCount(int(t.get("draft_n", 0)), int(t.get("draft_n_accepted", 0)))
            report = count.report()
        finish = "cancelled" if result.cancelled else (result.finish or "stop")
        return Generation(
            text="".join(result.pieces),
            prompt_tokens=len(prompt_ids),
            completion_tokens=int(result.usage.get("completion_tokens", len(result.pieces))),
            finish_reason=finish,
            seconds=time.perf_counter() - started,
            draft=report,
            cached_tokens=int(result.timings.get("cache_n", 0)),
        )

    def _body(
        self, prompt_ids: list[int], params: GenerationParams, lora: list[dict[str, Any]]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": list(prompt_ids),
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p if params.temperature > 0 else 1.0,
            # transformers' sampling: no top-k and no min-p cut (llama.cpp's defaults are
            # 40 and 0.05), so the two engines sample from the same distribution.
            "top_k": 0,
            "min_p": 0.0,
            "stop": list(params.stop),
            "repeat_penalty": params.repeat_penalty,
            "repeat_last_n": params.repeat_last_n,
            "frequency_penalty": params.frequency_penalty,
            "presence_penalty": params.presence_penalty,
            "stream": True,
            "cache_prompt": True,
            "lora": lora,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def _run(
        self,
        instance: _Instance,
        body: dict[str, Any],
        on_text: Callable[[str], None] | None,
        cancel: threading.Event | None,
    ) -> _Request:
        request = _Request()

        def on_chunk(chunk: Any) -> bool:
            if not isinstance(chunk, dict) or "choices" not in chunk:
                request.error = str(
                    chunk.get("message", chunk) if isinstance(chunk, dict) else chunk
                )
                return True
            if cancel is not None and cancel.is_set():
                request.cancelled = True
                return True
            choice = chunk["choices"][0]
            text = choice.get("text") or ""
            if text:
                request.pieces.append(text)
                if on_text is not None:
                    on_text(text)
            for item in (choice.get("logprobs") or {}).get("content") or []:
                request.tokens.append(int(item["id"]))
                request.probs.append(
                    {int(t["id"]): math.exp(t["logprob"]) for t in item.get("top_logprobs", [])}
                )
            if choice.get("finish_reason"):
                request.finish = choice["finish_reason"]
            if "usage" in chunk:
                request.usage = chunk["usage"]
                request.timings = chunk.get("timings") or {}
            return False

        instance.server.handle_completions(body, on_chunk)
        if request.error is not None:
            raise ModelError(f"llama.cpp refused the request: {request.error}")
        return request

    def probe(
        self, instance: _Instance, ref: dict[str, Any], lora: list[dict[str, Any]]
    ) -> list[dict[int, float]]:
        """Next-token probabilities of `instance` (its top tokens), teacher-forced along the
        reference's answer: one 1-token completion per position, each reusing the cached
        prompt of the one before (the parity check)."""
        probs = []
        slot, _ = instance.prefixes.slot(lora)
        for step in range(len(ref["steps"])):
            ids = ref["prompt_ids"] + ref["tokens"][:step]
            body = self._body(ids, GenerationParams(max_new_tokens=1), lora)
            body.update(n_probs=gguf_export.LLAMA_TOP_K, cache_prompt=step > 0, id_slot=slot)
            result = self._run(instance, body, None, None)
            probs.append(result.probs[0] if result.probs else {})
        return probs

    def build_draft(self, version: Version, cerebellum: Any) -> Draft:
        """The cerebellum version merged into a GGUF model beside its peft files (once),
        which llama.cpp drafts with. Only a cerebellum on the base's own weights can be
        exported this way (cerebellum.model empty)."""
        started = time.perf_counter()
        if getattr(cerebellum.source, "fingerprint", None) != self.fingerprint:
            raise AdapterError(
                "under llama.cpp the cerebellum drafts from the base's own GGUF "
                "(cerebellum.model must be empty)"
            )
        target = version.path / DRAFT_FILE
        try:
            if not target.exists():
                gguf_export.merge_model(self.base, version.path, target)
        except (OSError, ValueError, KeyError, AdapterError) as exc:
            raise AdapterError(f"cannot export cerebellum v{version.version}: {exc}") from exc
        return Draft(version, target, round((time.perf_counter() - started) * 1000, 1))

    def use_draft(self, draft: Draft | None) -> None:
        """Draft with `draft` from the next request on (a new instance, flipped to)."""
        files = self.adapters.files()
        self.flip(self._build(files, draft))

    def info(self) -> dict[str, Any]:
        system = self._xlc.get_system_info()
        return {
            "engine": self.name,
            "version": getattr(self._xlc, "__version__", "?"),
            "threads": self.threads,
            "avx2": "AVX2 = 1" in system,
            "context_length": self.context_length,
            "model_file": str(self.source.path),
            "instance_built_ms": None if self._current is None else self._current.built_ms,
        }

    def close(self) -> None:
        if self._current is not None:
            self._current.close()


@dataclass
class _Staged:
    """An instance built for a version about to be published, beside the served one."""

    version: Version
    keep: set[str]  # the other versions it serves (it is stale if they change)
    instance: _Instance | None = None
    report: dict[str, Any] | None = None
    error: AdapterError | None = None


class LlamaCppAdapters:
    """The AdapterServing of the llama.cpp engine (see npllm/engines/base.py)."""

    def __init__(self, engine: LlamaCppEngine) -> None:
        self.engine = engine
        self.alias: dict[str, Version] = {}
        self.held: dict[str, Version] = {}  # key → a canary's control, loaded beside
        self.changes = 0
        self._staged: _Staged | None = None  # the next instance, built off the model thread
        self._lock = threading.Lock()

    # what a request sends

    def lora_list(
        self, instance: _Instance, chosen: Sequence[tuple[str, float]]
    ) -> list[dict[str, Any]]:
        """llama.cpp's `lora` field for served adapter names with weights. Every name must
        be served by `instance` (llama.cpp would silently ignore an unknown id)."""
        lora = []
        for name, weight in chosen:
            version = self.alias.get(name) or self.held.get(name)
            if version is None or version.key not in instance.ids:
                raise AdapterError(f"adapter {name!r} is not served by the llama.cpp instance")
            lora.append({"id": instance.ids[version.key], "scale": float(weight)})
        return lora

    # the served set

    def _files(self, versions: Sequence[Version]) -> dict[str, Path]:
        return {v.key: v.path / gguf_export.GGUF_FILE for v in versions}

    def files(self) -> dict[str, Path]:
        """The served versions' GGUF LoRAs (the held ones too)."""
        return self._files(self._beside(None))

    def _beside(self, adapter: str | None) -> list[Version]:
        """What an instance loads besides a new version of `adapter`: the other adapters'
        served versions and the held ones."""
        keep = [v for v in self.alias.values() if v.adapter != adapter]
        return keep + [v for k, v in self.held.items() if k not in {x.key for x in keep}]

    def prepare(self, version: Version) -> Path:
        """The version's GGUF LoRA, converted from its peft files when it has none yet, and
        read back whole before llama.cpp sees it."""
        config = json.loads((version.path / "adapter_config.json").read_text())
        target = version.path / gguf_export.GGUF_FILE
        if not target.exists():
            gguf_export.convert(version.path, self.engine.base, target)
        gguf_export.check_file(target, self.engine.base, config)
        return target

    def check_parity(self, instance: _Instance, version: Version) -> dict[str, Any]:
        """Compare llama.cpp with the adapter against peft's reference on the probe chat;
        AdapterError with the reason when they differ beyond the tolerance."""
        ref_file = version.path / gguf_export.REFERENCE_FILE
        if not ref_file.exists():
            write_reference(self.engine.settings, version.path)
        ref = json.loads(ref_file.read_text())
        lora = [{"id": instance.ids[version.key], "scale": 1.0}]
        probs = self.engine.probe(instance, ref, lora)
        problem, figures = gguf_export.compare(ref, probs)
        if problem is not None:
            raise AdapterError(
                f"its GGUF conversion does not match peft on the probe chat: {problem}"
            )
        first = max(probs[0], key=probs[0].__getitem__) if probs and probs[0] else None
        return {
            "smoke_token": "" if first is None else self.engine.tokenizer.decode([first]),
            "parity_error": figures["error"],
            "parity_effect": figures["effect"],
        }

    def serve(self, versions: Sequence[Version], held: Sequence[Version] = ()) -> list[Version]:
        """At start-up: serve these versions (and hold `held` beside them); one that cannot
        be converted or checked is logged and left out. Returns the served ones."""
        ok: list[Version] = []
        for version in [*versions, *held]:
            try:
                self.prepare(version)
                ok.append(version)
            except (AdapterError, OSError, ValueError) as exc:
                log.error(json.dumps({"event": "adapter_not_served", "version": version.key,
                                      "error": str(exc)}))  # fmt: skip
        instance = self.engine._build(self._files(ok), self._draft())
        served = []
        for version in ok:
            try:
                if not (version.path / gguf_export.PARITY_MARK).exists():  # not checked yet
                    self.check_parity(instance, version)
                    (version.path / gguf_export.PARITY_MARK).touch()
                served.append(version)
            except (AdapterError, OSError) as exc:
                log.error(json.dumps({"event": "adapter_not_served", "version": version.key,
                                      "error": str(exc)}))  # fmt: skip
        if len(served) != len(ok):
            instance.close()
            instance = self.engine._build(self._files(served), self._draft())
        self.engine.flip(instance)
        held_keys = {v.key for v in held}
        self.alias = {v.adapter: v for v in served if v.key not in held_keys}
        self.held = {v.key: v for v in served if v.key in held_keys}
        self.changes += 1
        return [v for v in served if v.key not in held_keys]

    def stage(self, version: Version) -> None:
        """Off the generation thread, while requests are served: convert and check
        `version`, build an instance with it in place of its adapter's served version and
        run the parity check on it. The swap on the generation thread then only flips.
        Nothing served changes here; a failure is kept and raised by `load`."""
        with self._lock:
            self._drop_staged()
        keep = [v for v in self._beside(version.adapter) if v.key != version.key]
        staged = _Staged(version, {v.key for v in keep})
        try:
            self.prepare(version)
            staged.instance = self.engine._build(self._files([*keep, version]), self._draft())
            staged.report = {**self.check_parity(staged.instance, version),
                             "build_ms": staged.instance.built_ms}  # fmt: skip
            (version.path / gguf_export.PARITY_MARK).touch()
        except (AdapterError, ModelError, OSError, ValueError) as exc:
            staged.error = exc if isinstance(exc, AdapterError) else AdapterError(str(exc))
        with self._lock:
            self._drop_staged()
            self._staged = staged

    def load(self, version: Version) -> None:
        """Make `version` ready beside the served ones: the staged instance when it was
        built for the set served now, else built here (on the generation thread)."""
        with self._lock:
            staged = self._staged
        keep = {v.key for v in self._beside(version.adapter) if v.key != version.key}
        if staged is None or staged.version.key != version.key or staged.keep != keep:
            self.stage(version)
            with self._lock:
                staged = self._staged
        assert staged is not None
        if staged.error is not None:
            self.unload(version)
            raise staged.error

    def smoke(self, version: Version) -> dict[str, Any]:
        with self._lock:
            staged = self._staged
        if staged is None or staged.version.key != version.key or staged.report is None:
            raise AdapterError(f"adapter {version.key} was not loaded")
        return dict(staged.report)

    def activate(self, version: Version) -> Version | None:
        self.load(version)
        with self._lock:
            staged, self._staged = self._staged, None
        assert staged is not None and staged.instance is not None
        old = self.alias.get(version.adapter)
        self.engine.flip(staged.instance)
        self.alias[version.adapter] = version
        self.changes += 1
        return old

    def unload(self, version: Version) -> None:
        with self._lock:
            if self._staged is not None and self._staged.version.key == version.key:
                self._drop_staged()

    def _drop_staged(self) -> None:
        if self._staged is not None and self._staged.instance is not None:
            self._staged.instance.close()
        self._staged = None

    def _draft(self) -> Draft | None:
        current = self.engine._current
        return None if current is None else current.draft

    def remove(self, name: str) -> int | None:
        version = self.alias.get(name)
        if version is None:
            return None
        self.held = {k: v for k, v in self.held.items() if v.adapter != name}
        keep = self._beside(name)
        self.engine.flip(self.engine._build(self._files(keep), self._draft()))
        del self.alias[name]
        self.changes += 1
        return version.version

    def hold(self, version: Version) -> None:
        self.held[version.key] = version

    def release(self, key: str) -> None:
        """Rebuilds the instance without it (on the generation thread) when it was loaded."""
        version = self.held.pop(key, None)
        current = self.engine._current
        if version is None or current is None or key not in current.ids:
            return
        if key in {v.key for v in self.alias.values()}:
            return
        self.engine.flip(self.engine._build(self.files(), self._draft()))
        self.changes += 1


def write_reference(settings: Settings, adapter_dir: Path) -> None:
    """peft's reference answer for an adapter that came without one (imported, or trained
    before this check existed): computed in a child process that loads the fp32 copy of the
    base, so the serving process never holds it."""
    started = time.perf_counter()
    env = {**os.environ, "NPLLM_MODELS__BASE": settings.models.base,
           "NPLLM_MODELS__CACHE_DIR": str(settings.model_cache_path)}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "npllm.engines.reference", str(adapter_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise AdapterError(
            f"cannot compute peft's reference for {adapter_dir}: "
            + (proc.stderr.strip().splitlines() or ["no output"])[-1]
        )
    log.info(json.dumps({"event": "reference_written", "adapter": str(adapter_dir),
                         "s": round(time.perf_counter() - started, 1)}))  # fmt: skip


def load(settings: Settings) -> LlamaCppEngine:
    source = resolve(settings.models.base, "models.base")
    if source.kind != "gguf":
        raise ModelError(
            f"models.engine = 'llama.cpp' serves GGUF files; models.base = "
            f"{settings.models.base!r} is a {source.kind}. Use models.engine = 'transformers' "
            "(or 'auto')."
        )
    return LlamaCppEngine(settings, source, settings.data_path / "run")
