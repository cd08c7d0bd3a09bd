"""Errors in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}`.

Clients (the official `openai` package among them) map the HTTP status to an exception class and
show `error.message`, so every failure the server reports goes through `APIError`.
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

# OpenAI's `type` for each status the server uses.
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "internal_error", 503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        message, param = _printable(message), param if param is None else _printable(param)
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _printable(text: str) -> str:
    """`text` with lone surrogates (echoed from a bad request) escaped: a JSON response is UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _location(loc: tuple) -> str:
    """pydantic's ('body', 'messages', 0, 'role') as OpenAI's 'messages[0].role'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error(exc: RequestValidationError) -> APIError:
    """The first problem pydantic found, named the way OpenAI names parameters."""
    err = exc.errors()[0]
    param = _location(tuple(err.get("loc", ())))
    if err.get("type") == "invalid_unicode":  # found by a walk over the whole body, which names the place
        return APIError(400, err["msg"], param=err["ctx"]["param"], code="invalid_unicode")
    if err.get("type") == "json_invalid":
        return APIError(400, f"malformed JSON body: {err.get('msg')}", code="invalid_json")
    if err.get("type") == "extra_forbidden":
        return APIError(400, f"unknown parameter '{param}' (phi4r rejects fields it would otherwise ignore)",
                        param=param, code="unknown_parameter")
    message = err.get("msg", "invalid value")
    return APIError(400, f"{param}: {message}" if param else message, param=param or None, code="invalid_value")


def install(app: FastAPI) -> None:
    """Route every failure, including FastAPI's own (validation, 404 routes, 405), through APIError."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        code = "invalid_json" if exc.status_code == 400 else None  # FastAPI's 400: a body it cannot parse
        return APIError(exc.status_code, str(exc.detail), code=code, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # a bug: still OpenAI's shape, never text/plain
        # Starlette re-raises it after this response, so the server logs the traceback.
        return APIError(500, f"internal server error: {type(exc).__name__}: {exc}", code="internal_error").response()
