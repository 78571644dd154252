"""The `npllm` command (services/cli/root.py), its groups one module each."""

from services.cli.root import app, main

__all__ = ["app", "main"]
