"""Errors the server answers with: each knows its HTTP status and OpenAI's error shape, so a
client written against OpenAI (which reads `error.type` and `error.code`) understands them."""

from __future__ import annotations

from typing import Any

from edge.errors import EdgeError


class APIError(EdgeError):
    """An error answered as `{"error": {"message", "type", "param", "code"}}` with `status`."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": str(self),
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(APIError, ValueError):
    """400: the body is not JSON, a parameter is missing or out of range."""


class ContextLengthError(InvalidRequestError):
    """400: the prompt does not leave room for one generated token in the context window."""

    code = "context_length_exceeded"


class AuthenticationError(APIError):
    """401: an API key is set and the request did not present it."""

    status = 401
    code = "invalid_api_key"


class NotFoundError(APIError):
    """404: a model this server does not serve, or a path it does not have."""

    status = 404
    code = "model_not_found"


class QueueFullError(APIError):
    """429: the bounded queue in front of the engine is full; retry later."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class LoadingError(APIError):
    """503: the models are still loading (or failed to); retry later."""

    status = 503
    type = "server_error"
    code = "model_loading"


class GenerationFailedError(APIError):
    """500: the engine failed during a generation (a backend error); the server keeps serving."""

    status = 500
    type = "server_error"
    code = "generation_failed"
