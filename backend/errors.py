"""Domain exceptions; backend.main maps each family to one HTTP status."""

from __future__ import annotations

from typing import Any

__all__ = ["DomainError", "NotFound", "Invalid", "Conflict", "Forbidden"]


class DomainError(Exception):
    """Base of the errors a service raises for the API to report."""

    status_code = 400

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
