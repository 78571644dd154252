"""The version store: every kind of trained version, in one place.

Adapters (kind ``adapter``, routed to), the cerebellum's LoRA (kind ``cerebellum``, one
name) and the modulator (kind ``modulator``, one name) keep their versions the same way:
one ``npllm.adapters`` row per name (its kind, purpose, centroid, the base it was trained
for, its shape) and one ``npllm.model_versions`` row per version (artifact directory,
metrics, status candidate | active | retired | stale | pruned, why). Files live under
``<root>/<name>/v<N>/`` and are checked by the kind's shape before anything is written.

Publishing (making a version active) is one transaction that retires the old one; a
version refused at publish stays ``candidate`` with the reason. Rollback goes to the
newest kept retired version. Inactive versions beyond ``training.keep_versions`` keep
their row (status ``pruned``) and lose their files.

One concept, over ~400 lines: the version store (rows, files and their status machine) for
every kind.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from psycopg.types.json import Jsonb

from npllm.adapters import AdapterShape, check_name
from npllm.artifacts import copy_files
from npllm.config import ModulatorConfig, Settings
from npllm.errors import AdapterError, NotFoundError, RequestError
from npllm.scope import Scope


class Shape(Protocol):
    """What one kind's versions must look like (npllm/adapters.py: AdapterShape;
    npllm/modulator.py: ModulatorShape)."""

    @property
    def files(self) -> tuple[str, ...]:
        """Every version has these files."""
        ...

    @property
    def optional(self) -> tuple[str, ...]:
        """And may have these."""
        ...

    def check(self, path: Path) -> None:
        """Raise AdapterError (saying what is wrong) unless `path` is a version of it."""
        ...

    def to_dict(self) -> dict[str, object]: ...


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


SCOPE_FILE = "scope.safetensors"  # a version's routing keys, beside its weights
KEY_KINDS = ("question", "paraphrase", "topic", "neighbour")  # npllm.routing_keys.kind


@dataclass(frozen=True)
class Keys:
    """A version's routing keys (npllm.routing_keys): per key its kind (question,
    paraphrase, topic), text, unit embedding (row of `embeddings`) and, for a question, the
    interaction it was taught from. A trained version carries them in its directory
    (`SCOPE_FILE`: the embeddings as a tensor, the rest as JSON in the header), so they
    reach the store with its weights whoever publishes it."""

    kinds: list[str]
    texts: list[str]
    embeddings: np.ndarray  # (keys, dim)
    interactions: list[int | None]

    @classmethod
    def topic(cls, centroid: np.ndarray, text: str) -> Keys:
        return cls(["topic"], [text or "topic centroid"],
                   np.asarray(centroid, np.float32)[None], [None])  # fmt: skip

    def plus(self, kind: str, texts: list[str], embeddings: np.ndarray) -> Keys:
        """These keys and more of one kind (not taught from an interaction)."""
        return Keys(self.kinds + [kind] * len(texts), self.texts + texts,
                    np.concatenate([self.embeddings, embeddings]),
                    self.interactions + [None] * len(texts))  # fmt: skip

    def only(self, keep: list[int]) -> Keys:
        """The keys at these positions."""
        return Keys([self.kinds[k] for k in keep], [self.texts[k] for k in keep],
                    self.embeddings[keep], [self.interactions[k] for k in keep])  # fmt: skip

    def save(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        meta = {"kinds": self.kinds, "texts": self.texts, "interactions": self.interactions}
        save_file({"embeddings": np.ascontiguousarray(self.embeddings, np.float32)},
                  str(directory / SCOPE_FILE), metadata={"keys": json.dumps(meta)})  # fmt: skip

    @classmethod
    def load(cls, directory: Path) -> Keys | None:
        """The keys saved in `directory` (None without a scope file); AdapterError when the
        file is not a scope file."""
        from safetensors import SafetensorError, safe_open

        path = directory / SCOPE_FILE
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = json.loads((fh.metadata() or {})["keys"])
                embeddings = fh.get_tensor("embeddings")
            keys = cls(list(meta["kinds"]), list(meta["texts"]), embeddings,
                       list(meta["interactions"]))  # fmt: skip
        except (OSError, KeyError, ValueError, TypeError, SafetensorError) as exc:
            raise AdapterError(f"{path} is not a readable scope file: {exc}") from exc
        n = len(keys.kinds)
        if (embeddings.ndim != 2 or embeddings.shape[0] != n or len(keys.texts) != n
                or len(keys.interactions) != n or not np.isfinite(embeddings).all()
                or set(keys.kinds) - set(KEY_KINDS)):  # fmt: skip
            raise AdapterError(f"{path} is not a valid scope file (its keys do not match)")
        return keys

    def scope(self, config: ModulatorConfig) -> Scope:
        """These keys as a scope: questions and paraphrases at ``modulator.scope_similarity``,
        topics at ``modulator.none_similarity``, neighbours to avoid."""
        taught = [k != "neighbour" for k in self.kinds]
        radii = [config.none_similarity if k == "topic" else config.scope_similarity
                 for k in self.kinds if k != "neighbour"]  # fmt: skip
        avoid = self.embeddings[[not t for t in taught]]
        return Scope(self.embeddings[taught], np.asarray(radii, np.float32), avoid)

    def rows(self, name: str, version: int) -> dict[str, Any]:
        """The parameters of _ADD_KEYS."""
        return {
            "name": name,
            "version": version,
            "kinds": self.kinds,
            "texts": self.texts,
            "embeddings": [str([float(x) for x in row]) for row in self.embeddings],
            "interactions": self.interactions,
        }


@dataclass(frozen=True)
class BaseIdentity:
    """Which base LLM a version is trained for (the modulator: any; see ANY_BASE)."""

    model_id: str
    fingerprint: str


# The modulator routes query embeddings: its versions fit whatever base LLM is served.
ANY_BASE = BaseIdentity("any base LLM (routes query embeddings)", "any")


# A new adapter's row; an existing one keeps everything that routes or serves it (centroid,
# dataset, base, status) until a version of it is activated (_ADOPT).
_UPSERT_ADAPTER = """
INSERT INTO npllm.adapters (name, description, tags, base_model, base_fingerprint, shape, kind)
VALUES (%(name)s, %(description)s, %(tags)s, %(base_model)s, %(fingerprint)s, %(shape)s,
        %(kind)s)
