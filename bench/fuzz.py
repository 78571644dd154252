"""Fuzz the whole API: schemathesis over /openapi.json against a live daemon.

A real `npllm serve` (its own temp data dir, the real database and models) listens on TCP
127.0.0.1 (schemathesis sends the API key) with the token cap lowered (answers of at most 8
tokens, so generated requests stay cheap); schemathesis runs every phase — the schema's
examples, coverage, fuzzing and the stateful phase that follows the schema's links (an
answer's interaction_id into POST /v1/feedback, a dataset's name into its export and
deletion) — until its time budget is spent, and checks every response: no 5xx, status
codes, content types, headers and bodies as documented, 405 with Allow for undeclared
methods. POST /v1/sleep is left out (it would start a training cycle).

    .venv/bin/python bench/fuzz.py --minutes 10      # `make fuzz`

prints a table and writes bench/results/fuzz.json. tests/e2e/test_fuzz.py runs the same
for about a minute in the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.live import REPO, live_daemon  # noqa: E402
from services.auth import KEY_FILE, read_key  # noqa: E402

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
)
# The daemon under fuzzing: short answers, no cycle started by the idle scheduler.
DAEMON_ENV = {
    "NPLLM_SERVER__MAX_TOKENS_CAP": "8",
    "NPLLM_SERVER__DEFAULT_MAX_TOKENS": "4",
    "NPLLM_SLEEP__MIN_NEW_INTERACTIONS": "1000000",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_schemathesis(
    base_url: str, seconds: int, seed: int, workdir: Path, key: str
) -> dict[str, Any]:
    """One schemathesis run with the TCP listener's `key`; its summary (requests, failures,
    warnings, phases)."""
    report = workdir / "schemathesis.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{base_url}/openapi.json",
        "--max-time",
        str(seconds),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--exclude-path",
        "/v1/sleep",
        "--checks",
        ",".join(CHECKS),
        "--generation-database",
        "none",
        "--request-timeout",
        "120",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--header",
        f"Authorization: Bearer {key}",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.e2e.fuzz_hooks", "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=seconds + 600
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    cases = data.get("test_cases", {})
    return {
        "exit_code": done.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "seed": seed,
        "requests": cases.get("generated", 0),
        "cases_with_failures": cases.get("with_failures", 0),
        "failures": [
            {"code": f.get("code"), "title": f.get("title"), "operations": f.get("operations")}
            for f in data.get("failures", [])
        ],
        "errors": data.get("errors", []),
        "phases": {k: v.get("status") for k, v in data.get("phases", {}).items()},
        "operations_tested": data.get("operations", {}).get("tested", 0),
        "warnings": {k: v for k, v in data.get("warnings", {}).items() if v},
        "output_tail": "\n".join(done.stdout.splitlines()[-60:]),
        "output": done.stdout,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--model-cache", type=Path, default=REPO / ".venv" / "npllm-model-cache")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    port = free_port()
    env = {**DAEMON_ENV, "NPLLM_SERVER__TCP_PORT": str(port)}
    with live_daemon(args.model_cache, 240.0, **env) as live, tempfile.TemporaryDirectory() as tmp:
        key = read_key(Path(live.env["NPLLM_DATA_DIR"]) / KEY_FILE)
        summary = run_schemathesis(
            f"http://127.0.0.1:{port}", int(args.minutes * 60), args.seed, Path(tmp), key
        )
        summary["daemon_answers_after"] = live.http.get("/v1/status").status_code == 200
    print(f"{'seed':<28}{summary['seed']}")
    print(f"{'time (s)':<28}{summary['seconds']}")
    print(f"{'requests generated':<28}{summary['requests']}")
    print(f"{'operations tested':<28}{summary['operations_tested']}")
    print(f"{'phases':<28}{summary['phases']}")
    print(f"{'failures':<28}{len(summary['failures'])}")
    for failure in summary["failures"]:
        print(f"  {failure['code']} {failure['title']}: {failure['operations']}")
    print(f"{'errors':<28}{len(summary['errors'])}")
    print(f"{'warnings':<28}{summary['warnings']}")
    print(f"{'daemon answers afterwards':<28}{summary['daemon_answers_after']}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fuzz.json"
    (args.out / "fuzz-output.txt").write_text(summary.pop("output"))  # every failure, in full
    path.write_text(json.dumps(summary, indent=2))
    print(f"written {path} and fuzz-output.txt")
    ok = summary["exit_code"] == 0 and summary["daemon_answers_after"]
    if not ok:
        print(summary["output_tail"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
