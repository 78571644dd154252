"""`python -m services.cli`: the `npllm` command."""

from services.cli.root import main

main()