ON CONFLICT (name) DO UPDATE SET
    description = CASE WHEN EXCLUDED.description = '' THEN npllm.adapters.description
                       ELSE EXCLUDED.description END,
    tags = CASE WHEN cardinality(EXCLUDED.tags) = 0 THEN npllm.adapters.tags
                ELSE EXCLUDED.tags END,
    updated_at = now()
"""
# The adapter row takes the activated version's centroid, dataset and base.
_ADOPT = """
UPDATE npllm.adapters a
SET centroid = coalesce(v.centroid, a.centroid), dataset = coalesce(v.dataset, a.dataset),
    base_model = %(base_model)s, base_fingerprint = v.base_fingerprint, shape = %(shape)s,
    status = 'active', updated_at = now()
FROM npllm.model_versions v
WHERE a.name = v.adapter AND v.adapter = %(name)s AND v.version = %(version)s
"""
_ADD_KEYS = """
INSERT INTO npllm.routing_keys (adapter, version, kind, text, embedding, interaction_id)
SELECT %(name)s, %(version)s, k.kind, k.text, k.embedding::vector, k.interaction_id
FROM unnest(%(kinds)s::text[], %(texts)s::text[], %(embeddings)s::text[],
            %(interactions)s::bigint[]) AS k(kind, text, embedding, interaction_id)
"""
# Where the active versions for this base route: their keys, or (a version from before
# keys, or published by hand) its centroid as a topic.
_SCOPES = """
SELECT v.adapter, k.kind, k.embedding, coalesce(v.centroid, a.centroid)
FROM npllm.model_versions v JOIN npllm.adapters a ON a.name = v.adapter
LEFT JOIN npllm.routing_keys k ON k.adapter = v.adapter AND k.version = v.version
WHERE v.status = 'active' AND a.status = 'active' AND v.base_fingerprint = %(fingerprint)s
  AND a.kind = %(kind)s
ORDER BY v.adapter, k.id
"""
_NEXT_VERSION = """
SELECT coalesce(max(version), 0) + 1 FROM npllm.model_versions WHERE adapter = %(name)s
"""
_ADD_VERSION = """
INSERT INTO npllm.model_versions (adapter, version, artifact_path, base_fingerprint, metrics,
                                  status, centroid, dataset)
