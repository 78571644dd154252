"""The whole API under a property-based fuzzer (schemathesis over /openapi.json), seeded and
time-bounded, against a live daemon with the real database and models: no input makes it
answer 5xx, every status code, content type, header and body is as the spec documents,
and the daemon still answers afterwards. `make fuzz` runs the same for longer
(bench/fuzz.py); what it found is in docs/reliability.md and tests/e2e/test_fuzz_findings.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fuzz import DAEMON_ENV, free_port, run_schemathesis
from services.auth import load_or_create

from ..conftest import LiveDaemon, make_settings

SECONDS = 75  # the suite's budget; `make fuzz` runs 10 minutes or more
SEED = 20261202


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveDaemon, int]]:
    port = free_port()
    live = LiveDaemon(
        tmp_path_factory.mktemp("fuzz") / "data", NPLLM_SERVER__TCP_PORT=str(port), **DAEMON_ENV
    ).wait_ready()
    yield live, port
    live.stop()


def test_no_generated_request_gets_a_server_error_or_an_undocumented_answer(
    fuzzed: tuple[LiveDaemon, int], tmp_path: Path
) -> None:
    live, port = fuzzed
    key = load_or_create(make_settings(live.data_dir))
    summary = run_schemathesis(f"http://127.0.0.1:{port}", SECONDS, SEED, tmp_path, key)
    print(
        json.dumps(
            {k: v for k, v in summary.items() if k not in ("output", "output_tail")}, indent=2
        )
    )
    assert summary["requests"] > 500, summary["output"]  # it really ran
    assert summary["operations_tested"] >= 20  # every operation but POST /v1/sleep
    assert summary["failures"] == [] and summary["errors"] == [], summary["output"]
    assert summary["exit_code"] == 0, summary["output"]
    # The stateful phase ran (it follows the links: completion → feedback, dataset → export).
    assert summary["phases"].get("stateful") == "success", summary["phases"]
    with live.http() as http:
        assert http.get("/v1/status").status_code == 200
        answer = http.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 2},
        )
        assert answer.status_code == 200, answer.text
