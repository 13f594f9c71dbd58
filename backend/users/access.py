"""Who may call a route: every route declares one rule, and ownership is checked in one place.

A route takes `user: ViewerDep` (reads), `MemberDep` (creates, changes what it owns) or
`AdminDep`; a route without a user declares `dependencies=[PUBLIC]`. tests/users walks the
route table and fails on a route that declares none.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from backend.config import get_settings
from backend.deps import SessionDep
from backend.errors import Forbidden
from backend.users import callers, service
from backend.users.callers import Caller
from backend.users.models import Role, User

__all__ = [
    "AdminDep",
    "MemberDep",
    "PUBLIC",
    "Require",
    "Caller",
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

    async def __call__(
        self, request: Request, session: SessionDep, credentials: Credentials
    ) -> Caller:
        secret = credentials.credentials if credentials else None
        caller = await _caller(session, secret)
        assert self.role is not None  # PUBLIC is never called with a user
        if caller.role.rank < self.role.rank:
            raise Forbidden(
                f"{caller.name} is a {caller.role.value}; this needs the {self.role.value} role "
                "or above; ask an admin"
            )
        # read by the response filter that hides server paths from non-admins
        request.state.user_role = caller.role
        return caller


async def _caller(session: Session, secret: str | None) -> Caller:
    """The caller holding secret: kept from an earlier request (no query, no thread), or looked
    up in a route thread (backend/users/callers.py says when a kept one is still valid)."""
    max_age_s = get_settings().token_cache_s
    cache = callers.cache_for(session) if secret and max_age_s > 0 else None
    if cache is None:
        user = await run_in_threadpool(service.authenticate, session=session, secret=secret)
        return Caller.of(user)
    digest = service.hash_token(secret or "")
    kept = cache.get(digest, max_age_s=max_age_s)
    if kept is not None:
        return kept
    generation = cache.generation  # a change announced from here on is not missed
    token, user = await run_in_threadpool(
        service.authenticate_token, session=session, secret=secret
    )
    caller = Caller.of(user)
    cache.keep(digest, caller, generation=generation, token_expires_at=token.expires_at)
    return caller


def _public() -> None:
    """A route anyone may call without a token (the health check)."""


_public.detlab_public = True  # type: ignore[attr-defined]
PUBLIC = Depends(_public)
ViewerDep = Annotated[Caller, Depends(Require(Role.viewer))]
MemberDep = Annotated[Caller, Depends(Require(Role.member))]
AdminDep = Annotated[Caller, Depends(Require(Role.admin))]


def is_admin(user: Caller) -> bool:
    return user.role == Role.admin


def check_owner(*, user: Caller, owner: User | Caller | None, what: str) -> None:
    """Members change only what they own; admins change anything."""
    if is_admin(user) or (owner is not None and owner.id == user.id):
        return
    whose = f"belongs to {owner.name}" if owner is not None else "has no owner (made before users)"
    raise Forbidden(f"{what} {whose}; only its owner or an admin may change it")
