"""RFC 9457 problem+json: the exception types routes raise and the handlers that render them."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://cadenza.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """An error the API answers with a problem document; subclasses fix status and type."""

    status = 500
    slug = "internal-error"
    title = "Internal server error"

    def __init__(
        self,
        detail: str = "",
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors
        self.headers = headers or {}

    def document(self, instance: str) -> dict[str, Any]:
        """The problem+json body."""
        doc: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.errors is not None:
            doc["errors"] = self.errors
        return doc


class BadRequest(Problem):
    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(Problem):
    status, slug, title = 401, "unauthorized", "Missing or invalid API key"


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "The API key's role does not allow this"


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Resource not found"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict with the resource's current state"


class InvalidState(Problem):
    status, slug, title = 409, "invalid-state", "Not allowed in the resource's current state"


class Gone(Problem):
    status, slug, title = 410, "gone", "No longer valid"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class ValidationFailed(Problem):
    status, slug, title = 422, "validation-error", "Request validation failed"


class SpecInvalid(Problem):
    status, slug, title = 422, "invalid-workflow-spec", "Workflow spec is invalid"


class InputInvalid(Problem):
    status, slug, title = 422, "invalid-input", "Execution input does not match the schema"


class RateLimited(Problem):
    status, slug, title = 429, "rate-limited", "Rate limit exceeded"


class UpstreamUnavailable(Problem):
    status, slug, title = 502, "upstream-unavailable", "Upstream service could not be reached"


_BY_STATUS: dict[int, type[Problem]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
}


def problem_response(problem: Problem, instance: str) -> JSONResponse:
    """Render a problem as `application/problem+json`."""
    return JSONResponse(
        problem.document(instance),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc)


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc, request.url.path)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"path": _loc(e.get("loc", ())), "code": e.get("type", "invalid"), "message": e["msg"]}
        for e in exc.errors()
    ]
    return problem_response(ValidationFailed(errors=errors), request.url.path)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    cls = _BY_STATUS.get(exc.status_code)
    problem = cls(str(exc.detail)) if cls else Problem(str(exc.detail))
    if cls is None:
        problem.status = exc.status_code
        problem.slug = f"http-{exc.status_code}"
    return problem_response(problem, request.url.path)


class UnstorableValue(ValidationFailed):
    slug, title = "unstorable-value", "A value cannot be stored (e.g. NUL characters, out of range)"


def _sqlstate(exc: DBAPIError) -> str:
    for candidate in (exc.orig, getattr(exc.orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return ""


async def _on_database(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    if _sqlstate(exc).startswith("22"):  # class 22: data exception, i.e. the client's value
        return problem_response(UnstorableValue(str(exc.orig).splitlines()[0][:300]),
                                request.url.path)
    return await _on_unexpected(request, exc)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"path": request.url.path})
    return problem_response(Problem(), request.url.path)


def install(app: FastAPI) -> None:
    """Register the problem+json handlers on an app."""
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(DBAPIError, _on_database)
    app.add_exception_handler(Exception, _on_unexpected)
