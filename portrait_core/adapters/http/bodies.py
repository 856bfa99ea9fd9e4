"""Reading request bodies: an oversized body is refused with 413 before it is held in memory, and JSON is strict.

Two checks, for every limited route: a declared `Content-Length` over the limit is refused before a byte of the
body is read, and a body without one (chunked) or lying about it is counted as it arrives and refused as soon
as the count passes the limit, so the server never holds more than the limit plus one network chunk.
`/train` reads its body itself through `limited_stream`; routes whose body FastAPI parses into a model
(`/generate`, `/workflow`) use `limited_body_route(limit)` as their route class.

JSON bodies are read by `strict_json_loads`: Python's parser takes `NaN`, `Infinity` and `1e999`, which JSON
does not have; they are refused with a 422 naming them (they used to pass into the parameters, and a
validation error that quoted them back could not be written as JSON: a 500).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from starlette.types import Message, Receive

from portrait_core.log import get_logger

log = get_logger("api")


def body_too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the request is larger than {limit} bytes")


def check_declared_length(request: Request, limit: int) -> None:
    """413 when the request says in advance that its body is over `limit` bytes."""
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        log.warning("refused %s %s: Content-Length %s over the limit of %d bytes", request.method,
                    request.url.path, declared, limit)
        raise body_too_large(limit)


async def limited_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; 413 as soon as more than `limit` bytes have come."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            _log_refusal(request.method, request.url.path, received, limit)
            raise body_too_large(limit)
        yield chunk


def limited_receive(receive: Receive, limit: int, method: str = "", path: str = "") -> Receive:
    """An ASGI `receive` that raises 413 once the body messages it passed on add up to more than `limit`."""
    received = 0

    async def receive_limited() -> Message:
        nonlocal received
        message = await receive()
        if message.get("type") == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                _log_refusal(method, path, received, limit)
                raise body_too_large(limit)
        return message

    return receive_limited


class NonFiniteNumberError(ValueError):
    """A JSON text holds NaN, Infinity or a number too large for a float."""


def _refuse_constant(name: str) -> Any:
    raise NonFiniteNumberError(f"{name} is not a number JSON allows; send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumberError(f"{text[:40]} is too large for a number; send a finite number")
    return value


def strict_json_loads(data: str | bytes) -> Any:
    """`json.loads` as JSON is written: ValueError (NonFiniteNumberError) for NaN, Infinity and overflowing
    numbers as well as for malformed text."""
    return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = strict_json_loads(body)
            except NonFiniteNumberError as error:
                # FastAPI passes an HTTPException met while reading the body on to the client.
                raise HTTPException(422, [{"loc": ["body"], "msg": str(error), "type": "value_error.jsondecode"}]) \
                    from None
        return self._json


def limited_body_route(limit: int) -> type[APIRoute]:
    """A route class whose request bodies may be at most `limit` bytes (413 otherwise, checked as above) and
    are parsed as strict JSON."""

    class LimitedBodyRoute(APIRoute):
        max_body_bytes = limit

        def get_route_handler(self) -> Callable[[Request], Awaitable]:
            handle = super().get_route_handler()

            async def handle_limited(request: Request):
                check_declared_length(request, self.max_body_bytes)
                receive = limited_receive(request.receive, self.max_body_bytes, request.method, request.url.path)
                # FastAPI re-raises an HTTPException met while reading the body, so the 413 reaches the client.
                return await handle(_StrictJsonRequest(request.scope, receive))

            return handle_limited

    return LimitedBodyRoute


def _log_refusal(method: str, path: str, received: int, limit: int) -> None:
    log.warning("refused %s %s: the body passed the limit of %d bytes (stopped reading at %d)", method, path,
                limit, received)
