"""Request body limits: a body too big is a 413 before anything parses it.

Every body the API takes is JSON, but for multipart uploads. A JSON body (any body that is not
multipart) may be DETLAB_MAX_JSON_BODY_BYTES: a declared Content-Length over that is refused
without reading a byte, a chunked body is counted as it arrives and refused as soon as it passes
the limit, and a body within it is handed on whole. A multipart body streams on, unread here, up
to DETLAB_MAX_UPLOAD_BYTES plus DETLAB_MAX_JSON_BODY_BYTES for the form's other fields; the
route that takes the upload checks the file itself.
"""

from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.config import get_settings

__all__ = ["BodyTooLarge", "RefuseNul", "RequestBodyLimit", "send_error"]


class BodyTooLarge(HTTPException):
    """A body over its limit; the message names the limit and the setting."""

    def __init__(self, *, size: str, limit: int, setting: str) -> None:
        super().__init__(
            413,
            f"the request body is {size} bytes, over the limit of {limit} bytes ({setting}); "
            "send a smaller body",
        )


class RequestBodyLimit:
    """Pure ASGI middleware that refuses request bodies over their limit with 413."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()  # per request: the settings in force (tests change them)
        upload = _header(scope, b"content-type").startswith(b"multipart/")
        if upload:
            limit = settings.max_upload_bytes + settings.max_json_body_bytes
            setting = "DETLAB_MAX_UPLOAD_BYTES"
        else:
            limit, setting = settings.max_json_body_bytes, "DETLAB_MAX_JSON_BODY_BYTES"
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            refusal = BodyTooLarge(size=declared.decode(), limit=limit, setting=setting)
            await _refuse(send, refusal)
            return
        if upload:
            await self.app(scope, _counting(receive, limit=limit, setting=setting), send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                size = f"at least {received}"
                await _refuse(send, BodyTooLarge(size=size, limit=limit, setting=setting))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the whole body once, then waits on the client (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _counting(receive: Receive, *, limit: int, setting: str) -> Receive:
    """A receive that raises BodyTooLarge once the body passes limit; the app's exception
    handling answers it (the body's parser, and the route, stop there)."""
    received = 0

    async def counting() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(size=f"at least {received}", limit=limit, setting=setting)
        return message

    return counting


async def send_error(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer with the API's error body, {"detail": {"message": ...}}, from ASGI middleware."""
    body = json.dumps({"detail": {"message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _refuse(send: Send, refusal: BodyTooLarge) -> None:
    # the rest of the body is never read, so the connection cannot be reused
    await send_error(send, 413, str(refusal.detail), [(b"connection", b"close")])


class RefuseNul:
    """Pure ASGI middleware: a NUL byte in the path or the query is a 422 (the database cannot
    store one, and no name or value needs one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = unquote_to_bytes(scope.get("query_string", b""))
            if "\x00" in scope["path"] or b"\x00" in query:
                message = "the request's path or query contains a NUL byte; remove it"
                await send_error(send, 422, message)
                return
        await self.app(scope, receive, send)
