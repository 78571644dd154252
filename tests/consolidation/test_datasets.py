"""Chat-format JSONL datasets: validation with line numbers, all-or-nothing import, export."""

from __future__ import annotations

import json

import pytest

from consolidation import datasets
from npllm.db import Database
from npllm.errors import NotFoundError, RequestError


def _line(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


GOOD = _line(("user", "What is 2+2?"), ("assistant", "4"))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", 'expected a JSON object like {"messages": [...]}'),
        ('{"messages": []}', "'messages' must be a non-empty list"),
        ('{"prompt": "x", "messages": []}', "unknown key 'prompt' (only 'messages' is read)"),
        (_line(("bot", "hi"), ("assistant", "x")), "messages[0].role is 'bot'"),
        ('{"messages": [{"role": "user"}]}', "must have exactly 'role' and 'content'"),
        ('{"messages": [{"role": "user", "content": 3}]}', "messages[0].content must be a string"),
        (_line(("system", "be brief"), ("assistant", "ok")), "no non-empty user message"),
        (
            _line(
                ("user", "hi"),
            ),
            "the last message must be a non-empty assistant message",
        ),
        (_line(("user", "hi"), ("assistant", "  ")), "the last message must be a non-empty"),
    ],
)
def test_each_bad_line_is_named_with_its_reason(line: str, reason: str) -> None:
    data = f"{GOOD}\n\n{line}\n{GOOD}\n".encode()
    with pytest.raises(RequestError) as caught:
        datasets.parse_jsonl(data)
    message = str(caught.value)
    assert message.startswith("nothing imported: 1 bad line(s): line 3: ")
    assert reason in message


def test_many_bad_lines_are_summarised() -> None:
    data = "\n".join(["oops"] * 30).encode()
    message = str(pytest.raises(RequestError, datasets.parse_jsonl, data).value)
    assert "30 bad line(s)" in message and "line 20:" in message and "and 10 more" in message


def test_empty_and_non_utf8_files_are_refused() -> None:
    with pytest.raises(RequestError, match="the file has no examples"):
        datasets.parse_jsonl(b"\n  \n")
    with pytest.raises(RequestError, match="not UTF-8"):
        datasets.parse_jsonl(b"\xff\xfe")


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "Upper", "-x", "a.b", "x" * 64, "é"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(RequestError, match="invalid dataset name"):
        datasets.check_name(name)


def test_import_is_all_or_nothing_and_exports_in_file_order(fresh_database: Database) -> None:
    pool = fresh_database.pool
    lines = [
        _line(("system", "Answer in Portuguese."), ("user", "Olá?"), ("assistant", "Olá! 😀")),
        _line(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")),
    ]
    bad = [lines[0], "{oops", lines[1]]
    with pytest.raises(RequestError, match="line 2"):
        datasets.import_dataset(pool, "style", "\n".join(bad).encode())
    assert datasets.list_datasets(pool) == []
    result = datasets.import_dataset(pool, "style", "\n".join(lines).encode())
    assert result["examples"] == 2
    exported = "".join(datasets.to_jsonl(e) for e in datasets.dataset_examples(pool, "style"))
    assert [json.loads(x) for x in exported.splitlines()] == [json.loads(x) for x in lines]
    with pytest.raises(RequestError, match="dataset 'style' already exists"):
        datasets.import_dataset(pool, "style", "\n".join(lines).encode())
    datasets.delete_dataset(pool, "style")
    with pytest.raises(NotFoundError, match="no dataset named 'style'"):
        datasets.dataset_examples(pool, "style")
    with pytest.raises(NotFoundError):
        datasets.delete_dataset(pool, "style")