VALUES (%(name)s, %(version)s, %(path)s, %(fingerprint)s, %(metrics)s, 'candidate',
        %(centroid)s, %(dataset)s)
"""
_ACTIVE = """
SELECT v.adapter, v.version, v.artifact_path, v.status, coalesce(v.centroid, a.centroid)
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
# The active version for this base retires (one active version per adapter and base).
_RETIRE = """
UPDATE npllm.model_versions SET status = 'retired', status_reason = %(reason)s
WHERE adapter = %(name)s AND status = 'active' AND base_fingerprint = %(fingerprint)s
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
# Stale: an active version for another base and none for this one (rebuilt at the next
# sleep); active again when the base it was trained for comes back.
_STALE = """
WITH wanted AS (
    SELECT a.name, CASE
        WHEN EXISTS (SELECT 1 FROM npllm.model_versions v WHERE v.adapter = a.name
                     AND v.status = 'active' AND v.base_fingerprint = %(fingerprint)s)
            THEN 'active'
        WHEN EXISTS (SELECT 1 FROM npllm.model_versions v WHERE v.adapter = a.name
                     AND v.status = 'active') THEN 'stale'
        ELSE 'active' END AS status
    FROM npllm.adapters a WHERE a.kind = %(kind)s
)
UPDATE npllm.adapters a SET status = wanted.status, updated_at = now()
FROM wanted WHERE a.name = wanted.name AND a.status <> wanted.status
RETURNING a.name, a.status
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


