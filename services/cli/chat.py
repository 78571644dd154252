"""`npllm chat`: a conversation with the running daemon in the terminal, like `ollama run`.

Each turn sends the whole conversation; the answer streams; Ctrl-C stops an answer and
returns to the prompt (answer.py), Ctrl-C or Ctrl-D at an empty prompt leaves. Lines
starting with / are commands (HELP); a line of three double quotes starts and ends a
message of several lines.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from npllm.errors import NpllmError
from services.cli.answer import Streamed, info_lines, notices, stream_answer
from services.cli.context import client_of, settings_of
from services.cli.feedback import described
from services.client import Client

HELP = """\
/good                 the last answer was good (learned at the next sleep)
/bad                  the last answer was bad
/fix TEXT             the last answer should have been TEXT (remembered at once)
/adapters A[,B]       answer with these adapters; none: no adapter; auto: let the modulator choose
/memory on|off        recall memories for the next answers, or not
/info                 what the last answer used: memories, adapters, routing, tokens, time
/clear                start a new conversation
/help                 this list
/bye                  leave (or Ctrl-D)
Ctrl-C stops an answer; \"\"\" starts and ends a message of several lines."""
MULTILINE = '"""'


@dataclass
class Conversation:
    """The turns so far and the options the next question is asked with."""

    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)
    adapters: list[str] | None = None  # None: the modulator chooses; []: none
    memory: bool = True
    last: Streamed | None = None

    def body(self, question: str, max_tokens: int, temperature: float) -> dict[str, Any]:
        """The chat completion request for `question` after the turns so far."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        options: dict[str, Any] = {"memory": self.memory}
        if self.adapters is not None:
            options["adapters"] = self.adapters
        return {
            "messages": [*system, *self.turns, {"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "npllm": options,
        }


def chat(
    ctx: typer.Context,
    system: Annotated[
        str | None, typer.Option("--system", help="A system message that opens the chat.")
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Longest answer, in tokens.")] = 512,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="0 = greedy.")] = 0.0,
) -> None:
    """Chat with the running daemon: the conversation is kept, answers stream, Ctrl-C
    stops one; /help lists the commands (/good, /bad, /fix, /info, ...)."""
    client = client_of(ctx)
    client.request("GET", "/v1/status")  # not running: say so before the first prompt
    history = _readline(settings_of(ctx).data_path / "chat-history")
    conversation = Conversation(system)
    typer.echo("npllm chat: /help for commands, Ctrl-D or /bye to leave", err=True)
    with _ctrl_c_heard(), contextlib.ExitStack() as stack:
        stack.callback(history)
        while True:
            line = _read_message()
            if line is None:
                return
            if not line.strip():
                continue
            if line.startswith("/") and not line.startswith(MULTILINE):
                if not _command(client, conversation, line.strip()):
                    return
                continue
            _ask(client, conversation, line, max_tokens, temperature)


@contextlib.contextmanager
def _ctrl_c_heard() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt at the prompt while the chat runs in a terminal, even
    when the chat was started with SIGINT ignored. Python keeps an ignored SIGINT ignored
    (it installs its KeyboardInterrupt handler only over the default), and a parent that
    ignores it (a test runner, a shell running jobs without job control) passes that on
    through exec: Ctrl-C then stopped answers (answer.py installs its own handler) but did
    nothing at the prompt. A chat is a person at a terminal, and Ctrl-C is how they clear
    a line or leave, so the chat hears it; the disposition it found is put back after."""
    if not sys.stdin.isatty():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _read_message() -> str | None:
    """The next message typed (several lines between \"\"\"), None to leave."""
    try:
        line = input(">>> ")
        if not line.strip().startswith(MULTILINE):
            return line
        lines = [line.strip().removeprefix(MULTILINE)]
        while not lines[-1].rstrip().endswith(MULTILINE):
            lines.append(input("... "))
        lines[-1] = lines[-1].rstrip().removesuffix(MULTILINE)
        return "\n".join(lines).strip()
    except EOFError:  # Ctrl-D
        typer.echo()
        return None
    except KeyboardInterrupt:  # Ctrl-C at the prompt
        if _typed():
            typer.echo()
            return ""
        typer.echo()
        return None


def _typed() -> bool:
    """Whether Ctrl-C came with text on the line (then it clears the line, not leaves)."""
    try:
        import readline
    except ImportError:
        return False
    return bool(readline.get_line_buffer().strip())


