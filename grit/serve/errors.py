"""Errors in the OpenAI API's shape: ``{"error": {"message", "type", "param", "code"}}`` with a fitting status.

Clients (the official ``openai`` package among them) read that body to raise ``BadRequestError``,
``AuthenticationError``, ``NotFoundError`` and so on, so every failure the server sends goes through here.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from grit.serve.scheduler import Overloaded

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error a client caused or must know about; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=e.headers)


def _validation_message(e: RequestValidationError) -> tuple[str, str | None]:
    errors = e.errors()
    # A union reports one error per member; the one our own validator raised says what is wrong, a mismatch with
    # another member ("Input should be a valid string") does not.
    # An unknown field comes next: the schema forbids fields grit would otherwise ignore (grit.serve.schemas).
    first = next((x for kind in ("value_error", "extra_forbidden") for x in errors if x.get("type") == kind),
                 errors[0] if errors else {})  # fmt: skip
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    text = first.get("msg", "invalid request").removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "missing":
        return f"'{param}' is required", param
    if first.get("type") == "extra_forbidden":
        return f"unknown field '{param}': grit does not support it", param
    return (f"{param}: {text}" if param else text), param


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Make every error leave the server in OpenAI's shape (FastAPI's default is a 422 with its own body)."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(e)
        return error_response(APIError(400, message, param=param))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        type = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(APIError(e.status_code, str(e.detail), type=type))

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, e: Overloaded) -> JSONResponse:
        return error_response(APIError(503, str(e), type="overloaded_error", code="server_overloaded",
                                       headers={"Retry-After": str(retry_after_s)}))  # fmt: skip

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        log.exception("%s %s failed (request id %s)", request.method, request.url.path, request_id)
        message = f"internal error: {type(e).__name__} (request id {request_id}; the server log has the traceback)"
        return error_response(APIError(500, message, type="server_error"))
