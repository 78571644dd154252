"""POST /v1/feedback: explicit feedback on one answer."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.api.deps import ServiceDep
from services.api.schemas import FeedbackApplied, documented
from services.api.spec import errors

router = APIRouter(responses=errors(404, 409, 413))


class FeedbackIn(BaseModel):
    """Explicit feedback on one answer; event, rating and comment may each come alone."""

    model_config = ConfigDict(extra="forbid", strict=True)
    interaction_id: int = Field(ge=1, description="From the completion's npllm metadata.")
    event: str | None = Field(
        None,
        description="accepted|copied|applied|edited|regenerated|rejected|abandoned",
    )
    rating: float | None = Field(None, description="-1 (bad) .. 1 (good).")
    comment: str | None = Field(None, max_length=10_000, description="Free text; its tone counts.")
    text: str | None = Field(
        None, description="With event 'edited': the corrected answer, learned instead."
    )


@router.post(
    "/v1/feedback",
    status_code=201,
    response_model=None,
    responses=documented(FeedbackApplied, 201, "Applied."),
)
async def feedback(body: FeedbackIn, service: ServiceDep) -> JSONResponse:
    result = await service.feedback(
        body.interaction_id, body.event, body.rating, body.comment, body.text
    )
    return JSONResponse(result.to_dict(), status_code=201)
