"""Every psql recipe in docs/inspect.md runs as written against a real npllm database."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from npllm import interactions, replay
from npllm.config import Settings
from npllm.db import Database, psql_executable
from npllm.feedback import Feedback
from npllm.interactions import Interaction
from npllm.tone import LexiconTone

from ..conftest import REPO

RECIPES = re.findall(r"```sql\n(.*?)```", (REPO / "docs" / "inspect.md").read_text(), re.S)


def test_the_doc_has_recipes() -> None:
    assert len(RECIPES) >= 10


@pytest.fixture(scope="module")
def with_feedback(database: Database, embedder: Any, settings: Settings) -> Database:
    """A few answered, rated and corrected interactions, so the recipes see real rows."""
    fb = Feedback(database.pool, settings.feedback, LexiconTone())
    for question, answer in [
        ("How do I read a file in Python?", "Use open(path).read()."),
        ("How do I read a file in Python?", "Use pathlib.Path(path).read_text()."),
    ]:
        embedding = embedder.embed_one(question)
        with database.pool.connection() as conn, conn.transaction():
            iid = interactions.record(
                conn,
                Interaction(
                    [{"role": "user", "content": question}], question, answer, "m", embedding
                ),
            )
            replay.admit(conn, iid, embedding, ["coding"])
    fb.apply_one(
        fb.explicit_pending(iid, event="edited", text="Use Path(path).read_text(encoding='utf-8').")
    )
    fb.apply_one(fb.explicit_pending(iid, rating=1.0, comment="thanks, perfect"))
    return database


@pytest.mark.parametrize("recipe", RECIPES, ids=[f"recipe{i}" for i in range(len(RECIPES))])
def test_recipe_runs_as_written(with_feedback: Database, recipe: str) -> None:
    done = subprocess.run(
        [str(psql_executable()), with_feedback.dsn, "-X", "-v", "ON_ERROR_STOP=1", "-c", recipe],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "ERROR" not in done.stderr
    assert re.search(r"\(\d+ rows?\)", done.stdout), done.stdout
