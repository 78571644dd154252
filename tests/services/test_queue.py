"""services/queue.py: one generation at a time, a bounded number waiting."""

from __future__ import annotations

import threading

import pytest

from npllm.errors import QueueFull
from services.queue import GenerationQueue


def test_work_runs_one_at_a_time_in_order_and_the_queue_refuses_beyond_its_size() -> None:
    queue = GenerationQueue(size=2)
    release = threading.Event()
    order: list[int] = []

    def job(n: int) -> int:
        release.wait(5)
        order.append(n)
        return n

    futures = [queue.submit(lambda n=n: job(n)) for n in range(3)]  # 1 running + 2 waiting
    assert (queue.running, queue.waiting) == (1, 2)
    with pytest.raises(QueueFull, match=r"2 requests are already waiting \(server.queue_size\)"):
        queue.submit(lambda: job(99))
    swap = queue.submit(lambda: job(100), always=True)  # a hot swap is never refused
    release.set()
    assert [f.result(5) for f in futures] == [0, 1, 2] and swap.result(5) == 100
    assert order == [0, 1, 2, 100]
    assert (queue.running, queue.waiting) == (0, 0)
    queue.shutdown()


def test_a_failing_job_frees_its_slot_and_its_caller_gets_the_error() -> None:
    queue = GenerationQueue(size=0)

    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        queue.submit(fail).result(5)
    assert queue.submit(lambda: 7).result(5) == 7  # the slot is free again
    queue.shutdown()
