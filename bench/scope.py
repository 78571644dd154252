"""Benchmark: where a night's adapter answers — the routing side of generalisation and
locality, for each `modulator.scope_similarity`, without training anything.

    .venv/bin/python bench/scope.py [--split tune|report] [--out bench/results]

For each fact of bench/data/editing.json, the keys a night would give an adapter that
learned it (npllm/variants.py through the shipped rules: the question, `sleep.paraphrases`
rule paraphrases, `sleep.neighbours` rule neighbours; all facts of the split in one
adapter, as one night of corrections makes one adapter) are put in the shipped modulator
(npllm/modulator.py, npllm/scope.py), and the split's hand-written paraphrases and
neighbouring questions are routed. A paraphrase routed to the adapter can be answered by
it; a neighbour routed to it is answered by an adapter that changes the greedy answer of
nearly everything it is applied to (docs/performance.md). Reported per scope similarity:
the share of paraphrases and of neighbours routed, with and without the neighbour keys.
Prints a table and writes JSON. Seconds, not minutes: nothing is trained or generated.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from npllm import variants  # noqa: E402
from npllm.config import load_settings  # noqa: E402
from npllm.embeddings import load_embedder  # noqa: E402
from npllm.modulator import Modulator  # noqa: E402
from npllm.versions import Keys  # noqa: E402

DATA = REPO / "bench" / "data" / "editing.json"
SIMILARITIES = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=("report", "tune"), default="tune")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    settings = load_settings()
    embedder = load_embedder(settings)
    facts = json.loads(DATA.read_text())[args.split]["facts"]
    kinds, texts = [], []
    for fact in facts:
        q = fact["question"]
        ways = [q, *variants.paraphrases(q, settings.sleep.paraphrases)]
        around = variants.neighbours(q, settings.sleep.neighbours)
        kinds += ["question"] + ["paraphrase"] * (len(ways) - 1) + ["neighbour"] * len(around)
        texts += ways + around
    keys = Keys(kinds, texts, np.asarray(embedder.embed(texts)), [None] * len(texts))
    same = settings.feedback.reask_similarity  # as the night: no neighbour key that close
    taught = keys.embeddings[[k != "neighbour" for k in keys.kinds]]
    alike = (keys.embeddings @ taught.T).max(axis=1)
    keys = keys.only([k for k, kind in enumerate(keys.kinds) if kind != "neighbour"
                      or alike[k] < same])  # fmt: skip
    bare = keys.only([k for k, kind in enumerate(keys.kinds) if kind != "neighbour"])
    paraphrases = np.asarray(embedder.embed([p for f in facts for p in f["paraphrases"]]))
    neighbours = np.asarray(embedder.embed([n for f in facts for n in f["neighbours"]]))
    rows = []
    for similarity in SIMILARITIES:
        config = settings.modulator.model_copy(update={"scope_similarity": similarity})
        row: dict[str, float] = {"scope_similarity": similarity}
        for label, these in (("with neighbour keys", keys), ("without", bare)):
            router = Modulator(config)
            router.set_adapters({"night": these.scope(config)})
            row[f"paraphrases routed, {label}"] = _share(router, paraphrases)
            row[f"neighbours routed, {label}"] = _share(router, neighbours)
        rows.append(row)
    print(f"{args.split} split: {len(facts)} facts, {len(paraphrases)} paraphrases, "
          f"{len(neighbours)} neighbours; keys per fact: 1 question, "
          f"{settings.sleep.paraphrases} paraphrases, up to {settings.sleep.neighbours} "
          "neighbours")  # fmt: skip
    header = list(rows[0])
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{row[h]:.2f}" for h in header))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"scope-{args.split}.json"
    out.write_text(json.dumps({"benchmark": "scope", "split": args.split,
                               "date": time.strftime("%Y-%m-%d %H:%M"),
                               "machine": platform.machine(), "rows": rows}, indent=2))  # fmt: skip
    print(f"wrote {out}")


def _share(router: Modulator, vectors: np.ndarray) -> float:
    return float(np.mean([bool(router.decide(v).chosen) for v in vectors]))


if __name__ == "__main__":
    main()
