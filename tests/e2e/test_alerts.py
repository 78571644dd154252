"""Alerts through the live daemon: a check run now (POST /v1/alerts/check) finds a
rolled-back canary written by hand, once; it is listed, shown in /v1/status, `npllm
alerts`, `npllm status` and /metrics; a bad limit is refused with 400."""

from __future__ import annotations

import subprocess

from prometheus_client.parser import text_string_to_metric_families

from ..conftest import NPLLM, REPO, LiveDaemon, cli_env, psql

ADAPTER = "alerts-e2e"


def _open_gauge(text: str, kind: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "npllm_alerts_open" and s.labels == {"kind": kind}:
                return float(s.value)
    raise AssertionError(f"no npllm_alerts_open sample for {kind}")


def test_a_check_raises_lists_and_shows_an_alert(daemon: LiveDaemon) -> None:
    # A trial rolled back, as the canary code writes it; removed after, with its alert.
    psql(
        daemon,
        f"INSERT INTO npllm.adapters (name, base_model, base_fingerprint, shape) "
        f"VALUES ('{ADAPTER}', 'm', 'f', '{{}}'); "
        f"INSERT INTO npllm.canaries (adapter, candidate, control, share, status, decided_by, "
        f"reason, deadline, decided_at) VALUES ('{ADAPTER}', 2, 1, 0.2, 'rolled_back', 'test', "
        f"'its arm was rated worse', now(), now())",
    )
    try:
        canary = int(psql(daemon, f"SELECT id FROM npllm.canaries WHERE adapter = '{ADAPTER}'"))
        with daemon.http() as http:
            first = http.post("/v1/alerts/check")
            assert first.status_code == 200, first.text
            again = http.post("/v1/alerts/check").json()
            assert [a for a in again["raised"] if a["kind"] == "canary_rolled_back"] == []
            listed = http.get("/v1/alerts", params={"open": "true", "limit": 1000}).json()
            status = http.get("/v1/status").json()
            metrics = http.get("/metrics").text
            bad = http.get("/v1/alerts", params={"limit": 0})
            worse = http.get("/v1/alerts", params={"limit": "many"})
        ours = [a for a in listed["data"] if a["details"].get("canary") == canary]
        assert len(ours) == 1 and ours[0]["kind"] == "canary_rolled_back"
        assert f"{ADAPTER} v2 was rolled back" in ours[0]["message"]
        assert ours[0]["resolved_at"] is None and ours[0]["id"] > 0
        assert ours[0] in status["alerts"]
        assert _open_gauge(metrics, "canary_rolled_back") >= 1
        stored = psql(
            daemon,
            f"SELECT count(*) FROM npllm.alerts WHERE details->>'canary' = '{canary}'",
        )
        assert stored == "1"  # one-shot, whichever check (the watcher's or ours) raised it
        for refused in (bad, worse):
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["param"] == "query.limit"
        assert "greater than or equal to 1" in bad.json()["error"]["message"]
        for command in (["alerts", "--open"], ["status"]):
            shown = subprocess.run(
                [*NPLLM, *command],
                env=cli_env(daemon.data_dir),
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert shown.returncode == 0, shown.stderr
            assert f"canary_rolled_back, open: the canary of {ADAPTER} v2" in shown.stdout
    finally:
        psql(
            daemon,
            f"DELETE FROM npllm.alerts WHERE details->>'adapter' = '{ADAPTER}'; "
            f"DELETE FROM npllm.adapters WHERE name = '{ADAPTER}'",
        )
