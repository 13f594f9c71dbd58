"""Who may call a route: every route declares one rule, and ownership is checked in one place.

A route takes `user: ViewerDep` (reads), `MemberDep` (creates, changes what it owns) or
`AdminDep`; a route without a user declares `dependencies=[PUBLIC]`. tests/users walks the
route table and fails on a route that declares none.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Annotated

import anyio
from anyio.lowlevel import RunVar
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.deps import LazySessionDep
from backend.errors import Forbidden, Unauthorized
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
        self, request: Request, session: LazySessionDep, credentials: Credentials
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
    """The caller holding secret: kept from an earlier request (no query, no thread, no
    connection), or looked up (backend/users/callers.py says when a kept one is still valid).

    A look-up runs in a thread of the look-ups' own (LOOKUP_THREADS), not the routes': the
    request may already hold a route's session slot, and must not wait for a second one."""
    max_age_s = get_settings().token_cache_s
    cache = callers.cache_for(session) if secret and max_age_s > 0 else None
    generation = cache.generation if cache is not None else 0  # announced later: not missed
    if cache is not None:
        kept = cache.get(service.hash_token(secret or ""), max_age_s=max_age_s)
        if kept is not None:
            return kept
    caller, expires_at = await anyio.to_thread.run_sync(
        partial(_look_up, session, secret), limiter=_lookups()
    )
    if cache is not None:
        digest = service.hash_token(secret or "")
        cache.keep(digest, caller, generation=generation, token_expires_at=expires_at)
    return caller


def _look_up(session: Session, secret: str | None) -> tuple[Caller, datetime | None]:
    """The caller and their token's expiry, the session's transaction ended (its connection
    back in the pool) whatever the answer."""
    try:
        token, user = service.authenticate_token(session=session, secret=secret)
    except Unauthorized:
        session.commit()  # it only read
        raise
    session.commit()
    return Caller.of(user), token.expires_at


LOOKUP_THREADS = 4
_LOOKUPS: RunVar[anyio.CapacityLimiter] = RunVar("detlab_token_lookups")


def _lookups() -> anyio.CapacityLimiter:
    try:
        return _LOOKUPS.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(LOOKUP_THREADS)
        _LOOKUPS.set(limiter)
        return limiter


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
