"""services/feedback_writer.py: group commit — everything queued goes in one batch, each
caller hears its own outcome."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from npllm.errors import NotFoundError
from services.feedback_writer import FeedbackWriter


class SlowFeedback:
    """Feedback.apply's contract: one outcome (a Result or a NotFoundError) per pending."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.gate = threading.Event()

    def apply(self, batch: list[Any]) -> list[Any]:
        self.gate.wait(5)  # the first batch holds the writer while more requests queue
        self.batches.append(batch)
        return [NotFoundError(f"no interaction {p}") if p < 0 else f"stored {p}" for p in batch]


def test_requests_queued_meanwhile_are_committed_in_one_batch_each_with_its_outcome() -> None:
    feedback = SlowFeedback()
    writer = FeedbackWriter(feedback, max_batch=512)  # type: ignore[arg-type]

    async def main() -> list[Any]:
        first = asyncio.ensure_future(writer.submit(1))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)  # the writer now holds batch [1]
        rest = [asyncio.ensure_future(writer.submit(n)) for n in (2, -3, 4)]  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        feedback.gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    outcomes = asyncio.run(main())
    writer.close()
    assert feedback.batches == [[1], [2, -3, 4]]
    assert outcomes[0] == "stored 1" and outcomes[1] == "stored 2" and outcomes[3] == "stored 4"
    assert isinstance(outcomes[2], NotFoundError) and "no interaction -3" in str(outcomes[2])


def test_a_failed_transaction_fails_every_caller_of_that_batch() -> None:
    class Broken:
        def apply(self, batch: list[Any]) -> list[Any]:
            raise OSError("disk full")

    writer = FeedbackWriter(Broken())  # type: ignore[arg-type]

    async def main() -> None:
        await writer.submit(1)  # type: ignore[arg-type]

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(main())
    writer.close()
