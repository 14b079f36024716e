"""How ``grit serve`` holds connections: uvicorn, with a deadline for each request to arrive whole.

uvicorn closes a keep-alive connection that stays idle after a response (``timeout_keep_alive``) and answers 503
past ``limit_concurrency`` connections, but it waits forever for a request that has not arrived: a client that opens
a socket and stays silent, sends half its headers, or a body shorter than its Content-Length holds a connection
(and, once the app has started, a worker) indefinitely. ``deadline_protocol`` adds one timer to uvicorn's own h11
protocol: armed when a connection opens and when the next request's first byte arrives, disarmed once that request
(headers and body) is complete; when it fires the connection is closed, and a route waiting for the rest of a body
hears a disconnect. Nothing else of the HTTP handling changes.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from grit.serve.config import ServeConfig

log = logging.getLogger("grit.serve")


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; a request must arrive whole within ``request_timeout`` seconds."""

    request_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_after = None  # the cycle that was current when the timer was armed
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.cycle is not None and self.cycle is not self._waiting_after and not self.cycle.more_body:
            self._disarm()  # the request is complete; from here the route's own limits apply

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_after = self.cycle
        self._deadline = self.loop.call_later(self.request_timeout, self._expired)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.warning("closing the connection of %s: no whole request within %g s", client, self.request_timeout)
            self.transport.close()


def deadline_protocol(request_timeout: float) -> type[DeadlineH11Protocol]:
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,), {"request_timeout": request_timeout})


def uvicorn_config(app, config: ServeConfig, *, port: int | None = None, log_level: str = "info") -> uvicorn.Config:
    """The uvicorn settings ``grit serve`` runs with (the tests run their servers with the same)."""
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port if port is None else port,
        http=deadline_protocol(config.request_timeout_s),
        timeout_keep_alive=config.keep_alive_s,
        limit_concurrency=config.max_connections,
        log_level=log_level,
        access_log=False,
    )
