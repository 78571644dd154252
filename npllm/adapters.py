"""LoRA adapters: names, the one shape they all share, the registry, and serving.

Every adapter is a peft LoRA on the frozen base with the same target modules, rank and
alpha (training.* in config), no DoRA, fp32 — so any of them can be loaded beside the
others and routed per request. Versions are loaded under ``name@vN``; an alias map
sends ``name`` to its active version.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from psycopg.types.json import Jsonb

from npllm.config import Settings, TrainingConfig
from npllm.errors import AdapterError, NotFoundError, RequestError

log = logging.getLogger("npllm.adapters")

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# Files a version may carry besides the adapter: the MAS importance Ω accumulated over its
# cycles, and the retention probe (examples of earlier cycles), written by the sleep cycle;
# peft's answer to the parity probe, written by the trainer (npllm/engines/gguf_export.py).
EXTRAS = ("mas_omega.safetensors", "probe.jsonl", "reference.json")


CEREBELLUM = "cerebellum"  # the registry name of the cerebellum; no adapter may take it


def check_name(name: str, what: str = "adapter") -> str:
    """Refuse names that are not `[a-z0-9][a-z0-9_-]{0,62}` (no paths, no dots)."""
    if not NAME.fullmatch(name):
        raise RequestError(
            f"invalid {what} name {name!r}: use 1-63 characters from a-z, 0-9, '_' and '-', "
            "starting with a letter or digit",
            param="name",
        )
    if what == "adapter" and name == CEREBELLUM:
        raise RequestError(
            f"the name {CEREBELLUM!r} is reserved for the cerebellum (the draft model); "
            "pick another adapter name",
            param="name",
        )
    return name


@dataclass(frozen=True)
class AdapterShape:
    """What every adapter must share to be served together."""

    r: int
    alpha: int
    target_modules: tuple[str, ...]

    @classmethod
    def from_config(cls, config: TrainingConfig) -> AdapterShape:
        return cls(config.lora_r, config.lora_alpha, tuple(sorted(config.lora_target_modules)))

    def to_dict(self) -> dict[str, object]:
        return {"r": self.r, "alpha": self.alpha, "target_modules": list(self.target_modules)}


# ---- artifacts -----------------------------------------------------------------------------


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


def copy_artifact(source: Path, target: Path) -> None:
    """Copy an adapter directory into place (never half-written)."""

    def copy(temp: Path) -> None:
        for name in ("adapter_config.json", "adapter_model.safetensors", *EXTRAS):
            if not (source / name).exists() and name in EXTRAS:
                continue
            shutil.copyfile(source / name, temp / name)

    write_atomically(target, copy)


# ---- the registry (database) ---------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    adapter: str
    version: int
    path: Path
    status: str

    @property
    def key(self) -> str:
        """The name it is loaded under in the serving model."""
        return f"{self.adapter}@v{self.version}"


_UPSERT_ADAPTER = """
INSERT INTO npllm.adapters (name, description, tags, centroid, base_model, base_fingerprint,
                            shape, dataset, kind)
VALUES (%(name)s, %(description)s, %(tags)s, %(centroid)s, %(base_model)s, %(fingerprint)s,
        %(shape)s, %(dataset)s, %(kind)s)
ON CONFLICT (name) DO UPDATE SET
    description = CASE WHEN EXCLUDED.description = '' THEN npllm.adapters.description
                       ELSE EXCLUDED.description END,
    tags = CASE WHEN cardinality(EXCLUDED.tags) = 0 THEN npllm.adapters.tags
                ELSE EXCLUDED.tags END,
    centroid = coalesce(EXCLUDED.centroid, npllm.adapters.centroid),
    base_model = EXCLUDED.base_model, base_fingerprint = EXCLUDED.base_fingerprint,
    shape = EXCLUDED.shape, dataset = coalesce(EXCLUDED.dataset, npllm.adapters.dataset),
    status = 'active', updated_at = now()
"""
_NEXT_VERSION = """
SELECT coalesce(max(version), 0) + 1 FROM npllm.model_versions WHERE adapter = %(name)s
"""
_ADD_VERSION = """
INSERT INTO npllm.model_versions (adapter, version, artifact_path, base_fingerprint, metrics,
                                  status)
VALUES (%(name)s, %(version)s, %(path)s, %(fingerprint)s, %(metrics)s, 'candidate')
"""
_ACTIVE = """
SELECT v.adapter, v.version, v.artifact_path, v.status, a.centroid
FROM npllm.model_versions v JOIN npllm.adapters a ON a.name = v.adapter
WHERE v.status = 'active' AND a.status = 'active' AND v.base_fingerprint = %(fingerprint)s
  AND a.kind = %(kind)s
