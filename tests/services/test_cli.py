"""The `npllm` command against the real parts: help, migrate, doctor, psql, key, and
ask, feedback, memories list, list, ps and adapter show against the session daemon."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

from npllm.db import Database

from ..conftest import NPLLM, REPO, LiveDaemon, ask_ok, cli_env, make_settings


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NPLLM, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_help_lists_the_commands(tmp_path: Path) -> None:
    proc = _run(["--help"], cli_env(tmp_path))
    assert proc.returncode == 0
    for command in ("migrate", "doctor", "psql"):
        assert command in proc.stdout


def test_migrate_then_psql_reads_the_tables(database: Database) -> None:
    env = cli_env(database.settings.data_path)
    proc = _run(["migrate"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "database is up to date; nothing to apply"
    proc = _run(["psql", "-At", "-c", "SELECT name FROM npllm.schema_migrations"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "001_init.sql"


def test_psql_passes_psql_errors_through(database: Database) -> None:
    env = cli_env(database.settings.data_path)
    proc = _run(["psql", "-v", "ON_ERROR_STOP=1", "-c", "SELECT * FROM npllm.nope"], env)
    assert proc.returncode != 0
    assert 'relation "npllm.nope" does not exist' in proc.stderr


def test_doctor_is_all_green_with_the_real_parts(database: Database) -> None:
    proc = _run(["doctor"], cli_env(database.settings.data_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "embedded postgresql://" in out
    assert "PostgreSQL 18" in out and "pgvector 0.8" in out
    assert "SmolLM2-135M-Instruct" in out and "frozen" in out
    assert "engine       ok   llama.cpp 2026." in out and "AVX2 yes" in out
    assert "(384-dim)" in out
    assert out.strip().endswith("all green")


def test_doctor_fails_with_the_reason_when_a_model_is_missing(database: Database) -> None:
    env = cli_env(database.settings.data_path, NPLLM_MODELS__BASE="package:not_a_model_pkg")
    proc = _run(["doctor"], env)
    assert proc.returncode == 1
    assert "engine       FAIL models.base = 'package:not_a_model_pkg'" in proc.stdout
    assert "base model   FAIL models.base = 'package:not_a_model_pkg'" in proc.stdout
    assert "not ready: engine, base model failed" in proc.stdout


def test_migrate_on_a_new_data_dir_starts_and_stops_its_own_server(tmp_path: Path) -> None:
    proc = _run(["migrate"], cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    every = sorted(p.name for p in (REPO / "sql").glob("*.sql"))
    assert proc.stdout.strip() == f"applied {len(every)} migration(s): {', '.join(every)}"
    # The command started the embedded server, so it stopped it on the way out.
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists()


# ---- what `ollama run` users expect: help, key, ask, feedback, list, ps, show ---------------


def _ask(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NPLLM, "ask", *args],
        env=env,
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _conversations(daemon: LiveDaemon) -> list[list[dict[str, str]]]:
    """Every answered conversation the daemon recorded (each with its answer last)."""
    tiers = {"tier": ["premium", "standard", "discard"]}
    text = daemon.http().get("/v1/replay/examples", params=tiers).text
    return [json.loads(line)["messages"] for line in text.splitlines()]


def test_flags_show_no_type_in_help(tmp_path: Path) -> None:
    proc = _run(["feedback", "--help"], cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "<bool>" not in proc.stdout
    flags = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert {"--good", "--bad", "--details", "--help"} <= flags
    assert re.search(r"^\s+--good\s+The answer was good", proc.stdout, re.MULTILINE)
    assert re.search(r"^\s+--rating <float>", proc.stdout, re.MULTILINE)  # values keep theirs


def test_key_is_made_once_rotated_on_demand_and_needs_no_daemon(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    first = _run(["key"], env)
    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    assert key.startswith("npllm-") and len(key) > 30
    assert "Authorization: Bearer <key>" in first.stderr
    assert stat.S_IMODE((tmp_path / "api-key").stat().st_mode) == 0o600
    assert _run(["key"], env).stdout.strip() == key  # the same key until rotated
    rotated = _run(["key", "--rotate"], env)
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.strip() not in ("", key)
    assert "the old one no longer works" in rotated.stderr
    assert _run(["key"], env).stdout.strip() == rotated.stdout.strip()


def test_ask_takes_piped_context_and_says_when_the_answer_was_cut(daemon: LiveDaemon) -> None:
    env = cli_env(daemon.data_dir)
    piped = "def zylophant(a, b):\n    return a * b\n"
    asked = _ask(env, "What does zylophant do?", "--max-tokens", "4", stdin=piped)
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip()
    assert "[cut at 4 tokens: raise --max-tokens]" in asked.stderr
    assert re.search(r"\[interaction \d+; adapters: none; memories: .*; \d+ ms\]", asked.stderr)
    sent = [c for c in _conversations(daemon) if "zylophant" in c[0]["content"]]
    assert sent[-1][0]["content"] == piped.rstrip() + "\n\nWhat does zylophant do?"
    whole = _ask(env, "-", "--max-tokens", "2", stdin="Name a colour.\nOne word, please.")
    assert whole.returncode == 0, whole.stderr
    questions = [c[0]["content"] for c in _conversations(daemon)]
    assert "Name a colour.\nOne word, please." in questions


def test_ask_refuses_an_empty_question(daemon: LiveDaemon) -> None:
    env = cli_env(daemon.data_dir)
    empty = _ask(env, "-", stdin="  \n")
    assert empty.returncode == 2
    assert "stdin is empty: `npllm ask -` reads the question from it" in empty.stderr
    blank = _ask(env, "  ")
    assert blank.returncode == 2
    assert "the question is empty" in blank.stderr


def test_feedback_speaks_plainly_and_takes_a_correction_inline_or_from_stdin(
    daemon: LiveDaemon,
) -> None:
    env = cli_env(daemon.data_dir)
    http = daemon.http()
    iid = ask_ok(http, "Which harbour does the ferry Wendlemoor leave from?", max_tokens=4)[
        "npllm"
    ]["interaction_id"]
    good = _run(["feedback", str(iid), "--good"], env)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == (
        "Thanks — noted as a good answer; it will be reinforced at the next sleep."
    )
    assert "reward" not in good.stdout
    fixed = _run(["feedback", str(iid), "--text", "It leaves from Portmarrow."], env)
    assert fixed.returncode == 0, fixed.stderr
    memory = re.search(
        r"remembered now \(memory #(\d+)\) and learned at the next sleep", fixed.stdout
    )
    assert memory, fixed.stdout
    recent = _run(["memories", "list", "--kind", "fact", "--limit", "1"], env)
    assert recent.stdout.startswith(f"#{memory[1]} ")
    assert "Portmarrow" in recent.stdout
    piped = subprocess.run(
        [*NPLLM, "feedback", str(iid), "--edit", "-", "--details"],
        env=env, cwd=REPO, input="It leaves from Portmarrow, pier 2.", capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert "Noted your correction" in piped.stdout
    assert re.search(r"reward [+-]\d\.\d+ .*tier \w+, priority \d", piped.stdout)
    both = _run(["feedback", str(iid), "--text", "x", "--edit", "-"], env)
    assert both.returncode == 2
    assert "give the corrected answer with --text or --edit, not both" in both.stderr
    empty = _run(["feedback", str(iid), "--text", "  "], env)
    assert empty.returncode == 2
    assert "the corrected answer is empty" in empty.stderr


def test_memories_list_is_newest_first_and_checks_its_options(daemon: LiveDaemon) -> None:
    env = cli_env(daemon.data_dir)
    for text in ("The Brastow kiln fires at 1280 C.", "The Brastow kiln is cleaned on Fridays."):
        assert _run(["remember", text], env).returncode == 0
    listed = _run(["memories", "list", "--kind", "note", "--limit", "2"], env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2
    assert "cleaned on Fridays" in lines[0] and "1280 C" in lines[1]
    assert all("[note]" in line for line in lines)
    # an exchange memory that decayed (memory.decay_days) is listed as no longer recalled
    with daemon.http() as http:
        ask_ok(http, "Which day is the Brastow kiln cleaned on?")
    sql = ("UPDATE npllm.memories SET decayed_at = '2026-03-04' WHERE id = "
           "(SELECT max(id) FROM npllm.memories WHERE kind = 'exchange') RETURNING id")  # fmt: skip
    decayed = _run(["psql", "-At", "-c", sql], env)
    assert decayed.returncode == 0, decayed.stderr
    exchange = _run(["memories", "list", "--kind", "exchange", "--limit", "1"], env).stdout
    assert exchange.startswith(f"#{decayed.stdout.split()[0]} ")
    assert "[exchange] (decayed 2026-03-04: no longer recalled)" in exchange
    assert "(decayed" not in listed.stdout
    bad = _run(["memories", "list", "--kind", "poem"], env)
    assert bad.returncode == 2
    assert "'poem' is not one of 'note', 'fact', 'document', 'exchange'" in bad.stderr
    assert _run(["memories", "list", "--limit", "0"], env).returncode == 2


def test_adapter_show_list_and_ps(daemon: LiveDaemon) -> None:
    """An adapter's history as the sleep cycle records it (rows written here: training a
    real one is tests/e2e's job), shown by `adapter show` and `list`."""
    env = cli_env(daemon.data_dir)
    http = daemon.http()
    question = "What colour is the Quimbly lantern?"
    iid = ask_ok(http, question, max_tokens=2)["npllm"]["interaction_id"]
    http.post("/v1/feedback", json={"interaction_id": iid, "event": "edited", "text": "Teal."})
    db = Database(make_settings(daemon.data_dir))
    db.open(migrate=False)
    try:
        with db.pool.connection() as conn:
            params = {"iid": iid, "question": question}
            for statement in _SHOWN_ADAPTER:
                conn.execute(statement, params if "%(" in statement else None)
        shown = _run(["adapter", "show", "cli-shown"], env)
        listed = _run(["list"], env)
    finally:
        with db.pool.connection() as conn:
            conn.execute("DELETE FROM npllm.adapters WHERE name = 'cli-shown'")
            conn.execute("DELETE FROM npllm.training_runs WHERE adapter = 'cli-shown'")
        db.close()
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "description  lanterns of the Quimbly fleet" in out
    assert "tags         lanterns, fleet" in out
    assert "status       active, not served" in out
    assert "v1  retired: replaced by a newer version;" in out and "sleep cycle" not in out
    assert "metrics: 1 sample(s); 8 of 8 steps; validation loss 2.0000 -> 1.0000; published" in out
    assert f"#{iid} (your correction): {question}" in out
    assert "v2  candidate: refused by the gate" in out
    assert re.search(r"^cli-shown\s+adapter\s+no\s+2\s+\d{4}-", listed.stdout, re.MULTILINE)
    assert re.search(r"^SmolLM2-135M-Instruct\S*\s+base\s+yes", listed.stdout, re.MULTILINE)
    missing = _run(["adapter", "show", "no-such-adapter"], env)
    assert missing.returncode == 1
    assert "no adapter named 'no-such-adapter'" in missing.stderr
    ps = _run(["ps"], env)
    assert ps.returncode == 0, ps.stderr
    assert re.search(r"^engine\s+llama\.cpp .*threads", ps.stdout, re.MULTILINE)
    assert re.search(r"^queue\s+\d+ running, \d+ waiting", ps.stdout, re.MULTILINE)
    assert re.search(r"^state\s+awake", ps.stdout, re.MULTILINE)


