"""gRPC status codes as SpeechKit's REST gateways report them, and the error body they answer with.

Error answers have the shape ``{"code": <gRPC code>, "message": "...", "details": [...]}``; an Operation
carries the same shape in its ``error`` field.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field


class GrpcCode(enum.IntEnum):
    """google.rpc.Code."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @property
    def reason(self) -> str:
        """The code as a CamelCase reason: ``INVALID_ARGUMENT`` -> ``InvalidArgument``."""
        return "".join(part.capitalize() for part in self.name.split("_"))

    @property
    def http_status(self) -> int:
        """The HTTP status a REST gateway answers this code with."""
        return HTTP_STATUS_BY_CODE[self]

    @classmethod
    def from_wire(cls, value: object) -> GrpcCode | None:
        """The code in an error body, or None when ``value`` is not one (a boolean, a string, 17)."""
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        try:
            return cls(value)
        except ValueError:
            return None


#: The HTTP status of each code (grpc-gateway's mapping, which SpeechKit's REST API follows).
HTTP_STATUS_BY_CODE: Final[Mapping[GrpcCode, int]] = {
    GrpcCode.OK: 200,
    GrpcCode.CANCELLED: 499,
    GrpcCode.UNKNOWN: 500,
    GrpcCode.INVALID_ARGUMENT: 400,
    GrpcCode.DEADLINE_EXCEEDED: 504,
    GrpcCode.NOT_FOUND: 404,
    GrpcCode.ALREADY_EXISTS: 409,
    GrpcCode.PERMISSION_DENIED: 403,
    GrpcCode.RESOURCE_EXHAUSTED: 429,
    GrpcCode.FAILED_PRECONDITION: 400,
    GrpcCode.ABORTED: 409,
    GrpcCode.OUT_OF_RANGE: 400,
    GrpcCode.UNIMPLEMENTED: 501,
    GrpcCode.INTERNAL: 500,
    GrpcCode.UNAVAILABLE: 503,
    GrpcCode.DATA_LOSS: 500,
    GrpcCode.UNAUTHENTICATED: 401,
}

#: The code to assume for an HTTP error whose body names none (a proxy's page, an HTTP-level refusal).
CODE_BY_HTTP_STATUS: Final[Mapping[int, GrpcCode]] = {
    400: GrpcCode.INVALID_ARGUMENT,
    401: GrpcCode.UNAUTHENTICATED,
    403: GrpcCode.PERMISSION_DENIED,
    404: GrpcCode.NOT_FOUND,
    405: GrpcCode.UNIMPLEMENTED,
    408: GrpcCode.DEADLINE_EXCEEDED,
    409: GrpcCode.ALREADY_EXISTS,
    413: GrpcCode.INVALID_ARGUMENT,
    429: GrpcCode.RESOURCE_EXHAUSTED,
    499: GrpcCode.CANCELLED,
    500: GrpcCode.INTERNAL,
    501: GrpcCode.UNIMPLEMENTED,
    503: GrpcCode.UNAVAILABLE,
    504: GrpcCode.DEADLINE_EXCEEDED,
}


def code_for_http_status(status: int | None) -> GrpcCode | None:
    return CODE_BY_HTTP_STATUS.get(status) if status is not None else None


class Status(BaseModel):
    """The error body of a REST answer, and an Operation's ``error`` (google.rpc.Status)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    code: int
    message: str = ""
    details: list[Any] = Field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {"code": int(self.code), "message": self.message, "details": list(self.details)}


def error_body(code: GrpcCode | int, message: str) -> dict[str, Any]:
    """The REST error shape ``{"code", "message", "details": []}``."""
    return Status(code=int(code), message=message).to_wire()
