"""Domain exceptions, the error body every 4xx has, and its OpenAPI documentation.

backend.main maps each exception family to one HTTP status. Routes document the statuses they
can return with `responses=error_responses(...)`, so the OpenAPI document says what is sent.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DomainError",
    "NotFound",
    "Invalid",
    "Conflict",
    "Forbidden",
    "TooMany",
    "Unauthorized",
    "ErrorDetail",
    "ErrorResponse",
    "ValidationProblem",
    "error_responses",
]


class DomainError(Exception):
    """Base of the errors a service raises for the API to report."""

    status_code = 400
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, problems: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []

    def to_detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"message": self.message}
        if self.problems:
            detail["problems"] = self.problems
        return detail


class NotFound(DomainError):
    status_code = 404


class Invalid(DomainError):
    status_code = 422


class Conflict(DomainError):
    status_code = 409


class Forbidden(DomainError):
    status_code = 403


class Unauthorized(DomainError):
    """No token, or one that is unknown, revoked or expired."""

    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}


class TooMany(DomainError):
    """A quota is reached: the message names it and how to get below it."""

    status_code = 429


class ErrorDetail(BaseModel):
    """A refusal by the API itself: what was wrong and what would be accepted."""

    message: str
    problems: list[Any] = Field(
        default_factory=list, description="one entry per problem found, when there are several"
    )


class ValidationProblem(BaseModel):
    """One problem request validation found, as pydantic reports it (input echoed as JSON)."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """The body of every error response.

    `detail` is an object {message, problems} when the API refuses a request, and a list of
    problems when the request does not match its schema (a path, query or body field).
    """

    detail: ErrorDetail | list[ValidationProblem]


_DESCRIPTIONS = {
    400: "Bad request: the body cannot be parsed (not JSON in UTF-8, or a broken multipart form)",
    401: "Unauthorized: no token, or one that is unknown, revoked or expired; send "
    "'Authorization: Bearer <token>'",
    403: "Forbidden: your role does not allow it, or the object is another user's (the message "
    "names the owner)",
    404: "Not found: nothing has this id, or a file it needs is gone (the message says which)",
    409: "Conflict with what is stored: a name or files already registered, or a state that "
    "does not allow it yet (the message says which)",
    413: "Request body over its limit: DETLAB_MAX_JSON_BODY_BYTES for JSON (1 MB by default), "
    "DETLAB_MAX_UPLOAD_BYTES for an upload",
    415: "Unsupported media type: a body must be application/json (multipart/form-data for "
    "uploads)",
    422: "Invalid input: the message or the list of problems names each field",
    429: "A quota is reached (the message names it)",
    503: "Overloaded: too many requests in progress, or no database connection free; retry "
    "after Retry-After seconds",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries documenting these error statuses, each with ErrorResponse."""
    entries: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        if status == 503:
            entry["headers"] = {
                "Retry-After": {
                    "description": "seconds to wait before retrying (DETLAB_RETRY_AFTER_S)",
                    "schema": {"type": "integer"},
                }
            }
        entries[status] = entry
    return entries
