"""What a night lets go of, once it has learned: the last step of a successful cycle
(also of a night with nothing to learn).

- **Idle adapters retire from serving.** A served adapter that no served answer was routed
  to (nor pinned) for ``sleep.retire_idle_days`` — counted from the later of its last use
  and its active version's publish time (npllm/population.py: `idle`) — is handed to the
  cycle's publisher to retire: the daemon unloads it and stops routing to it; its versions
  stay on disk and in the store, and a ``retired`` row in ``npllm.adapter_population`` says
  when it was last used and how long it was idle. An adapter tonight's plan gave samples to
  is never retired by the same night. Publishing a version of it again (a night that
  restores it, `npllm adapter publish`, `npllm adapter rollback NAME`) serves it again and
  writes a ``restored`` row.
- **Exchange memories decay.** An exchange memory not recalled for ``memory.decay_days``
  (since its last recall, or since it was stored) leaves retrieval (npllm/memory.py:
  `decay`); notes, facts and documents never decay; ``npllm.interactions`` is never touched.

Both take `now` (the cycle's clock), so tests run them on a fake clock. The counts go to
the cycle's metrics (``metrics.forgetting`` in ``npllm.sleep_cycles``) and a log line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from datetime import datetime
from typing import Any

import psycopg

from consolidation.publisher import Publisher
from npllm import memory, population
from npllm.config import Settings
from npllm.errors import NpllmError

log = logging.getLogger("npllm.forgetting")


def forget(
    settings: Settings,
    pool: Any,
    fingerprint: str,
    publisher: Publisher,
    cycle: int,
    now: datetime,
    busy: Collection[str] = (),
) -> dict[str, Any]:
    """Retire the idle adapters (not those in `busy`: tonight's plan trained them) through
    `publisher` and decay the unused exchange memories, as of `now` (timezone-aware).
    The report: {"retired": {name: reason or "not retired: why"}, "memories_decayed": n}."""
    days = settings.sleep.retire_idle_days
    retired: dict[str, str] = {}
    for found in population.idle(pool, fingerprint, days, now):
        if found.name in busy:
            continue
        try:
            publisher.retire(found.name, found.reason, cycle, found.details(days))
            retired[found.name] = found.reason
        except (NpllmError, psycopg.Error) as exc:  # refused (a trial runs, ...): kept served
            retired[found.name] = f"not retired: {exc}"
    decayed = memory.decay(pool, settings.memory.decay_days, now)
    report = {"retired": retired, "memories_decayed": len(decayed)}
    log.info(json.dumps({"event": "forgetting", "cycle": cycle, **report}))
    return report
