"""The adapter population over time (npllm/population.py, consolidation/forgetting.py):
idle adapters retire from serving and come back when republished, exchange memories decay
out of retrieval, a moved centroid is a row — all on a fake clock."""

from __future__ import annotations

from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from psycopg.types.json import Jsonb

from consolidation import bookkeeping
from consolidation.forgetting import forget
from npllm import memory, population
from npllm.adapters import AdapterShape
from npllm.config import Settings, load_settings
from npllm.errors import ConfigError, NotFoundError, RequestError
from npllm.memory import MemoryStore
from npllm.modulator import Modulator
from npllm.versions import BaseIdentity, Registry, Version
from services.api.service import Service
from services.hot_swap import AdapterSlot, HotSwap

from ..conftest import lora_artifact

E = np.eye(384, dtype=np.float32)
SETTINGS = Settings()
SHAPE = AdapterShape.from_config(SETTINGS.training)
BASE = BaseIdentity("a base", "f" * 32)


class FakeServing:
    """The engine's adapter serving, as far as a publish and a retirement use it: which
    version each adapter name serves (no model is loaded)."""

    def __init__(self) -> None:
        self.alias: dict[str, Version] = {}
        self.held: dict[str, Version] = {}
        self.changes = 0

    def stage(self, version: Version) -> None:
        pass

    def load(self, version: Version) -> None:
        if not (version.path / "adapter_model.safetensors").is_file():
            raise AssertionError(f"{version.key} has no weights on disk")

    def smoke(self, version: Version) -> dict[str, Any]:
        return {}

    def unload(self, version: Version) -> None:
        pass

    def activate(self, version: Version) -> Version | None:
        old, self.alias[version.adapter] = self.alias.get(version.adapter), version
        return old

    def remove(self, name: str) -> int | None:
        version = self.alias.pop(name, None)
        return None if version is None else version.version


class NowQueue:
    """The generation queue, running each job at once on the calling thread."""

    def submit(self, job: Any, always: bool = False) -> Future[Any]:
        done: Future[Any] = Future()
        done.set_result(job())
        return done