def _ask(
    client: Client, conversation: Conversation, question: str, max_tokens: int, temp: float
) -> None:
    try:
        got = stream_answer(client, conversation.body(question, max_tokens, temp))
    except NpllmError as exc:
        typer.echo(f"npllm: {exc}", err=True)
        return
    except KeyboardInterrupt:  # a second Ctrl-C: the answer is lost, the chat goes on
        typer.echo("\n[stopped without waiting for the answer's end]", err=True)
        return
    typer.echo()
    conversation.last = got
    if got.text:
        conversation.turns += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": got.text},
        ]
    rid = got.interaction_id
    for line in notices(got, f"/good, /bad or /fix (interaction {rid})"):
        typer.echo(line, err=True)


def _command(client: Client, conversation: Conversation, line: str) -> bool:
    """Run one /command; False to leave the chat."""
    name, _, argument = line.partition(" ")
    argument = argument.strip()
    if name in ("/bye", "/exit", "/quit"):
        return False
    if name in ("/help", "/?"):
        typer.echo(HELP)
    elif name == "/clear":
        conversation.turns, conversation.last = [], None
        typer.echo("new conversation: earlier turns are no longer sent")
    elif name == "/info":
        if conversation.last is None:
            typer.echo("no answer yet")
        else:
            for info in info_lines(conversation.last, conversation.memory):
                typer.echo(info)
    elif name == "/memory":
        if argument not in ("on", "off"):
            typer.echo("usage: /memory on|off")
        else:
            conversation.memory = argument == "on"
            typer.echo(f"memories {'are' if conversation.memory else 'are not'} recalled")
    elif name == "/adapters":
        _adapters(client, conversation, argument)
    elif name in ("/good", "/bad", "/fix"):
        _rate(client, conversation, name, argument)
    else:
        typer.echo(f"unknown command {name}; /help lists the commands")
    return True


def _adapters(client: Client, conversation: Conversation, argument: str) -> None:
    if argument == "auto":
        conversation.adapters = None
        typer.echo("the modulator chooses the adapters again")
        return
    if argument == "none":
        conversation.adapters = []
        typer.echo("answering without adapters")
        return
    names = [n.strip() for n in argument.split(",") if n.strip()]
    if not names:
        now = conversation.adapters
        shown = "auto (the modulator chooses)" if now is None else ", ".join(now) or "none"
        typer.echo(f"adapters: {shown}; usage: /adapters NAME[,NAME]|none|auto")
        return
    try:
        served = client.request("GET", "/v1/adapters")["served"]
    except NpllmError as exc:
        typer.echo(f"npllm: {exc}", err=True)
        return
    unknown = [n for n in names if n not in served]
    if unknown:
        offer = ", ".join(sorted(served)) or "none"
        typer.echo(f"not served: {', '.join(unknown)} (served: {offer}); adapters unchanged")
        return
    conversation.adapters = names
    typer.echo(f"answering with {', '.join(f'{n} v{served[n]}' for n in names)}")


def _rate(client: Client, conversation: Conversation, name: str, argument: str) -> None:
    last = conversation.last
    if last is None or last.interaction_id is None:
        typer.echo("no answer to rate yet")
        return
    body: dict[str, Any] = {"interaction_id": last.interaction_id}
    if name == "/fix":
        if not argument:
            typer.echo("usage: /fix THE CORRECTED ANSWER")
            return
        body.update(event="edited", text=argument)
    else:
        body["rating"] = 1.0 if name == "/good" else -1.0
    try:
        result = client.request("POST", "/v1/feedback", json=body)
    except NpllmError as exc:
        typer.echo(f"npllm: {exc}", err=True)
        return
    if name == "/fix" and conversation.turns and conversation.turns[-1]["role"] == "assistant":
        conversation.turns[-1] = {"role": "assistant", "content": argument}
    for line in described(result):
        typer.echo(line)


def _readline(path: Path) -> Any:
    """Line editing and a history kept in `path`, when readline is there; the function
    that saves the history."""
    try:
        import readline
    except ImportError:
        return lambda: None
    with contextlib.suppress(OSError):  # no history yet
        readline.read_history_file(path)
    readline.set_history_length(1000)

    def save() -> None:
        with contextlib.suppress(OSError):  # a convenience: never fail the chat over it
            readline.write_history_file(path)

    return save