# One statement each: psycopg sends parameters with one statement only.
_SHOWN_ADAPTER = (
    """INSERT INTO npllm.adapters (name, description, tags, base_model, base_fingerprint, shape)
    VALUES ('cli-shown', 'lanterns of the Quimbly fleet', '{lanterns,fleet}', 'm', 'other',
            '{}')""",
    """INSERT INTO npllm.model_versions (adapter, version, artifact_path, base_fingerprint,
                                      metrics, status, status_reason)
    VALUES ('cli-shown', 1, '/nowhere/v1', 'other',
            '{"samples": 1, "steps": 8, "steps_done": 8, "verdict": "published",
              "validation_loss": {"before": 2.0, "after": 1.0}}', 'retired',
            'replaced by a newer version'),
           ('cli-shown', 2, '/nowhere/v2', 'other', '{}', 'candidate', 'refused by the gate')""",
    """INSERT INTO npllm.routing_keys (adapter, version, kind, text, embedding, interaction_id)
    VALUES ('cli-shown', 1, 'question', %(question)s, array_fill(0.1, ARRAY[384])::vector,
            %(iid)s)""",
    """INSERT INTO npllm.training_runs (kind, adapter, version, status, examples, steps)
    VALUES ('adapter', 'cli-shown', 1, 'succeeded', 1, 8)""",
)
