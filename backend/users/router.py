"""Users and tokens: `/users` (admins; `/users/me` for anyone), `/tokens` (your own) and
`/audit`, the trail of what users changed (admins)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from backend.audit import service as audit_service
from backend.audit.schemas import AuditEventRead, AuditPage
from backend.audit.service import record_request
from backend.deps import Offset, OptionalId, RowId, SessionDep
from backend.errors import error_responses
from backend.users import service
from backend.users.access import AdminDep, Caller, ViewerDep, check_owner, is_admin
from backend.users.models import User
from backend.users.schemas import (
    TokenCreate,
    TokenCreated,
    TokenRead,
    UserCreate,
    UserRead,
    UserUpdate,
)

users_router = APIRouter(
    prefix="/users", tags=["users"], responses=error_responses(401, 403, 422, 503)
)
tokens_router = APIRouter(
    prefix="/tokens", tags=["users"], responses=error_responses(401, 403, 422, 503)
)


@users_router.get("/me", response_model=UserRead)
def who_am_i(user: ViewerDep):
    """The user the token belongs to, with their role."""
    return user


@users_router.get("", response_model=list[UserRead])
def list_users(session: SessionDep, _: AdminDep):
    return service.list_users(session=session)


@users_router.post(
    "", response_model=UserRead, status_code=201, responses=error_responses(400, 409, 413, 415)
)
def create_user(user_in: UserCreate, request: Request, session: SessionDep, admin: AdminDep):
    """A new user; give them a token with POST /tokens {"user": name}."""
    user = service.create_user(session=session, name=user_in.name, role=user_in.role)
    detail = {"name": user.name, "role": user.role.value}
    record_request(
        request,
        session=session,
        user=admin,
        action="user.create",
        object_id=user.id,
        detail=detail,
    )
    return user


@users_router.patch(
    "/{user_id}", response_model=UserRead, responses=error_responses(400, 404, 409, 413, 415)
)
def update_user(
    user_id: RowId, changes: UserUpdate, request: Request, session: SessionDep, admin: AdminDep
):
    """Change a role, or deactivate a user (their tokens are refused from the next request)."""
    user = service.update_user(
        session=session, user_id=user_id, role=changes.role, active=changes.active
    )
    record_request(
        request,
        session=session,
        user=admin,
        action="user.update",
        object_id=user.id,
        detail=changes.model_dump(exclude_none=True, mode="json"),
    )
    return user


@tokens_router.get("", response_model=list[TokenRead])
def list_tokens(session: SessionDep, user: ViewerDep):
    """Your tokens (an admin sees everyone's); never their secrets."""
    return service.list_tokens(session=session, user_id=None if is_admin(user) else user.id)


@tokens_router.post(
    "",
    response_model=TokenCreated,
    status_code=201,
    responses=error_responses(400, 404, 413, 415),
)
def create_token(token_in: TokenCreate, request: Request, session: SessionDep, user: ViewerDep):
    """A new token for you (an admin may name another user); its secret is in this answer only."""
    holder: User | Caller = user
    if token_in.user is not None and token_in.user != user.name:
        holder = service.get_user_by_name(session=session, name=token_in.user)
        check_owner(user=user, owner=holder, what=f"a token for {holder.name}")
    expires_in = timedelta(days=token_in.expires_days) if token_in.expires_days else None
    token, secret = service.create_token(
        session=session, user=holder, name=token_in.name, expires_in=expires_in
    )
    record_request(
        request,
        session=session,
        user=user,
        action="token.create",
        object_id=token.id,
        detail={"for": holder.name, "name": token.name},
    )
    return TokenCreated(**TokenRead.model_validate(token).model_dump(), token=secret)


@tokens_router.delete("/{token_id}", response_model=TokenRead, responses=error_responses(404, 415))
def revoke_token(token_id: RowId, request: Request, session: SessionDep, user: ViewerDep):
    """Revoke a token of yours (an admin: anyone's); it is refused from the next request on."""
    token = service.get_token(session=session, token_id=token_id)
    holder = service.get_user(session=session, user_id=token.user_id)
    check_owner(user=user, owner=holder, what=f"token {token_id}")
    token = service.revoke_token(session=session, token_id=token_id)
    record_request(
        request,
        session=session,
        user=user,
        action="token.revoke",
        object_id=token.id,
        detail={"for": holder.name, "name": token.name},
    )
    return token


audit_router = APIRouter(
    prefix="/audit", tags=["audit"], responses=error_responses(401, 403, 422, 503)
)

Action = Literal[tuple(audit_service.ACTIONS)]  # type: ignore[valid-type]
ObjectType = Literal[tuple(sorted(set(audit_service.ACTIONS.values())))]  # type: ignore[valid-type]


@audit_router.get("", response_model=AuditPage)
def list_audit_events(
    session: SessionDep,
    _: AdminDep,
    user: Annotated[str | None, Query(max_length=100, description="a user's name")] = None,
    action: Action | None = None,  # type: ignore[valid-type]
    object_type: ObjectType | None = None,  # type: ignore[valid-type]
    object_id: OptionalId = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
):
    """Every state change, newest first: who (user), what (action on object), when and from
    where (client)."""
    items, total = audit_service.list_events(
        session=session,
        user=user,
        action=action,
        object_type=object_type,
        object_id=object_id,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    return AuditPage(items=[AuditEventRead.model_validate(e) for e in items], total=total)
