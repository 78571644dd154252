"""npllm/text.py and the sampling floors: what the database and the engines cannot take is
refused naming the field, or mapped by the documented rule."""

from __future__ import annotations

import math
import re

import pytest

from npllm.errors import RequestError
from npllm.generation import TEMPERATURE_FLOOR, TOP_P_FLOOR, GenerationParams
from npllm.text import check_storable, shown, storable, text_problem, unstorable


def test_text_the_database_can_store_passes_unchanged() -> None:
    for text in ("", "plain", "ção 日本 😀", "a\u2028b", "NaN"):
        assert text_problem(text) is None
        assert check_storable(text, "x") == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [("\u0000", "NUL character (U+0000)"), ("a\ud800", "lone surrogate"), ("\udfff", "lone")],
)
def test_a_nul_or_a_lone_surrogate_is_refused_naming_the_field(text: str, problem: str) -> None:
    with pytest.raises(
        RequestError, match=f"messages.0.content contains .*{re.escape(problem)}"
    ) as err:
        check_storable(text, "messages.0.content")
    assert err.value.param == "messages.0.content"


def test_the_first_unstorable_place_of_a_json_value_is_named() -> None:
    assert unstorable({"a": [1, "ok", {"b": 2.5}]}) is None
    assert unstorable({"a": [1, "ok", {"b": "x\u0000"}]}) == (
        "a.2.b",
        "contains the NUL character (U+0000), which PostgreSQL cannot store",
    )
    assert unstorable({"m": {"k\u0000": 1}})[0] == "m.k\\u0000"  # type: ignore[index]
    assert unstorable([math.nan]) == ("0", "must be a finite number")
    assert unstorable({"x": -math.inf}) == ("x", "must be a finite number")


def test_unstorable_text_is_escaped_when_shown_and_dropped_from_generated_text() -> None:
    assert shown("a\u0000b\ud800") == "a\\u0000b\\ud800"
    assert storable("yes\u0000") == "yes" and storable("yes") == "yes"


def test_below_the_floors_sampling_is_greedy_and_the_nucleus_one_token() -> None:
    assert GenerationParams(temperature=5e-324, top_p=5e-324).temperature == 0.0
    assert GenerationParams(temperature=TEMPERATURE_FLOOR / 2).temperature == 0.0
    assert GenerationParams(temperature=TEMPERATURE_FLOOR).temperature == TEMPERATURE_FLOOR
    assert GenerationParams(temperature=0.7, top_p=1e-300).top_p == TOP_P_FLOOR
    assert GenerationParams(temperature=0.7, top_p=0.9).top_p == 0.9


@pytest.mark.parametrize("name", ["temperature", "top_p", "frequency_penalty", "presence_penalty"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_sampling_parameters_are_refused(name: str, value: float) -> None:
    with pytest.raises(RequestError, match=f"{name} must be a finite number") as err:
        GenerationParams(**{name: value})
    assert err.value.param == name
