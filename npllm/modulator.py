"""The modulator: which adapters (if any) should answer this question.

A small network over the query embedding (384 → 1024 → 1024 → slots + 1, GELU; about
1.5 M parameters) whose logits are added to a fixed prior built from each adapter's
**scope** (:class:`Scope`): a union of balls on the sphere of query embeddings, one per
key — a question the adapter was taught (or a paraphrase of one the night made), with
radius ``modulator.scope_similarity``, or the centroid of a topic it was trained on (an
imported dataset, or a description), with radius ``modulator.none_similarity``:

    inside[adapter] = max over its keys of (cos(query, key) − radius)
    logit[none]     = none_similarity / temperature
    logit[adapter]  = (none_similarity + inside[adapter]) / temperature
    p               = softmax(prior + net(query))

An adapter thus wins over "none" exactly when the question is inside one of its balls:
a correction answers its own question and the ones that mean the same, and a neighbouring
question (the same subject with another relation, the public default behind a team's
setting) is left to the bare base — what the adapter never learned, it never changes. A
topic key gives the old centroid routing unchanged (none_similarity + cos − none_similarity).
The network's last layer starts at zero, so an untrained modulator routes purely by
these scopes. Training (``modulator.train``, in the sleep cycle:
consolidation/modulator_training.py, consolidation/modulator_ppo.py) only learns the
correction, from the logged decisions and their rewards. Top-1 by
default; with ``modulator.top_k`` > 1 the best k adapters above ``min_weight`` are
blended with renormalised weights.

Trained versions live in the one version store (npllm/versions.py, kind ``modulator``;
``npllm.modulator_versions`` is a view of them) with their weights in
``<data_dir>/modulator/v<N>/modulator.safetensors``; the daemon routes with the active
one (if any) from its start, and a published one from the next request on.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from npllm.adapters import MODULATOR
from npllm.config import ModulatorConfig, Settings
from npllm.errors import AdapterError, ModelError
from npllm.scope import Scope
from npllm.versions import ANY_BASE, Registry, Version

log = logging.getLogger("npllm.modulator")

NONE = "none"
FILE = "modulator.safetensors"  # in <data_dir>/modulator/v<N>/
# Buffers that are the adapters' scopes, set by set_adapters, not the network's weights.
_ROUTING = ("keys", "key_slot", "key_radius", "avoid", "avoid_slot", "present")


@dataclass
class Decision:
    """A routing decision: every option's probability, and what is used."""

    mode: str  # modulator | pinned | disabled
    probabilities: dict[str, float] = field(default_factory=dict)
    chosen: list[tuple[str, float]] = field(default_factory=list)  # (adapter name, weight)