ORDER BY v.adapter
"""
_VERSION = """
SELECT adapter, version, artifact_path, status FROM npllm.model_versions
WHERE adapter = %(name)s AND version = %(version)s
"""
_CURRENT = """
SELECT adapter, version, artifact_path, status FROM npllm.model_versions
WHERE adapter = %(name)s AND status = 'active' AND base_fingerprint = %(fingerprint)s
"""
_PREVIOUS = """
SELECT adapter, version, artifact_path, status FROM npllm.model_versions
WHERE adapter = %(name)s AND status = 'retired' AND version < %(version)s
  AND base_fingerprint = %(fingerprint)s
ORDER BY version DESC LIMIT 1
"""
_RETIRE = """
UPDATE npllm.model_versions SET status = 'retired', status_reason = %(reason)s
WHERE adapter = %(name)s AND status = 'active'
"""
_ACTIVATE = """
UPDATE npllm.model_versions SET status = 'active', status_reason = NULL, activated_at = now()
WHERE adapter = %(name)s AND version = %(version)s
"""
# Inactive versions beyond the newest `keep` keep their row (history) and lose their files.
_PRUNE = """
UPDATE npllm.model_versions
SET status = 'pruned',
    status_reason = 'files removed, older than the newest ' || %(keep)s || ' inactive '
                    || 'versions (training.keep_versions); was ' || status
                    || coalesce(': ' || status_reason, '')
WHERE adapter = %(name)s AND status NOT IN ('active', 'pruned') AND version NOT IN (
    SELECT version FROM npllm.model_versions
    WHERE adapter = %(name)s AND status NOT IN ('active', 'pruned')
    ORDER BY version DESC LIMIT %(keep)s)
RETURNING version, artifact_path
"""
# Adapters with an active version for this base: the served population.
_POPULATION = """
SELECT v.adapter FROM npllm.model_versions v JOIN npllm.adapters a ON a.name = v.adapter
WHERE v.status = 'active' AND v.base_fingerprint = %(fingerprint)s AND a.kind = %(kind)s
"""
_DELETE_ADAPTER = "DELETE FROM npllm.adapters WHERE name = %(name)s AND kind = %(kind)s"
# One lock for every change of the population (creating or publishing an adapter).
_POPULATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('npllm.adapter-population'))"
_SET_STATUS = """
UPDATE npllm.model_versions SET status = %(status)s, status_reason = %(reason)s,
       metrics = metrics || %(metrics)s
WHERE adapter = %(name)s AND version = %(version)s
"""
_STALE = """
UPDATE npllm.adapters SET status = CASE WHEN base_fingerprint = %(fingerprint)s
                                        THEN 'active' ELSE 'stale' END, updated_at = now()
WHERE status <> CASE WHEN base_fingerprint = %(fingerprint)s THEN 'active' ELSE 'stale' END
  AND kind = %(kind)s
RETURNING name, status
"""
_LIST = """
SELECT a.name, a.description, a.tags, a.status, a.base_model, a.dataset, a.centroid IS NOT NULL,
       coalesce(json_agg(json_build_object(
           'version', v.version, 'status', v.status, 'reason', v.status_reason,
           'path', v.artifact_path, 'created_at', v.created_at, 'metrics', v.metrics)
           ORDER BY v.version) FILTER (WHERE v.id IS NOT NULL), '[]')
