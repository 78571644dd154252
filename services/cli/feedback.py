"""`npllm feedback` (and `/good`, `/bad`, `/fix` in `npllm chat`): tell npllm what you
thought of an answer, and hear back in words what it will do with that."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli.context import client_of

RATED_GOOD = "Thanks — noted as a good answer; it will be reinforced at the next sleep."


def feedback(
    ctx: typer.Context,
    interaction_id: Annotated[
        int, typer.Argument(metavar="ID", help="The interaction (shown after `ask`).")
    ],
    good: Annotated[bool, typer.Option("--good", help="The answer was good (rating 1).")] = False,
    bad: Annotated[bool, typer.Option("--bad", help="The answer was bad (rating -1).")] = False,
    rating: Annotated[
        float | None, typer.Option(help="A rating from -1 (bad) to 1 (good).")
    ] = None,
    comment: Annotated[str | None, typer.Option(help="What you think, in words.")] = None,
    event: Annotated[
        str | None,
        typer.Option(help="accepted|copied|applied|edited|regenerated|rejected|abandoned"),
    ] = None,
    text: Annotated[
        str | None,
        typer.Option("--text", help="Your corrected answer, in-line (sends event 'edited')."),
    ] = None,
    edit: Annotated[
        Path | None,
        typer.Option(
            help="A file with your corrected answer, or - for stdin (sends event 'edited')."
        ),
    ] = None,
    details: Annotated[
        bool, typer.Option("--details", help="Also show reward, tier and priority.")
    ] = False,
) -> None:
    """Tell npllm what you thought of an answer; it learns from it while asleep."""
    if good and bad:
        raise typer.BadParameter("give --good or --bad, not both")
    if (good or bad) and rating is not None:
        raise typer.BadParameter("give --good/--bad or --rating, not both")
    if text is not None and edit is not None:
        raise typer.BadParameter("give the corrected answer with --text or --edit, not both")
    body: dict[str, Any] = {"interaction_id": interaction_id}
    if good or bad:
        body["rating"] = 1.0 if good else -1.0
    elif rating is not None:
        body["rating"] = rating
    if comment is not None:
        body["comment"] = comment
    corrected = text if edit is None else _read_text(edit)
    if corrected is not None:
        if event not in (None, "edited"):
            raise typer.BadParameter("a corrected answer sends event 'edited'; drop --event")
        if not corrected.strip():
            raise typer.BadParameter("the corrected answer is empty")
        body["event"], body["text"] = "edited", corrected
    elif event is not None:
        body["event"] = event
    if len(body) == 1:
        raise typer.BadParameter(
            "say something: --good, --bad, --rating, --comment, --event, --text or --edit"
        )
    result = client_of(ctx).request("POST", "/v1/feedback", json=body)
    for line in described(result, details):
        typer.echo(line)


def described(r: dict[str, Any], details: bool = False) -> list[str]:
    """What the daemon will do with the feedback whose result is `r`, in words; with
    `details`, the numbers behind it."""
    memories = r.get("memories") or {}
    added, removed = memories.get("added") or [], memories.get("removed") or []
    if r["corrected"]:
        now = f"remembered now (memory #{added[0]})" if added else "kept"
        lines = [f"Noted your correction: {now} and learned at the next sleep."]
    elif r["tier"] == "premium":
        lines = [RATED_GOOD]
    elif r["tier"] == "discard" and r["reward"] < 0:
        lines = ["Noted as a bad answer: npllm will not learn from it."]
    elif r["reward"] > 0:
        lines = ["Thanks — noted as a fair answer; only clearly good answers are learned."]
    else:
        lines = ["Noted."]
    if removed and not r["corrected"]:
        lines.append("Its memory is forgotten: it will not be recalled again.")
    if details:
        implicit = "-" if r["implicit"] is None else f"{r['implicit']:+.2f}"
        emotional = "-" if r["emotional"] is None else f"{r['emotional']:+.2f}"
        lines.append(
            f"interaction {r['interaction_id']}: reward {r['reward']:+.3f} (implicit "
            f"{implicit}, emotional {emotional}), quality {r['quality']:+.3f}, tier "
            f"{r['tier']}, priority {r['priority']:.3f}"
        )
    return lines


def _read_text(path: Path) -> str:
    """The file's text; `-` reads stdin."""
    if str(path) == "-":
        return sys.stdin.read()
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from exc
