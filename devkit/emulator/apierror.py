"""Stripe's error answers, as the emulator raises them from any layer."""

from __future__ import annotations


class ApiError(Exception):
    """A Stripe error answer: HTTP status, error type, code, message, optional param."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.error_type = error_type
        self.param = param
        self.headers = headers or {}


def invalid(message: str, param: str, code: str = "parameter_invalid") -> ApiError:
    """A 400 naming the parameter at fault, as Stripe's invalid_request_error does."""
    return ApiError(400, code, message, param=param)


def missing(param: str) -> ApiError:
    return invalid(f"Missing required param: {param}.", param, "parameter_missing")


def unknown_parameter(param: str) -> ApiError:
    return invalid(f"Received unknown parameter: {param}", param, "parameter_unknown")


def parse_integer(raw: str, param: str) -> int:
    """A query integer, or Stripe's parameter_invalid_integer naming it."""
    try:
        return int(raw)
    except ValueError:
        raise invalid(f"Invalid integer: {raw}", param, "parameter_invalid_integer") from None