class Modulator(nn.Module):
    """Weights over the registered adapters plus "none" (see the module docstring)."""

    keys: torch.Tensor
    key_slot: torch.Tensor
    key_radius: torch.Tensor
    avoid: torch.Tensor
    avoid_slot: torch.Tensor
    present: torch.Tensor

    def __init__(self, config: ModulatorConfig, dim: int = 384) -> None:
        super().__init__()
        self.config = config
        slots = config.max_adapters
        self.net = nn.Sequential(
            nn.Linear(dim, config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, config.hidden),
            nn.GELU(),
        )
        self.head = nn.Linear(config.hidden, slots + 1)
        nn.init.zeros_(self.head.weight)  # untrained: the centroid prior alone decides
        nn.init.zeros_(self.head.bias)
        self.dim = dim
        self.register_buffer("keys", torch.zeros(0, dim))  # (keys, dim)
        self.register_buffer("key_slot", torch.zeros(0, dtype=torch.long))  # (keys,)
        self.register_buffer("key_radius", torch.zeros(0))  # (keys,)
        self.register_buffer("avoid", torch.zeros(0, dim))  # (neighbours, dim)
        self.register_buffer("avoid_slot", torch.zeros(0, dtype=torch.long))  # (neighbours,)
        self.register_buffer("present", torch.zeros(slots, dtype=torch.bool))  # (slots,)
        self.names: list[str | None] = [None] * slots
        self._scopes: dict[str, Scope] = {}
        self.eval()
        for param in self.parameters():
            param.requires_grad_(False)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_adapters(self, scopes: Mapping[str, Scope | np.ndarray | None]) -> None:
        """The routable adapters and their scopes (a bare vector is a topic centroid; None:
        not routable, only used when pinned). An adapter keeps its output slot while it
        stays routable (a trained network's corrections stay with their adapter); a new
        one takes the first free slot, whose trained weights are cleared."""
        given = {
            name: s if isinstance(s, Scope) else Scope.topic(s, self.config.none_similarity)
            for name, s in scopes.items()
            if s is not None and len(s if isinstance(s, np.ndarray) else s.keys)
        }
        routable = sorted(given)
        keep = {name: slot for slot, name in enumerate(self.names) if name in routable}
        if len(routable) > len(self.names):
            # Publishing keeps the population within modulator.max_adapters (npllm/adapters.py,
            # Registry.check_capacity); more can only come from lowering the cap. Those that
            # already had a slot keep it; the others are served pinned, not routed.
            wanted = len(routable)
            extra = [name for name in routable if name not in keep]
            routable = sorted([*keep, *extra[: len(self.names) - len(keep)]])
            log.warning(
                "%d routable adapters but modulator.max_adapters = %d: routing to %s only",
                wanted, len(self.names), ", ".join(routable),
            )  # fmt: skip
        self.present.zero_()
        names: list[str | None] = [n if n in keep else None for n in self.names]
        free = iter(slot for slot, name in enumerate(names) if name is None)
        keys, owners, radii, avoid, avoid_owners = [], [], [], [], []
        for name in routable:
            slot = keep[name] if name in keep else next(free)
            if name not in keep:
                self._clear_slot(slot)
            scope = given[name]
            vectors = torch.as_tensor(np.asarray(scope.keys), dtype=torch.float32)
            keys.append(vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-8))
            owners.append(torch.full((len(vectors),), slot, dtype=torch.long))
            radii.append(torch.as_tensor(np.asarray(scope.radii), dtype=torch.float32))
            if scope.avoid.size:
                others = torch.as_tensor(np.asarray(scope.avoid), dtype=torch.float32)
                avoid.append(others / others.norm(dim=1, keepdim=True).clamp_min(1e-8))
                avoid_owners.append(torch.full((len(others),), slot, dtype=torch.long))
            self.present[slot] = True
            names[slot] = name
        self.keys = torch.cat(keys) if keys else torch.zeros(0, self.dim)
        self.key_slot = torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long)
        self.key_radius = torch.cat(radii) if radii else torch.zeros(0)
        self.avoid = torch.cat(avoid) if avoid else torch.zeros(0, self.dim)
        self.avoid_slot = (
            torch.cat(avoid_owners) if avoid_owners else torch.zeros(0, dtype=torch.long)
        )
        self.names = names
        self._scopes = {name: given[name] for name in routable}

    def routable(self) -> dict[str, Scope]:
        """Name → scope of the adapters it routes to (what set_adapters was given)."""
        return dict(self._scopes)

    def inside(self, query: torch.Tensor) -> torch.Tensor:
        """(batch, slots): how far each query is inside each adapter's scope (> 0: inside;
        −inf for a slot with no adapter): within a ball of one of its keys, and nearer its
        nearest key than its nearest neighbour (npllm/scope.py)."""
        if not len(self.keys):
            return torch.full((query.shape[0], self.present.shape[0]), float("-inf"))
        sims = query @ self.keys.T  # (batch, keys)
        ball = self._per_slot(sims - self.key_radius, self.key_slot)
        nearest = self._per_slot(sims, self.key_slot)
        if len(self.avoid):
            neighbour = self._per_slot(query @ self.avoid.T, self.avoid_slot)
            known = torch.isfinite(neighbour)  # slots with neighbours (no -inf - -inf)
            ball = torch.where(known, torch.minimum(ball, nearest - neighbour), ball)
        return ball

    def _per_slot(self, values: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """(batch, slots): the largest of `values` (batch, n) over each slot's columns."""
        out = torch.full((values.shape[0], self.present.shape[0]), float("-inf"))
        return out.scatter_reduce(1, slots.expand(values.shape[0], -1), values, reduce="amax")

    @torch.no_grad()
    def _clear_slot(self, slot: int) -> None:
        self.head.weight[slot + 1].zero_()
        self.head.bias[slot + 1].zero_()

    def logits(self, query: torch.Tensor) -> torch.Tensor:
        """Logits over [none, slot 0, slot 1, ...] for (batch, dim) queries; differentiable
        in the network's parameters (training: consolidation/modulator_training.py)."""
        t, none_similarity = self.config.temperature, self.config.none_similarity
        inside = self.inside(query) + none_similarity  # (batch, slots)
        none = torch.full((query.shape[0], 1), none_similarity)  # (batch, 1)
        prior = torch.cat([none, inside], dim=1) / t  # (batch, slots + 1)
        return prior + self.head(self.net(query))

    def save(self, path: Path) -> None:
        """The network's weights and slot names, as one safetensors file."""
        from safetensors.torch import save_file

        tensors = {k: v.contiguous() for k, v in self.state_dict().items()}
        tensors = {k: v for k, v in tensors.items() if k not in _ROUTING}
        slots = json.dumps(self.names)
        save_file(tensors, str(path), metadata={"slots": slots, "hidden": str(self.config.hidden)})

    def load(self, path: Path) -> None:
        """Weights and slot names saved by `save` (call set_adapters afterwards)."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
            slots = json.loads(meta["slots"])
        except (OSError, KeyError, ValueError, SafetensorError) as exc:
            raise ModelError(
                f"cannot load the modulator from {path}: {type(exc).__name__}: {exc}"
            ) from exc
        own = {k: v for k, v in self.state_dict().items() if k not in _ROUTING}
        wrong = [k for k, v in own.items() if k not in tensors or tensors[k].shape != v.shape]
        if wrong or len(slots) != len(self.names):
            raise ModelError(
                f"cannot load the modulator from {path}: it does not fit modulator.hidden = "
                f"{self.config.hidden} and modulator.max_adapters = {len(self.names)} (trained "
                f"with hidden = {meta.get('hidden', '?')}, {len(slots)} slots)"
            )
        if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
            raise ModelError(
                f"cannot load the modulator from {path}: it holds NaN or infinite weights"
            )
        self.load_state_dict(tensors, strict=False)
        self.names = slots
        self.present.zero_()  # scopes come with set_adapters

    @torch.inference_mode()
    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """Probabilities over [none, slot 0, slot 1, ...] for (batch, dim) queries."""
        return torch.softmax(self.logits(query), dim=1)

    def decide(self, embedding: np.ndarray) -> Decision:
        """Route one query embedding."""
        probs = self(torch.as_tensor(embedding, dtype=torch.float32)[None])[0]  # (slots + 1,)
        options = {NONE: float(probs[0])}
        for slot, name in enumerate(self.names):
            if name is not None:
                options[name] = float(probs[slot + 1])
        ranked = sorted(options.items(), key=lambda kv: kv[1], reverse=True)
        decision = Decision("modulator", {k: round(v, 6) for k, v in options.items()})
        if ranked[0][0] == NONE:
            return decision
        top = [
            (name, p)
            for name, p in ranked[: self.config.top_k]
            if name != NONE and p >= self.config.min_weight
        ]
        total = sum(p for _, p in top)
        decision.chosen = [(name, round(p / total, 3)) for name, p in top]
        return decision


# Trained versions (consolidation/modulator_training.py trains them) live in the one
# version store (npllm/versions.py), kind "modulator", name MODULATOR.


@dataclass(frozen=True)
class ModulatorShape:
    """What a modulator version is, for the version store: one weights file."""

    hidden: int
    slots: int
    files: ClassVar[tuple[str, ...]] = (FILE,)
    optional: ClassVar[tuple[str, ...]] = ()

    def check(self, path: Path) -> None:
        if not (path / FILE).is_file():
            raise AdapterError(f"{path} is not a modulator version (it needs {FILE})")

    def to_dict(self) -> dict[str, object]:
        return {"hidden": self.hidden, "slots": self.slots}


def store_for(settings: Settings, pool: Any) -> Registry:
    """The modulator's versions: files under <data_dir>/modulator/v<N>/, for any base."""
    config = settings.modulator
    return Registry(
        pool,
        settings.data_path,  # <data_dir>/<MODULATOR>/v<N>/
        ModulatorShape(config.hidden, config.max_adapters),
        ANY_BASE,
        kind=MODULATOR,
        keep=settings.training.keep_versions,
    )


def store_version(
    store: Registry, mod: Modulator, metrics: dict[str, Any], cycle: int | None, reason: str | None
) -> Version:
    """Write `mod` as the next version, a candidate (refused with `reason` when given)."""
    store.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".modulator-", dir=store.root) as temp:
        mod.save(Path(temp) / FILE)
        stored = {k: v for k, v in metrics.items() if k != "version"}
        stored.update(slots=[n or "" for n in mod.names], sleep_cycle=cycle)
        version = store.add_version(MODULATOR, Path(temp), metrics=stored, check_capacity=False)
    if reason is not None:
        store.refuse(version, reason, {})
    return version