FROM npllm.adapters a LEFT JOIN npllm.model_versions v ON v.adapter = a.name
WHERE a.kind = %(kind)s
GROUP BY a.name ORDER BY a.name
"""


def _version(row: Any) -> Version:
    return Version(row[0], int(row[1]), Path(row[2]), row[3])


@dataclass(frozen=True)
class BaseIdentity:
    """Which base LLM adapters are trained for."""

    model_id: str
    fingerprint: str


class Registry:
    """Adapters and versions in the database; artifacts under <data_dir>/adapters/."""

    def __init__(
        self,
        pool: Any,
        root: Path,
        shape: AdapterShape,
        base: BaseIdentity,
        kind: str = "adapter",
        keep: int = 3,
        cap: int | None = None,
    ) -> None:
        self.pool = pool
        self.root = root
        self.shape = shape
        self.base = base
        # "adapter": the routable LoRA adapters; "cerebellum": the draft model's versions
        # (one name, CEREBELLUM, on the cerebellum's own model).
        self.kind = kind
        self.keep = keep  # versions kept per name besides the active one (for rollback)
        self.cap = cap  # most adapters served at once (modulator.max_adapters); None: no cap

    @classmethod
    def for_settings(
        cls, pool: Any, settings: Settings, base: BaseIdentity, kind: str = "adapter"
    ) -> Registry:
        """The registry of this data dir, with the shape training.* defines."""
        return cls(
            pool,
            settings.data_path / "adapters",
            AdapterShape.from_config(settings.training),
            base,
            kind=kind,
            keep=settings.training.keep_versions,
            cap=settings.modulator.max_adapters if kind == "adapter" else None,
        )

    def population(self, conn: Any = None) -> set[str]:
        """The adapters served now: those with an active version for this base."""
        if conn is None:
            with self.pool.connection() as own:
                return self.population(own)
        rows = conn.execute(
            _POPULATION, {"fingerprint": self.base.fingerprint, "kind": self.kind}
        ).fetchall()
        return {r[0] for r in rows}

    def check_capacity(self, name: str, conn: Any = None, coming: set[str] | None = None) -> None:
        """Refuse a version that would make one adapter more than the cap can serve
        (a new version of a served adapter always fits). `coming`: adapters about to be
        created (a sleep cycle's new topics), counted as served."""
        if self.cap is None:
            return
        served = self.population(conn) | (coming or set())
        if name not in served and len(served) >= self.cap:
            also = " or created tonight" if coming else ""
            raise AdapterError(
                f"adapter cap reached: {len(served)} adapters are served{also} and "
                f"modulator.max_adapters is {self.cap}, so {name!r} cannot be added; delete "
                "one (`npllm adapter delete NAME`) or raise modulator.max_adapters"
            )

    def add_version(
        self,
        name: str,
        source: Path,
        *,
        description: str = "",
        tags: list[str] | None = None,
        centroid: np.ndarray | None = None,
        dataset: str | None = None,
        metrics: dict[str, Any] | None = None,
        check_capacity: bool = True,
    ) -> Version:
        """Check and copy an adapter into the data dir as a new candidate version (refused,
        with nothing written, when it could never be served under the cap; a candidate that
        is kept only as a refused one passes `check_capacity=False`)."""
        check_name(name, self.kind)
        check_artifact(source, self.shape)
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%(name)s))", {"name": name})
            if check_capacity:
                self.check_capacity(name, conn)  # before anything is written
            conn.execute(
                _UPSERT_ADAPTER,
                {
                    "name": name,
                    "description": description,
                    "tags": tags or [],
                    "centroid": centroid,
                    "base_model": self.base.model_id,
                    "fingerprint": self.base.fingerprint,
                    "shape": Jsonb(self.shape.to_dict()),
                    "dataset": dataset,
                    "kind": self.kind,
                },
            )
            version = int(conn.execute(_NEXT_VERSION, {"name": name}).fetchone()[0])  # type: ignore[index]
            target = self.root / name / f"v{version}"
            if target.exists():  # left by a crash before its row was committed
                shutil.rmtree(target)
            copy_artifact(source, target)
            conn.execute(
                _ADD_VERSION,
                {
                    "name": name,
                    "version": version,
                    "path": str(target),
                    "fingerprint": self.base.fingerprint,
                    "metrics": Jsonb(metrics or {}),
                },
            )
        return Version(name, version, target, "candidate")

    def activate(self, version: Version, reason: str = "replaced by a newer version") -> None:
        """Make `version` the active one (the previous active one retires), atomically;
        refused (AdapterError, nothing changed) when it would exceed the cap."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(_POPULATION_LOCK)
            self.check_capacity(version.adapter, conn)
            conn.execute(_RETIRE, {"name": version.adapter, "reason": reason})
            conn.execute(_ACTIVATE, {"name": version.adapter, "version": version.version})
        self.prune(version.adapter)

    def prune(self, name: str) -> list[int]:
        """Remove the files of all but the newest `keep` inactive versions of `name` (their
        rows stay, status 'pruned'); returns the versions pruned. Rollback reaches only
        kept ones."""
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(_PRUNE, {"name": name, "keep": self.keep}).fetchall()
        for _, path in rows:
            shutil.rmtree(path, ignore_errors=True)
        return sorted(int(r[0]) for r in rows)

    def prune_all(self) -> dict[str, list[int]]:
        """:meth:`prune` every adapter of this kind; name → versions pruned (if any)."""
        with self.pool.connection() as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM npllm.adapters WHERE kind = %(kind)s ORDER BY name",
                    {"kind": self.kind},
                ).fetchall()
            ]
        pruned = {name: self.prune(name) for name in names}
        return {name: versions for name, versions in pruned.items() if versions}

    def delete(self, name: str) -> list[int]:
        """Delete adapter `name`: its rows (every version) and its files. Returns the
        versions it had. The caller stops serving it first."""
        check_name(name, self.kind)
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT version, artifact_path FROM npllm.model_versions "
                "WHERE adapter = %(name)s ORDER BY version",
                {"name": name},
            ).fetchall()
            if conn.execute(_DELETE_ADAPTER, {"name": name, "kind": self.kind}).rowcount == 0:
                raise NotFoundError(f"no adapter named {name!r}", param="name")
        for _, path in rows:
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.root / name, ignore_errors=True)
        return [int(r[0]) for r in rows]

    def refuse(self, version: Version, reason: str, metrics: dict[str, Any]) -> None:
        """Keep a version as a candidate that was not published, saying why (older inactive
        versions beyond `keep` are pruned)."""
        with self.pool.connection() as conn:
            conn.execute(
                _SET_STATUS,
                {
                    "name": version.adapter,
                    "version": version.version,
                    "status": "candidate",
                    "reason": reason,
                    "metrics": Jsonb(metrics),
                },
            )
        self.prune(version.adapter)

    def current(self, name: str) -> Version | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                _CURRENT, {"name": name, "fingerprint": self.base.fingerprint}
            ).fetchone()
        return None if row is None else _version(row)

    def previous(self, name: str) -> Version:
        """The version a rollback goes back to."""
        check_name(name, self.kind)
        current = self.current(name)
        if current is None:
            raise NotFoundError(f"adapter {name!r} has no active version", param="name")
        with self.pool.connection() as conn:
            row = conn.execute(
                _PREVIOUS,
                {"name": name, "version": current.version, "fingerprint": self.base.fingerprint},
            ).fetchone()
        if row is None:
            raise RequestError(
                f"adapter {name!r} has no earlier version to roll back to (v{current.version} "
                "is its first kept version for this base)",
                param="name",
            )
        return _version(row)

    def active(self) -> list[tuple[Version, np.ndarray | None]]:
        """Active versions for this base, with their adapters' centroids."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                _ACTIVE, {"fingerprint": self.base.fingerprint, "kind": self.kind}
            ).fetchall()
        return [
            (_version(r[:4]), None if r[4] is None else np.asarray(r[4].to_list(), np.float32))
            for r in rows
        ]

    def sync_staleness(self) -> dict[str, str]:
        """Mark adapters trained for another base 'stale' (and back, if the base returns)."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                _STALE, {"fingerprint": self.base.fingerprint, "kind": self.kind}
            ).fetchall()
        return dict(rows)

    def stale_centroids(self) -> list[tuple[str, np.ndarray]]:
        """Stale adapters (trained for another base) that the sleep cycle can rebuild."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT name, centroid FROM npllm.adapters "
                "WHERE status = 'stale' AND centroid IS NOT NULL AND kind = %(kind)s "
                "ORDER BY name",
                {"kind": self.kind},
            ).fetchall()
        return [(r[0], np.asarray(r[1].to_list(), np.float32)) for r in rows]

    def stale(self) -> list[str]:
        """Adapters trained for another base: not served, rebuilt at the next sleep."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT name FROM npllm.adapters WHERE status = 'stale' AND kind = %(kind)s "
                "ORDER BY name",
                {"kind": self.kind},
            ).fetchall()
        return [r[0] for r in rows]

    def listing(self) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            rows = conn.execute(_LIST, {"kind": self.kind}).fetchall()
        return [
            {
                "name": r[0],
                "description": r[1],
                "tags": list(r[2]),
                "status": r[3],
                "base_model": r[4],
                "dataset": r[5],
                "routable": bool(r[6]),
                "versions": r[7],
            }
            for r in rows
        ]


# ---- serving -------------------------------------------------------------------------------

BASE = "__base__"  # peft's name for "no adapter" in adapter_names


class AdapterServer:
    """The adapters loaded in the serving model, and which version each name means.

    Every method changes or reads the peft model, so all of them run on the generation
    thread, between requests: a request never sees a half-done swap, and routing goes
    through peft's per-call ``adapter_names`` rather than a global active adapter.
    Adapters are never merged into the base weights here."""

    def __init__(self, llm: Any, blend_cache: int = 8) -> None:
        self.llm = llm
        self.alias: dict[str, Version] = {}
        self.blend_cache = blend_cache
        self._blends: OrderedDict[tuple[tuple[str, float], ...], str] = OrderedDict()
        self._blend_ids = 0
        self.changes = 0  # bumped on every swap: answers cached before are stale

    @property
    def loaded(self) -> list[str]:
        return [] if self.llm.peft is None else list(self.llm.peft.peft_config)

    def load(self, version: Version) -> None:
        """Load a version beside the others under its key, name@vN."""
        from peft import PeftModel

        if version.key in self.loaded:
            return
        try:
            if self.llm.peft is None:
                self.llm.peft = PeftModel.from_pretrained(
                    self.llm.model, str(version.path), adapter_name=version.key
                )
            else:
                self.llm.peft.load_adapter(str(version.path), adapter_name=version.key)
        except Exception as exc:
            raise AdapterError(
                f"cannot load adapter {version.key} from {version.path}: {exc}"
            ) from exc
        self.llm.peft.eval()
        for param in self.llm.peft.parameters():
            param.requires_grad_(False)

    def smoke(self, version: Version) -> dict[str, Any]:
        """One forward pass through the version on a short chat: refuse it unless every
        logit is finite; report the token it would answer with first."""
        import torch

        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
        ids = torch.tensor([self.llm.encode_chat(chat)])  # (1, seq)
        with torch.inference_mode():
            logits = self.llm.peft(
                input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=[version.key]
            ).logits  # (1, seq, vocab)
        if not bool(torch.isfinite(logits).all()):
            raise AdapterError(
                f"adapter {version.key} produces NaN/inf logits; its weights seem to be broken"
            )
        first = int(logits[0, -1].argmax())
        return {
            "smoke_token": self.llm.tokenizer.decode([first]),
            "smoke_prompt_tokens": ids.shape[1],
        }

    def activate(self, version: Version) -> Version | None:
        """Point the name at `version`; unload the version it replaces. Returns that one."""
        old = self.alias.get(version.adapter)
        self.alias[version.adapter] = version
        if old is not None and old.key != version.key:
            self.unload(old.key)
        self.changes += 1
        return old

    def remove(self, name: str) -> int | None:
        """Stop serving adapter `name` (deleted); the version it served, if any."""
        version = self.alias.pop(name, None)
        if version is None:
            return None
        self.unload(version.key)
        self.changes += 1
        return version.version

    def stage(self, version: Version) -> None:
        """Nothing to prepare off the generation thread: loading a peft adapter changes the
        served model, so it happens in `load`, between requests."""

    def serve(self, versions: list[Version]) -> list[Version]:
        """At start-up: load and route to these versions; one that fails to load is logged
        and left out. Returns the served ones."""
        served = []
        for version in versions:
            try:
                self.load(version)
            except AdapterError as exc:
                log.error(json.dumps({"event": "adapter_not_served", "version": version.key,
                                      "error": str(exc)}))  # fmt: skip
                continue
            self.activate(version)
            served.append(version)
        return served

    def unload(self, version: Version | str) -> None:
        """Delete a loaded adapter (and every cached blend made from it)."""
        key = version if isinstance(version, str) else version.key
        for combo, blend in list(self._blends.items()):
            if any(k == key for k, _ in combo):
                self._drop(blend)
                del self._blends[combo]
        self._drop(key)

    def _drop(self, key: str) -> None:
        if self.llm.peft is None or key not in self.llm.peft.peft_config:
            return
        if len(self.llm.peft.peft_config) == 1:
            self.llm.peft.unload()  # the last adapter: take the LoRA layers out altogether
            self.llm.peft = None
        else:
            self.llm.peft.delete_adapter(key)

    def adapter_names(self, chosen: list[tuple[str, float]]) -> list[str] | None:
        """peft's adapter_names for one request: its adapter, a cached exact blend, or base."""
        if self.llm.peft is None:
            return None
        if not chosen:
            return [BASE]
        if len(chosen) == 1:
            return [self.alias[chosen[0][0]].key]
        combo = tuple((self.alias[name].key, round(weight, 3)) for name, weight in chosen)
        blend = self._blends.get(combo)
        if blend is None:
            self._blend_ids += 1
            blend = f"blend-{self._blend_ids}"
            self.llm.peft.add_weighted_adapter(
                adapters=[key for key, _ in combo],
                weights=[weight for _, weight in combo],
                adapter_name=blend,
                combination_type="cat",  # exact: concatenated ranks, no SVD approximation
            )
            self._blends[combo] = blend
            while len(self._blends) > self.blend_cache:
                _, evicted = self._blends.popitem(last=False)
                self._drop(evicted)
        else:
            self._blends.move_to_end(combo)
        return [blend]
