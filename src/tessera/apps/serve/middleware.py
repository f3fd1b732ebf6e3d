"""Pure ASGI middleware: the request body cap (413) and the security headers of every answer
(a Content-Security-Policy that allows this server only: the page can reach nothing else)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["CSP", "LimitsMiddleware"]

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