def active(store: Registry) -> Version | None:
    """The active trained version, if any (None: routing is untrained)."""
    return store.current(MODULATOR)


def weights(version: Version) -> Path:
    return version.path / FILE


def previous(store: Registry) -> Version | None:
    """What a rollback returns to: the newest kept retired version older than the active
    one (None: the untrained modulator)."""
    active = store.current(MODULATOR)
    retired = [
        v["version"]
        for a in store.listing()
        for v in a["versions"]
        if v["status"] == "retired" and (active is None or v["version"] < active.version)
    ]
    return store.version(MODULATOR, max(retired)) if retired else None


def listing(store: Registry) -> list[dict[str, Any]]:
    """Its versions, newest first, as GET /v1/modulator shows them."""
    found = store.listing()
    rows = found[0]["versions"] if found else []
    return [
        {
            "version": v["version"],
            "status": v["status"],
            "reason": v["reason"],
            "metrics": {k: m for k, m in v["metrics"].items() if k not in ("slots", "sleep_cycle")},
            "sleep_cycle": v["metrics"].get("sleep_cycle"),
            "created_at": v["created_at"],
        }
        for v in reversed(rows)
    ]


def routing(
    settings: Settings, pool: Any, centroids: Mapping[str, Scope | np.ndarray | None]
) -> tuple[Modulator, int | None]:
    """The modulator as the daemon routes: its active trained version if there is one (and
    it loads; else the untrained one, logged), over `centroids`' adapters. With the version
    it uses (None: untrained)."""
    mod = Modulator(settings.modulator)
    version = None
    found = active(store_for(settings, pool))
    if found is not None:
        try:
            mod.load(weights(found))
            version = found.version
        except ModelError:
            log.exception("modulator v%s does not load; routing untrained", found.version)
            mod = Modulator(settings.modulator)
    mod.set_adapters(centroids)
    return mod, version
