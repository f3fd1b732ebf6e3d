"""Pure ASGI middleware: the request body cap (413), the security headers of every answer
(a Content-Security-Policy that allows this server only: the page can reach nothing else),
and the last line of defence: any exception a route lets through is a JSON 500 without a
traceback, logged once on logger ``tessera.serve``."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

__all__ = ["CSP", "INTERNAL_ERROR", "ErrorsMiddleware", "LimitsMiddleware", "log_fault"]

INTERNAL_ERROR = "internal server error (logged on the server)"
logger = logging.getLogger("tessera.serve")


def log_fault(exc: BaseException, where: str) -> None:
    """Log a server-side fault once, with its traceback (on the server, never in an answer)."""
    logger.error("%s failed: %s: %s", where, type(exc).__name__, exc, exc_info=exc)


CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]

Scope = dict[str, Any]


class LimitsMiddleware:
    """Refuse bodies over ``max_body_bytes`` with 413, from the declared Content-Length or,
    for chunked uploads, while reading (the body is buffered up to the cap, then replayed)."""

    def __init__(self, app: Any, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_HEADERS]}
            await send(message)

        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send_with_headers)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        try:
            too_big = declared is not None and int(declared) > self.max_body_bytes
        except ValueError:
            await _answer(send_with_headers, 400, "bad Content-Length header")
            return
        if too_big:
            await _answer(send_with_headers, 413, self._message(int(declared or 0)))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _answer(send_with_headers, 413, self._message(size, at_least=True))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)

    def _message(self, size: int, *, at_least: bool = False) -> str:
        more = "over " if at_least else ""
        return f"request body of {more}{size} bytes exceeds the limit of {self.max_body_bytes}"


async def _answer(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ErrorsMiddleware:
    """Any exception escaping the app becomes a JSON 500 (``{"detail": ...}``, no traceback),
    logged once here; it is not re-raised, so neither Starlette nor uvicorn logs it again.
    When the answer had already started, the fault is logged and the answer ends there."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as e:
            log_fault(e, f"{scope.get('method', '?')} {scope.get('path', '?')}")
            if not started:
                await _answer(send, 500, INTERNAL_ERROR)
                return
            with contextlib.suppress(Exception):  # end the cut answer cleanly
                await send({"type": "http.response.body", "body": b"", "more_body": False})
