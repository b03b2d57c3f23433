"""Errors as the OpenAI API writes them: {"error": {"message", "type", "param", "code"}} with
the HTTP status a client library maps to its exception classes (400 BadRequestError, 401
AuthenticationError, 413, 429 RateLimitError with Retry-After, 503).

llmos's own errors arrive here named by GenerationConfig's fields; `param` gives the OpenAI
field the client actually sent (max_new_tokens -> max_tokens)."""

from __future__ import annotations

import math

from llmos.errors import (BusyError, CancelledError, ChatTemplateError, ContextLengthError, InvalidInputError,
                          LlmosError, NumericalError)

# GenerationConfig's names -> the request field that set them.
_PARAM = {"max_new_tokens": "max_tokens", "num_return_sequences": "n", "token_ids": "tokens",
          "logprobs": "logprobs", "top_logprobs": "top_logprobs", "prompt": "prompt"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict:
        return {} if self.retry_after is None else {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def too_large(length: str, cap: int) -> APIError:
    return APIError(413, f"the request body ({length} bytes) is over the limit of {cap} bytes "
                         "(llmos.limits.serve_max_body_bytes)", param=None, code="request_too_large")


def busy(message: str, retry_after: float) -> APIError:
    return APIError(429, message, type="rate_limit_exceeded", code="rate_limit_exceeded", retry_after=retry_after)


def from_llmos(e: LlmosError, *, prompt_param: str = "prompt") -> APIError:
    """The API error for an llmos error raised while preparing or running a request."""
    param = _PARAM.get(e.field, e.field) if e.field else None
    if param == "prompt":
        param = prompt_param
    if isinstance(e, BusyError):
        return busy(str(e), e.retry_after)
    if isinstance(e, ContextLengthError):
        return APIError(400, str(e), param=param, code="context_length_exceeded")
    if isinstance(e, (InvalidInputError, ChatTemplateError)):
        return APIError(400, str(e), param=param, code="invalid_value")
    if isinstance(e, CancelledError):
        return APIError(503, str(e), type="server_error", code="cancelled")
    if isinstance(e, NumericalError):
        return APIError(500, str(e), type="server_error", code="numerical_error")
    return APIError(500, str(e), type="server_error", code=type(e).__name__)


# pydantic names the member of a Union an error came from inside `loc`; not a field.
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "constrained-str", "constrained-int"}


def _is_type_tag(part: str) -> bool:
    return part in _TYPE_TAGS or "[" in part


def from_validation(errors: list[dict]) -> APIError:
    """pydantic's errors as one 400 naming the first field at fault (messages[0].role)."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "")
        return invalid(f"the request body is not valid JSON ({reason} at character {first['loc'][-1]})",
                       code="invalid_json")
    loc = [p for p in first.get("loc", ()) if p != "body"]
    param = ""
    for part in loc:
        if isinstance(part, int):
            param += f"[{part}]"
        elif not _is_type_tag(part):
            param += ("." if param else "") + str(part)
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        msg = f"unrecognized request argument supplied: {param}"
    elif first.get("type") == "missing":
        msg = f"missing required argument: {param}"
    else:
        given = first.get("input")
        shown = repr(given) if not isinstance(given, (dict, list)) else type(given).__name__
        msg = f"{param}: {msg} (got {shown[:200]})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return invalid(msg + more, param=param or None, code="invalid_value")
