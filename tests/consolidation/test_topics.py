"""Which adapter a night's samples join (consolidation/topics.py): the modulator decides
first, a new topic needs support, the rest join the nearest adapter, within the cap."""

from __future__ import annotations

import numpy as np

from consolidation.topics import assign, topic_name
from npllm.config import ModulatorConfig
from npllm.modulator import Modulator
from npllm.replay import ReplayItem

RNG = np.random.default_rng(0)


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v / np.linalg.norm(v), np.float32)


def _near(centre: np.ndarray, noise: float = 0.3) -> np.ndarray:
    return _unit(centre + noise * RNG.normal(size=centre.shape) / np.sqrt(centre.size))


def _item(k: int, question: str, tags: list[str] | None = None) -> ReplayItem:
    return ReplayItem(k, [{"role": "user", "content": question}], question, "a", "fixed", 1.0,
                      1.0, "premium", tags or [], 1.0, 0)  # fmt: skip


def _router(centroids: dict[str, np.ndarray]) -> Modulator:
    router = Modulator(ModulatorConfig(hidden=16))
    router.set_adapters(centroids)
    return router


def test_samples_go_where_the_modulator_routes_and_a_supported_topic_starts_an_adapter() -> None:
    sql, hexwing, lone = (_unit(RNG.normal(size=384)) for _ in range(3))
    items = [_item(1, "How do I join two tables in SQL?")]
    vectors = [_near(sql)]
    questions = ["What port does the Hexwing broker use?", "Who maintains the Hexwing broker?",
                 "What language is the Hexwing broker written in?"]  # fmt: skip
    items += [_item(2 + k, q, ["architecture"]) for k, q in enumerate(questions)]
    vectors += [_near(hexwing) for _ in questions]
    items.append(_item(9, "What is the capital of Peru?"))
    vectors.append(_near(lone))
    topics, _ = assign(items, np.stack(vectors), _router({"sqlbot": sql}), {"sqlbot": sql},
                    cap=5, population=1, min_support=3, similarity=0.35,
                    taken={"sqlbot"})  # fmt: skip
    assert set(topics) == {"sqlbot", "architecture-hexwing-broker"}
    assert [i.interaction_id for i in topics["sqlbot"].items] == [1, 9]  # 9: nearest
    assert topics["sqlbot"].why == "routed by the modulator"
    new = topics["architecture-hexwing-broker"]
    assert new.new and [i.interaction_id for i in new.items] == [2, 3, 4]
    assert new.why == "new topic: 3 samples alike"


def test_a_fresh_install_makes_one_first_adapter_of_unrelated_samples() -> None:
    items = [_item(k, q) for k, q in enumerate(["What port does Quibblix use?",
             "Who wrote Frobnar?", "What is Plimsoll's code name?"])]  # fmt: skip
    vectors = np.stack([_unit(RNG.normal(size=384)) for _ in items])
    topics, _ = assign(items, vectors, _router({}), {}, cap=2, population=0, min_support=3,
                    similarity=0.35, taken=set())  # fmt: skip
    assert len(topics) == 1  # one sample is not yet a topic
    (topic,) = topics.values()
    assert topic.new and len(topic.items) == 3 and topic.why.startswith("first adapter")


def test_at_the_cap_a_supported_topic_joins_the_nearest_adapter() -> None:
    a, b, hexwing = (_unit(RNG.normal(size=384)) for _ in range(3))
    items = [_item(k, "Hexwing broker?") for k in range(3)]
    vectors = np.stack([_near(hexwing, 0.2) for _ in items])
    centroids = {"a": a, "b": b}
    topics, _ = assign(items, vectors, _router(centroids), centroids, cap=2, population=2,
                    min_support=3, similarity=0.35, taken={"a", "b"})  # fmt: skip
    assert len(topics) == 1 and not next(iter(topics.values())).new
    assert next(iter(topics)) in centroids


def test_names_are_readable_and_unique() -> None:
    items = [_item(1, "Why does the Quibblix gateway crash on start?", ["debugging"]),
             _item(2, "The Quibblix gateway fails with a KeyError", ["debugging"])]  # fmt: skip
    assert topic_name(items, set()) == "debugging-quibblix-gateway"
    assert topic_name(items, {"debugging-quibblix-gateway"}) == "debugging-quibblix-gateway-2"
    assert topic_name([_item(3, "??")], set()) == "general"
    mixed = [_item(4, "What port does Quibblix use?", ["coding"]), _item(5, "Who wrote Frobnar?"),
             _item(6, "What is the code name of Plimsoll?", ["explanation"])]  # fmt: skip
    assert topic_name(mixed, set()) == "general"  # nothing in common


def test_samples_with_no_adapter_to_join_are_left_for_a_later_night() -> None:
    """Regression (h): at the cap, with no adapter routable (none has a centroid), samples
    that form no topic cannot join anything: they are left out of tonight's plan with the
    reason (assign used to fail on an empty list)."""
    items = [_item(k, q) for k, q in enumerate(["What port does Quibblix use?",
             "Who wrote Frobnar?"])]  # fmt: skip
    vectors = np.stack([_unit(RNG.normal(size=384)) for _ in items])
    topics, unplaced = assign(items, vectors, _router({}), {}, cap=1, population=1,
                              min_support=3, similarity=0.35, taken={"pinned-only"})  # fmt: skip
    assert topics == {}
    assert sorted(i.interaction_id for i in unplaced) == [0, 1]
