"""OpenAI-style errors: one exception type that knows its HTTP status and its JSON body.

Raised by request parsing (ingress) and yielded as the first stream item by the LLM server (a replica never
raises across the handle for bad input: the ingress turns the item into the response), so every bad input ends
as `{"error": {"message", "type", "param", "code"}}` with a 4xx status, never a 500.
"""

import re
from dataclasses import dataclass

_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\[\]]*)\b")


@dataclass
class ApiError(Exception):
    status: int  # HTTP status
    message: str
    type: str = "invalid_request_error"  # OpenAI's error types: invalid_request_error, authentication_error, ...
    param: str | None = None  # the request field at fault
    code: str | None = None  # machine-readable: model_not_found, invalid_api_key, rate_limit_exceeded, ...

    def __str__(self) -> str:
        return f"{self.status} {self.message}"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code)


def from_value_error(err: ValueError, renames: dict[str, str] | None = None) -> ApiError:
    """A ValueError whose message starts with the field name (as the engine's do) -> 400 naming that field.

    `renames` maps engine field names to the request's (e.g. max_tokens -> max_completion_tokens).
    """
    message = str(err)
    match = _FIELD.match(message)
    param = match.group(1) if match else None
    renames = renames or {}
    root = param.split("[")[0].split(".")[0] if param else None
    if root in renames:
        param = renames[root] + param[len(root):]
        message = renames[root] + message[len(root):]
    return bad_request(message, param)


def not_found_model(name: str, available: list[str]) -> ApiError:
    return ApiError(404, f"The model {name!r} does not exist; available: {available}", "invalid_request_error",
                    "model", "model_not_found")


def unauthorized() -> ApiError:
    return ApiError(401, "Incorrect or missing API key; send 'Authorization: Bearer <key>'.",
                    "authentication_error", None, "invalid_api_key")


def overloaded(status: int, detail: str) -> ApiError:
    kind = "rate_limit_exceeded" if status == 429 else "server_overloaded"
    return ApiError(status, f"The server is overloaded ({detail}); retry after the Retry-After delay.",
                    "rate_limit_error" if status == 429 else "server_error", None, kind)


def draining(retry_after_s: int) -> ApiError:
    return ApiError(503, f"The server is shutting down and takes no new requests; retry in {retry_after_s} s (another "
                         "replica, or the server once restarted, will answer).", "server_error", None,
                    "server_shutting_down")


def timed_out(seconds: float) -> ApiError:
    return ApiError(408, f"The request did not finish within its deadline of {seconds:g} s.", "timeout_error", None,
                    "request_timeout")
