"""The one exception hierarchy of npllm.

Every error a user can cause or fix is one of these; the CLI prints its message
on one line and exits non-zero, never with a traceback.

    NpllmError
    ├── ConfigError          a config value is wrong (names the key, value, what is allowed)
    ├── StorageError         the database cannot be started, reached or used
    │   └── MigrationError   a migration file failed; the database is left as it was
    ├── ModelError           a model is missing locally or cannot be loaded
    ├── AdapterError         an adapter is missing, misnamed or wrongly shaped
    ├── ConsolidationError   a sleep cycle step failed
    ├── RequestError         a request cannot be served as asked (names the parameter)
    ├── NotFoundError        a request names something that does not exist (an id, a name)
    ├── ConflictError        a request the daemon's current state does not allow (HTTP 409)
    └── ClientError          the CLI cannot talk to the daemon, or the daemon refused
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
    """An adapter is missing, misnamed or does not fit the base model."""


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


class ClientError(NpllmError):
    """The CLI could not talk to the daemon, or the daemon answered with an error."""