class ToDaemon:
    """The cycle's publisher as the daemon answers it (POST /v1/adapters/{name}/retire)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def publish(self, trained: Any) -> int:
        raise AssertionError("nothing is published here")

    def retire(self, name: str, reason: str, sleep_cycle: int, details: dict[str, Any]) -> None:
        self.service.retire_adapter(name, reason, sleep_cycle, details)


def _daemon(pool: Any, store: Registry) -> tuple[Service, HotSwap, Any]:
    """A service over the real store and modulator, with the engine faked."""
    awake: Any = SimpleNamespace(
        settings=SETTINGS, adapters=FakeServing(), modulator=Modulator(SETTINGS.modulator),
        trials={}, cache=SimpleNamespace(clear=lambda: None),
    )  # fmt: skip
    service = Service(SETTINGS, SimpleNamespace(pool=pool), awake, NowQueue(), None, None,
                      store, None)  # type: ignore[arg-type]  # fmt: skip
    swap = HotSwap(awake, NowQueue(), {"adapter": AdapterSlot(awake, store)},  # type: ignore[arg-type]
                   lambda cycle: True)  # fmt: skip
    return service, swap, awake


def _published(store: Registry, swap: HotSwap, name: str, art: Path, centroid: int) -> Version:
    version = store.add_version(name, art, centroid=E[centroid])
    swap.publish("adapter", version)
    return version


def _used(pool: Any, name: str, at: datetime) -> None:
    """A served answer the modulator routed to `name` at `at`."""
    with pool.connection() as conn:
        iid = conn.execute(
            "INSERT INTO npllm.interactions (messages, question, answer, base_model, created_at)"
            " VALUES ('[]', 'q', 'a', 'm', %(at)s) RETURNING id",
            {"at": at},
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO npllm.routing_decisions (interaction_id, mode, chosen, created_at) "
            "VALUES (%(id)s, 'modulator', %(chosen)s, %(at)s)",
            {"id": iid, "chosen": Jsonb([{"name": name, "version": 1, "weight": 1.0}]),
             "at": at},
        )  # fmt: skip


def test_an_idle_adapter_retires_keeps_its_versions_and_serves_again_when_republished(
    fresh_database: Any, tmp_path: Path
) -> None:
    pool = fresh_database.pool
    store = Registry(pool, tmp_path / "adapters", SHAPE, BASE)
    service, swap, awake = _daemon(pool, store)
    art = lora_artifact(tmp_path / "art")
    _published(store, swap, "coding", art, 1)
    _published(store, swap, "coding", art, 1)  # v2 serves, v1 kept for rollback
    _published(store, swap, "writing", art, 2)
    start = datetime.now(UTC)
    _used(pool, "coding", start + timedelta(days=3))
    _used(pool, "writing", start + timedelta(days=19))
    assert set(awake.modulator.routable()) == {"coding", "writing"}
    days = SETTINGS.sleep.retire_idle_days  # 21

    # Idle counts from the last use: coding (used day 3) is idle from day 24 on.
    assert population.idle(pool, BASE.fingerprint, days, start + timedelta(days=23)) == []
    cycle = bookkeeping.start_cycle(pool, "manual", 0, "sha", None)
    report = forget(SETTINGS, pool, BASE.fingerprint, ToDaemon(service), cycle,
                    start + timedelta(days=25))  # fmt: skip
    assert list(report["retired"]) == ["coding"]
    assert "unused for 22 days" in report["retired"]["coding"]

    # No longer served, loaded or routed to; writing is untouched.
    assert set(awake.adapters.alias) == {"writing"}
    assert set(awake.modulator.routable()) == {"writing"}
    assert store.population() == {"writing"}
    # Every version kept, in the store and on disk; the row says why.
    listed = {a["name"]: a for a in store.listing()}
    assert listed["coding"]["status"] == "retired"
    versions = listed["coding"]["versions"]
    assert [(v["version"], v["status"]) for v in versions] == [(1, "retired"), (2, "retired")]
    assert versions[1]["reason"].startswith("adapter retired: unused for 22 days")
    assert all((Path(v["path"]) / "adapter_model.safetensors").is_file() for v in versions)
    (row,) = population.listing(pool, "coding")
    assert (row["decision"], row["adapters"], row["sleep_cycle"]) == ("retired", ["coding"], cycle)
    assert row["details"]["version"] == 2 and row["details"]["retire_idle_days"] == 21
    # A second night finds nothing more to retire (writing was used on day 19).
    again = forget(SETTINGS, pool, BASE.fingerprint, ToDaemon(service), cycle,
                   start + timedelta(days=26))  # fmt: skip
    assert again["retired"] == {}
    bookkeeping.finish_cycle(pool, cycle, "succeeded", 0, {}, None, "sha")

    # A rollback serves its newest kept version again: routable, served, a restored row.
    previous = store.previous("coding")
    assert previous.version == 2
    swap.publish("adapter", previous, "rolled back")
    assert awake.adapters.alias["coding"].version == 2
    assert set(awake.modulator.routable()) == {"coding", "writing"}
    assert store.population() == {"coding", "writing"}
    restored = population.listing(pool, "coding")[0]
    assert restored["decision"] == "restored" and "after it was retired" in restored["reason"]
    assert {a["name"]: a["status"] for a in store.listing()}["coding"] == "active"
    # Published again, its idle time starts over (from the publish, not the old last use).
    assert population.idle(pool, BASE.fingerprint, days, datetime.now(UTC)) == []


def test_a_new_version_of_a_retired_adapter_restores_it(
    fresh_database: Any, tmp_path: Path
) -> None:
    pool = fresh_database.pool
    store = Registry(pool, tmp_path / "adapters", SHAPE, BASE)
    service, swap, awake = _daemon(pool, store)
    art = lora_artifact(tmp_path / "art")
    _published(store, swap, "coding", art, 1)
    service.retire_adapter("coding", "retired by hand", None, {})
    with pytest.raises(NotFoundError, match="no served version to retire"):
        service.retire_adapter("coding", "again", None, {})
    assert awake.adapters.alias == {}
    _published(store, swap, "coding", art, 1)  # a night (or a person) publishes v2
    assert awake.adapters.alias["coding"].version == 2
    decisions = [r["decision"] for r in population.listing(pool, "coding")]
    assert decisions == ["restored", "retired"]
    # An adapter that was never retired is not "restored" by its next version.
    _published(store, swap, "coding", art, 1)
    assert len(population.listing(pool, "coding")) == 2


def test_a_moved_centroid_is_a_row_and_a_kept_one_is_not(
    fresh_database: Any, tmp_path: Path
) -> None:
    pool = fresh_database.pool
    store = Registry(pool, tmp_path / "adapters", SHAPE, BASE)
    _, swap, _ = _daemon(pool, store)
    art = lora_artifact(tmp_path / "art")
    _published(store, swap, "coding", art, 1)
    _published(store, swap, "coding", art, 1)  # the same centroid: no row
    assert population.listing(pool, "coding") == []
    moved = (E[1] + E[2]) / np.sqrt(2)  # cosine 0.707 to E[1]
    version = store.add_version("coding", art, centroid=moved)
    store.activate(version, sleep_cycle=None)
    (row,) = population.listing(pool, "coding", decision="centroid")
    assert row["details"] == {"version": 3, "cosine": pytest.approx(0.707107, abs=1e-5)}
    assert "cosine 0.707" in row["reason"]


def _memory(pool: Any, kind: str, row: int, created: datetime, used: datetime | None,
            interaction: int | None = None) -> int:  # fmt: skip
    with pool.connection() as conn:
        return int(conn.execute(
            "INSERT INTO npllm.memories (text, kind, embedding, created_at, last_used_at, "
            "interaction_id) VALUES (%(t)s, %(k)s, %(e)s, %(c)s, %(u)s, %(i)s) RETURNING id",
            {"t": f"{kind} {row}", "k": kind, "e": E[row], "c": created, "u": used,
             "i": interaction},
        ).fetchone()[0])  # fmt: skip


def test_exchange_memories_decay_by_their_rule_and_interactions_are_never_touched(
    fresh_database: Any,
) -> None:
    pool = fresh_database.pool
    now = datetime.now(UTC) + timedelta(days=365)  # the fake clock
    days = SETTINGS.memory.decay_days  # 60
    old, recent = now - timedelta(days=days + 1), now - timedelta(days=days - 1)
    with pool.connection() as conn:
        iid = conn.execute(
            "INSERT INTO npllm.interactions (messages, question, answer, base_model) "
            "VALUES ('[]', 'q', 'a', 'm') RETURNING id"
        ).fetchone()[0]
    unused = _memory(pool, "exchange", 1, old, None, iid)  # stored long ago, never recalled
    recalled = _memory(pool, "exchange", 2, old, recent, iid)  # old, but recalled lately
    long_ago = old - timedelta(days=9)
    stale_use = _memory(pool, "exchange", 3, long_ago, old, iid)  # last recalled long ago
    fresh = _memory(pool, "exchange", 4, recent, None, iid)  # stored lately
    note = _memory(pool, "note", 5, old, None)  # notes, facts, documents never decay
    fact = _memory(pool, "fact", 6, old, None)
    with pool.connection() as conn:
        before = conn.execute("SELECT * FROM npllm.interactions ORDER BY id").fetchall()

    assert sorted(memory.decay(pool, days, now)) == [unused, stale_use]
    assert memory.decay(pool, days, now + timedelta(days=1)) == []  # decayed once
    assert memory.decay(pool, 0, now + timedelta(days=999)) == []  # 0: never
    with pool.connection() as conn:
        after = conn.execute("SELECT * FROM npllm.interactions ORDER BY id").fetchall()
        decayed = dict(conn.execute("SELECT id, decayed_at FROM npllm.memories").fetchall())
    assert after == before
    assert decayed[unused] == now and decayed[stale_use] == now
    assert all(decayed[k] is None for k in (recalled, fresh, note, fact))

    store = MemoryStore(pool, None, SETTINGS.memory)  # type: ignore[arg-type]
    for row, wanted in ((1, None), (3, None), (2, recalled), (4, fresh), (5, note), (6, fact)):
        found = [m.id for m in store.search(E[row], k=10, min_score=0.5)]
        assert found == ([] if wanted is None else [wanted])
    # Brought back as docs/inspect.md says, it is recalled again.
    with pool.connection() as conn:
        conn.execute("UPDATE npllm.memories SET decayed_at = NULL WHERE id = %(id)s",
                     {"id": unused})  # fmt: skip
    assert [m.id for m in store.search(E[1], k=10, min_score=0.5)] == [unused]


def test_bad_day_counts_are_refused_clearly(tmp_path: Path, fresh_database: Any) -> None:
    for key, env in (("sleep.retire_idle_days", "NPLLM_SLEEP__RETIRE_IDLE_DAYS"),
                     ("memory.decay_days", "NPLLM_MEMORY__DECAY_DAYS")):  # fmt: skip
        with pytest.raises(ConfigError, match=rf"{key} = '-1' .*not allowed"):
            load_settings(environ={env: "-1"})
    now = datetime.now(UTC)
    with pytest.raises(ConfigError, match="memory.decay_days = -3 is not allowed"):
        memory.decay(fresh_database.pool, -3, now)
    with pytest.raises(ConfigError, match="sleep.retire_idle_days = -1 is not allowed"):
        population.idle(fresh_database.pool, BASE.fingerprint, -1, now)
    with pytest.raises(RequestError, match="unknown population decision 'deleted'"):
        population.record(fresh_database.pool, "deleted", ["x"], "why")  # type: ignore[arg-type]
    with pytest.raises(RequestError, match="merged_into"):
        population.record(fresh_database.pool, "merged", ["a", "b"], "overlap")


def test_a_retired_adapters_dataset_does_not_revive_it_at_night(
    fresh_database: Any, tmp_path: Path
) -> None:
    """Regression: a retired adapter has no active version, which the night read as "its
    dataset was never learned": every night would have trained it afresh from its dataset,
    restoring what had just been retired."""
    from consolidation import datasets
    from consolidation.plan import _datasets_to_train

    pool = fresh_database.pool
    store = Registry(pool, tmp_path / "adapters", SHAPE, BASE)
    service, swap, _ = _daemon(pool, store)
    line = (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    )
    datasets.import_dataset(pool, "style", line.encode())
    version = store.add_version("style", lora_artifact(tmp_path / "art"), centroid=E[1],
                                dataset="style")  # fmt: skip
    swap.publish("adapter", version)
    assert _datasets_to_train(pool, store, set()) == {}  # learned: nothing to do
    service.retire_adapter("style", "retired by hand", None, {})
    assert _datasets_to_train(pool, store, set()) == {}
    # Tonight's samples routed to it (a night restoring it) bring its dataset along.
    assert list(_datasets_to_train(pool, store, {"style"})) == ["style"]
