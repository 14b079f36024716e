"""ASGI middleware: a request body size limit, and one log line per request.

Both are plain ASGI (not Starlette's BaseHTTPMiddleware), so streamed responses pass through untouched and a
client disconnect still reaches the route.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

from grit.serve.errors import error_body

log = logging.getLogger("grit.serve")


async def send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """Refuses a request whose body exceeds ``limit`` bytes (413): by its declared Content-Length before reading it,
    and a body sent without one (chunked transfer encoding) as soon as what arrived crosses the limit. A request that
    declares both is refused (400)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def refuse(self, send, size: str) -> None:
        await send_json(send, 413, error_body(f"the request body has {size} bytes; the limit is {self.limit}"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and b"transfer-encoding" in headers:
            # Which one frames the body? A proxy and this server may answer differently (request smuggling): refused.
            message = "the request has both Content-Length and Transfer-Encoding; send one"
            return await send_json(send, 400, error_body(message))
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self.refuse(send, str(int(length)))
        if length is None and b"transfer-encoding" in headers:
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client left
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.limit:
                    return await self.refuse(send, f"more than {self.limit}")
                more = message.get("more_body", False)
            receive = replay(b"".join(chunks), receive)
        await self.app(scope, receive, send)


def replay(body: bytes, receive):
    """``receive`` that first hands over the body already read, then goes on with the real one (a disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class RequestLog:
    """Gives every request an id (the ``x-request-id`` response header; a server error's log line names it too)
    and logs ``METHOD path status seconds id=...`` and what the route noted (tokens, inputs) when the response has
    been sent completely, so a streamed answer is logged with its whole duration."""

    def __init__(self, app, write: bool = True, observe=None):
        # write=False: ids only, no log lines. observe(method, path, status, seconds, noted): metrics.
        self.app, self.write, self.observe = app, write, observe

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 0}
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id

        async def logged_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:  # a return here would swallow the exception
            noted = scope.get("state", {}).get("log", {})
            seconds = time.perf_counter() - start
            if self.observe is not None:
                self.observe(scope["method"], scope["path"], status["code"], seconds, noted)
            if self.write:
                fields = " ".join(f"{k}={v}" for k, v in noted.items())
                log.info("%s %s %s %.3fs id=%s %s", scope["method"], scope["path"], status["code"] or "-", seconds,
                         request_id, fields)  # fmt: skip