class Registry:
    """The versions of one kind in the database; their files under `root`/<name>/v<N>/."""

    def __init__(
        self,
        pool: Any,
        root: Path,
        shape: Shape,
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
        # (one name, CEREBELLUM, on the cerebellum's own model); "modulator": the
        # modulator's (one name, MODULATOR, for any base).
        self.kind = kind
        self.keep = keep  # versions kept per name besides the active one (for rollback)
        self.cap = cap  # most adapters served at once (modulator.max_adapters); None: no cap

    @classmethod
    def for_settings(
        cls, pool: Any, settings: Settings, base: BaseIdentity, kind: str = "adapter"
    ) -> Registry:
        """The store of this data dir for a LoRA kind (adapter, cerebellum), with the shape
        training.* defines (the modulator's: npllm.modulator.store_for)."""
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
        keys: Keys | None = None,
    ) -> Version:
        """Check and copy an adapter into the data dir as a new candidate version (refused,
        with nothing written, when it could never be served under the cap; a candidate that
        is kept only as a refused one passes `check_capacity=False`). Where it routes once
        active: `keys` (its scope), else `centroid` as a topic; nothing of it routes or
        serves until :meth:`activate`."""
        check_name(name, self.kind)
        self.shape.check(source)
        keys = keys or Keys.load(source)  # checked before anything is written
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
                    "base_model": self.base.model_id,
                    "fingerprint": self.base.fingerprint,
                    "shape": Jsonb(self.shape.to_dict()),
                    "kind": self.kind,
                },
            )
            version = int(conn.execute(_NEXT_VERSION, {"name": name}).fetchone()[0])  # type: ignore[index]
            target = self.root / name / f"v{version}"
            if target.exists():  # left by a crash before its row was committed
                shutil.rmtree(target)
            copy_files(source, target, self.shape.files, self.shape.optional)
            conn.execute(
                _ADD_VERSION,
                {
                    "name": name,
                    "version": version,
                    "path": str(target),
                    "fingerprint": self.base.fingerprint,
                    "metrics": Jsonb(metrics or {}),
                    "centroid": centroid,
                    "dataset": dataset,
                },
            )
            if keys is None and centroid is not None:
                keys = Keys.topic(centroid, f"dataset {dataset}" if dataset else description)
            if keys is not None and keys.texts:
                conn.execute(_ADD_KEYS, keys.rows(name, version))
        return Version(name, version, target, "candidate")

    def activate(self, version: Version, reason: str = "replaced by a newer version") -> None:
        """Make `version` the active one (the previous active one retires), atomically;
        refused (AdapterError, nothing changed) when it would exceed the cap."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(_POPULATION_LOCK)
            self.check_capacity(version.adapter, conn)
            conn.execute(_RETIRE, {"name": version.adapter, "reason": reason,
                                   "fingerprint": self.base.fingerprint})  # fmt: skip
            conn.execute(_ACTIVATE, {"name": version.adapter, "version": version.version})
            conn.execute(_ADOPT, {"name": version.adapter, "version": version.version,
                                  "base_model": self.base.model_id,
                                  "shape": Jsonb(self.shape.to_dict())})  # fmt: skip
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

    def deactivate(self, name: str, reason: str) -> Version | None:
        """Retire the active version of `name` and activate none (the modulator's way back
        to untrained routing); the version retired, if any."""
        old = self.current(name)
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(_RETIRE, {"name": name, "reason": reason,
                                   "fingerprint": self.base.fingerprint})  # fmt: skip
        return old

    def version(self, name: str, version: int) -> Version:
        """One stored version (NotFoundError if there is none)."""
        with self.pool.connection() as conn:
            row = conn.execute(_VERSION, {"name": name, "version": version}).fetchone()
        if row is None:
            raise NotFoundError(f"no {self.kind} version {name} v{version}", param="version")
        return _version(row)

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
        """The version a rollback goes back to: the newest kept retired one before the
        active one; for an adapter served no more (merged into another, or retired), its
        newest kept retired version — a rollback serves it again."""
        check_name(name, self.kind)
        current = self.current(name)
        newest = 2**31 - 1  # no active version: any retired one
        with self.pool.connection() as conn:
            row = conn.execute(
                _PREVIOUS,
                {"name": name, "version": newest if current is None else current.version,
                 "fingerprint": self.base.fingerprint},
            ).fetchone()  # fmt: skip
        if row is None and current is None:
            raise NotFoundError(
                f"adapter {name!r} has no active version and no kept retired one", param="name"
            )
        if row is None and current is not None:
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

    def scopes(self, config: ModulatorConfig) -> dict[str, Scope]:
        """Where each active version for this base routes (npllm/scope.py): its keys
        (:meth:`Keys.scope`), or, for a version without keys (published by hand, or from
        before keys), its centroid as a topic. Adapters with neither are not routed."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                _SCOPES, {"fingerprint": self.base.fingerprint, "kind": self.kind}
            ).fetchall()
        kinds: dict[str, list[str]] = {}
        vectors: dict[str, list[list[float]]] = {}
        for name, kind, embedding, centroid in rows:
            vector = embedding if embedding is not None else centroid
            if vector is not None:  # no key: its centroid is its topic
                kinds.setdefault(name, []).append(kind if embedding is not None else "topic")
                vectors.setdefault(name, []).append(vector.to_list())
        found = {
            name: Keys(kinds[name], [""] * len(kinds[name]),
                       np.asarray(vectors[name], np.float32), [None] * len(kinds[name]))
            for name in kinds
        }  # fmt: skip
        return {name: keys.scope(config) for name, keys in found.items()}

    def keys(self, version: Version) -> Keys:
        """The routing keys stored with `version` (empty for one from before keys)."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT kind, text, embedding, interaction_id FROM npllm.routing_keys "
                "WHERE adapter = %(name)s AND version = %(version)s ORDER BY id",
                {"name": version.adapter, "version": version.version},
            ).fetchall()
        return Keys(
            [r[0] for r in rows],
            [r[1] for r in rows],
            np.asarray([r[2].to_list() for r in rows], np.float32).reshape(len(rows), -1),
            [r[3] for r in rows],
        )

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

    def stale_versions(self) -> list[Version]:
        """The version each stale adapter serves under the base it was trained for (the
        newest, when it has been active for several): what its rebuild starts from — its
        keys, its dataset."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT DISTINCT ON (v.adapter) v.adapter, v.version, v.artifact_path, v.status "
                "FROM npllm.model_versions v JOIN npllm.adapters a ON a.name = v.adapter "
                "WHERE a.status = 'stale' AND a.kind = %(kind)s AND v.status = 'active' "
                "ORDER BY v.adapter, v.version DESC",
                {"kind": self.kind},
            ).fetchall()
        return [_version(r) for r in rows]

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
