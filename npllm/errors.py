"""The one exception hierarchy of npllm.

Every error a user can cause or fix is one of these; the CLI prints its message
on one line and exits non-zero, never with a traceback.

    NpllmError
    ├── ConfigError          a config value is wrong (names the key, value, what is allowed)
    ├── StorageError         the database cannot be started, reached or used
    │   └── MigrationError   a migration file failed; the database is left as it was
    ├── ModelError           a model is missing locally or cannot be loaded
    ├── AdapterError         a version (adapter, cerebellum, modulator) is missing, misnamed,
    │                        wrongly shaped or refused at publish
    ├── ConsolidationError   a sleep cycle step failed
    ├── RequestError         a request cannot be served as asked (names the parameter)
    ├── NotFoundError        a request names something that does not exist (an id, a name)
    ├── ConflictError        a request the daemon's current state does not allow (HTTP 409)
    ├── QueueFull            every generation slot is taken (HTTP 503 with Retry-After)
    ├── DaemonError          the daemon cannot start (another one runs, the socket is taken)
    └── ClientError          the CLI cannot talk to the daemon, or the daemon refused
        └── DaemonNotRunning no daemon listens on the socket (the CLI may work offline)

    CycleStopped             not an NpllmError: a KeyboardInterrupt (see its docstring)
"""

from __future__ import annotations


class NpllmError(Exception):
    """Base of every error npllm raises on purpose."""


class ConfigError(NpllmError):
    """A configuration value is invalid or a config file cannot be read."""


class StorageError(NpllmError):
    """The database cannot be started, reached, or does not have what npllm needs."""


class MigrationError(StorageError):
    """A migration failed; its transaction was rolled back."""


class ModelError(NpllmError):
    """A model is not available locally or cannot be loaded."""


class AdapterError(NpllmError):
    """A version (an adapter, the cerebellum's, the modulator's) is missing, misnamed, does
    not fit the base model, or was refused when published."""


class ConsolidationError(NpllmError):
    """A step of the sleep cycle failed."""


class RequestError(NpllmError):
    """A request is invalid or cannot fit (e.g. a prompt longer than the context)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class NotFoundError(NpllmError):
    """A request names an interaction, memory or dataset that does not exist."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ConflictError(NpllmError):
    """A request that the daemon's current configuration or state does not allow (HTTP
    409), e.g. a second sleep cycle while one runs."""


class QueueFull(NpllmError):
    """Every slot of the generation queue is taken; the API answers 503 with Retry-After."""


class DaemonError(NpllmError):
    """The daemon cannot start (another one runs, or the socket cannot be made)."""


class ClientError(NpllmError):
    """The CLI could not talk to the daemon, or the daemon answered with an error."""


class DaemonNotRunning(ClientError):
    """Nothing listens on the daemon's socket. Commands that can work on the database
    directly (publish, delete, prune, a sleep cycle) catch this one and do so."""


class CycleStopped(KeyboardInterrupt):
    """The daemon stopped the sleep cycle (it asked, or it is gone).

    Contract: raised only in the sleep worker, by its control callable
    (services/sleep_protocol.py, `worker_control`) or by its publisher when the daemon is gone —
    wherever the cycle calls them: between micro-batches, inside every block of the
    model's compute (consolidation/trainer.py, `yielding`), before publishing. It is a
    KeyboardInterrupt, not an NpllmError, on purpose: nothing that catches Exception (a
    publish refusal, a failed step) may swallow it; `consolidation.cycle.run_cycle`
    catches BaseException only to record the cycle as 'interrupted' (its checkpoints kept
    for the next cycle to resume), then re-raises; the worker's entry point exits quietly.
    """
