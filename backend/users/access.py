"""Who may call a route: every route declares one rule, and ownership is checked in one place.

A route takes `user: ViewerDep` (reads), `MemberDep` (creates, changes what it owns) or
`AdminDep`; a route without a user declares `dependencies=[PUBLIC]`. tests/users walks the
route table and fails on a route that declares none.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from backend.deps import SessionDep
from backend.errors import Forbidden
from backend.users import service
from backend.users.models import Role, User

__all__ = [
    "AdminDep",
    "MemberDep",
    "PUBLIC",
    "Require",
    "ViewerDep",
    "check_owner",
    "is_admin",
]

bearer = HTTPBearer(
    auto_error=False,
    description="An API token: `detlab-admin create-token USER`, or POST /tokens",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


class Require:
    """The dependency of one access rule: the calling user, with at least `role`."""

    def __init__(self, role: Role | None) -> None:
        self.role = role

    def __repr__(self) -> str:
        return f"Require({self.role.value if self.role else 'public'})"

    def __call__(self, request: Request, session: SessionDep, credentials: Credentials) -> User:
        user = service.authenticate(
            session=session, secret=credentials.credentials if credentials else None
        )
        assert self.role is not None  # PUBLIC is never called with a user
        if user.role.rank < self.role.rank:
            raise Forbidden(
                f"{user.name} is a {user.role.value}; this needs the {self.role.value} role "
                "or above; ask an admin"
            )
        # read by the response filter that hides server paths from non-admins
        request.state.user_role = user.role
        return user


def _public() -> None:
    """A route anyone may call without a token (the health check)."""


_public.detlab_public = True  # type: ignore[attr-defined]
PUBLIC = Depends(_public)
ViewerDep = Annotated[User, Depends(Require(Role.viewer))]
MemberDep = Annotated[User, Depends(Require(Role.member))]
AdminDep = Annotated[User, Depends(Require(Role.admin))]


def is_admin(user: User) -> bool:
    return user.role == Role.admin


def check_owner(*, user: User, owner: User | None, what: str) -> None:
    """Members change only what they own; admins change anything."""
    if is_admin(user) or (owner is not None and owner.id == user.id):
        return
    whose = f"belongs to {owner.name}" if owner is not None else "has no owner (made before users)"
    raise Forbidden(f"{what} {whose}; only its owner or an admin may change it")
