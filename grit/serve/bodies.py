"""What a request body must be before its schema is read: strict JSON in UTF-8, with valid Unicode strings.

Python's ``json`` module is lenient where a server must not be: it takes ``NaN`` and ``Infinity`` (not JSON; a NaN
temperature would reach the sampler), decodes a leading byte-order mark, and lets a lone UTF-16 surrogate through,
both as a ``\\ud800`` escape and as the raw bytes ``ed a0 80`` (``json.loads`` decodes bytes with
"surrogatepass"). Such a string breaks the tokenizer deep inside a request (a 500). ``StrictJSONRoute`` checks
every POST body once, before FastAPI parses it, and answers 400 naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from grit.serve.errors import bad_request
from grit.text import InvalidText, check_strings

BOM = b"\xef\xbb\xbf"


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


MAX_DEPTH = 32  # no request grit serves nests deeper than a few levels


def check_body(body: bytes) -> None:
    """Raise a 400 ``APIError`` for a body that is not strict JSON in UTF-8 with valid strings; an empty body, or
    one that is not JSON at all, is left to the schema (which says what is missing)."""
    if not body:
        return
    if body.startswith(BOM):
        raise bad_request("the request body starts with a byte order mark; send plain UTF-8 JSON")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"the request body is not valid UTF-8 (byte {e.start}: {body[e.start : e.end]!r})") from None
    try:
        parsed = json.loads(text, parse_constant=reject_constant)
    except RecursionError:
        raise bad_request(f"the request body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        if "is not a JSON value" in str(e):
            raise bad_request(f"the request body is not strict JSON: {e}") from None
        return  # malformed JSON: FastAPI's parser reports it with its position
    try:
        check_strings(parsed, max_depth=MAX_DEPTH)
    except InvalidText as e:
        raise bad_request(str(e), e.path) from None
    except ValueError as e:  # nested too deeply
        raise bad_request(f"the request body is {e}") from None


class StrictJSONRoute(APIRoute):
    """An APIRoute whose handler first checks the body with ``check_body``."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def strict(request: Request):
            if request.method == "POST":
                try:
                    body = await request.body()  # Starlette keeps it, so the route reads it again for free
                except ClientDisconnect:  # gone before its body arrived (or cut off by the request deadline)
                    return Response(status_code=400)  # nobody is there to read it; nothing to log as an error
                check_body(body)
            return await handler(request)

        return strict
