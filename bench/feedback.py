"""Benchmark feedback ingestion: sustained events/s over the Unix socket, zero lost events.

    .venv/bin/python bench/feedback.py [--clients 1 8 32] [--events 3000] [--procs 2]
                                       [--out bench/results]

Starts a real `npllm serve` (temp data dir, default models), answers a few questions so
there are interactions to rate, then for each client count sends `--events` explicit
feedback events (a mix of accepted/copied/rejected/ratings/comments, spread over the
interactions) from `--procs` client processes, each running its share of the clients
as concurrent HTTP/1.1 keep-alive connections. After each round it counts the rows in
npllm.feedback_events: every 201 must be a row ("lost" = answered 201 but not stored;
"failed" = not answered 201).

The clients run on the same 2 cores as the daemon and PostgreSQL, so the figure is a
lower bound of what the daemon alone sustains. Prints a table and writes JSON; never
part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from live import live_daemon  # noqa: E402

BODIES = [
    {"event": "accepted"},
    {"event": "copied"},
    {"event": "rejected"},
    {"rating": 0.5},
    {"comment": "thanks, that worked"},
    {"event": "applied", "comment": "não funcionou de primeira, mas agora sim"},
]


def _client_proc(sock: str, clients: int, events: int, ids: list[int], out: Any) -> None:
    """`clients` keep-alive connections in one process, sending `events` POSTs in all.

    A minimal HTTP/1.1 client on asyncio streams: httpx costs about 1 ms of CPU per
    request, which on 2 shared cores would measure the client rather than the daemon."""

    async def connection(queue: asyncio.Queue[int], stats: dict[str, Any]) -> None:
        reader, writer = await asyncio.open_unix_connection(sock)
        try:
            while not queue.empty():
                i = queue.get_nowait()
                body = json.dumps(
                    {"interaction_id": ids[i % len(ids)], **BODIES[i % len(BODIES)]}
                ).encode()
                head = (
                    "POST /v1/feedback HTTP/1.1\r\nHost: npllm\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                t = time.perf_counter()
                writer.write(head + body)
                status_line = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                stats["latencies"].append((time.perf_counter() - t) * 1000)
                if status_line.split()[1] == b"201":
                    stats["ok"] += 1
                else:
                    stats["failed"] += 1
        finally:
            writer.close()

    async def run() -> tuple[int, int, list[float]]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(events):
            queue.put_nowait(i)
        stats: dict[str, Any] = {"ok": 0, "failed": 0, "latencies": []}
        await asyncio.gather(*(connection(queue, stats) for _ in range(clients)))
        return stats["ok"], stats["failed"], stats["latencies"]

    out.put(asyncio.run(run()))


def _psql(env: dict[str, str], sql: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "psql", "-At", "-c", sql],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def bench(client_counts: list[int], events: int, procs: int, model_cache: Path) -> dict[str, Any]:
    rounds = []
    with live_daemon(model_cache) as live:
        env, sock, http = live.env, str(live.socket), live.http
        ids = []
        for i in range(16):
            body = {
                "messages": [{"role": "user", "content": f"Question number {i} about Python?"}],
                "max_tokens": 1,
            }
            ids.append(
                http.post("/v1/chat/completions", json=body).json()["npllm"]["interaction_id"]
            )
        for clients in client_counts:
            before = int(_psql(env, "SELECT count(*) FROM npllm.feedback_events"))
            queue: multiprocessing.Queue[Any] = multiprocessing.Queue()
            n_procs = min(procs, clients)
            shares = [clients // n_procs + (k < clients % n_procs) for k in range(n_procs)]
            per_proc = [events // n_procs + (k < events % n_procs) for k in range(n_procs)]
            workers = [
                multiprocessing.Process(
                    target=_client_proc, args=(sock, shares[k], per_proc[k], ids, queue)
                )
                for k in range(n_procs)
            ]
            started = time.perf_counter()
            for w in workers:
                w.start()
            results = [queue.get() for _ in workers]
            seconds = time.perf_counter() - started
            for w in workers:
                w.join()
            ok = sum(r[0] for r in results)
            failed = sum(r[1] for r in results)
            latencies = [x for r in results for x in r[2]]
            stored = int(_psql(env, "SELECT count(*) FROM npllm.feedback_events")) - before
            rounds.append(
                {
                    "clients": clients,
                    "client_procs": n_procs,
                    "events": events,
                    "seconds": round(seconds, 3),
                    "events_per_s": round(ok / seconds, 1),
                    "ok": ok,
                    "failed": failed,
                    "stored": stored,
                    "lost": ok - stored,
                    "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                    "p99_ms": round(float(np.percentile(latencies, 99)), 2),
                }
            )
    return {"rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--model-cache", type=Path, default=REPO / ".venv" / "npllm-model-cache")
    args = parser.parse_args()
    report = {
        "benchmark": "feedback",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        **bench(args.clients, args.events, args.procs, args.model_cache),
    }
    print("\nfeedback ingestion over the socket          target: >= 2000 events/s, 0 lost")
    print(
        f"  {'clients':>7} {'events':>7} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'failed':>6} {'lost':>5}"
    )
    for r in report["rounds"]:
        print(
            f"  {r['clients']:>7} {r['events']:>7} {r['events_per_s']:>9.0f} {r['p50_ms']:>7.1f} "
            f"{r['p99_ms']:>7.1f} {r['failed']:>6} {r['lost']:>5}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "feedback.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
