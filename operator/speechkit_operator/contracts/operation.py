"""The Operation API (``operation.api.cloud.yandex.net``): the Operation object, its ids and timestamps.

An Operation is ``{"id", "description", "createdAt", "createdBy", "modifiedAt", "done", "metadata"?,
"error"?: {"code", "message", "details"}, "response"?: {...}}``. ``error`` may be set while ``done`` is
still false; once done, exactly one of ``error`` and ``response`` is set.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from speechkit_operator.contracts.grpc import GrpcCode

#: ``GET {operation_url}/operations/{id}``; ``GET .../operations/{id}:cancel`` asks to cancel.
OPERATIONS_PATH: Final = "/operations/"
CANCEL_SUFFIX: Final = ":cancel"

#: The ids the operator and the self-hosted service accept: SpeechKit's are 20 characters of
#: ``[0-9a-v]``; this also admits other lowercase alphanumeric ids up to 64 characters, nothing else
#: (an id goes into a URL path and into Kubernetes status).
OPERATION_ID_PATTERN: Final = r"^[0-9a-z]{1,64}$"
_ID_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuv"
_ID_LENGTH: Final = 20
_ID_PREFIX: Final = "e03"


def new_operation_id() -> str:
    """A random id in SpeechKit's style: 20 characters of ``[0-9a-v]`` starting with ``e03``."""
    return _ID_PREFIX + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH - len(_ID_PREFIX)))


def format_timestamp(moment: datetime) -> str:
    """A protobuf Timestamp in RFC 3339, UTC, whole seconds: ``2019-04-21T22:49:29Z``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _code(value: object) -> int:
    code = GrpcCode.from_wire(value)
    return int(code if code is not None else GrpcCode.UNKNOWN)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _optional_text(value: object) -> str | None:
    return value if isinstance(value, str) else None


OptionalText = Annotated[str | None, BeforeValidator(_optional_text)]


class OperationError(BaseModel):
    """An Operation's ``error``. Read leniently: a code that is not a gRPC code reads as UNKNOWN, a
    message that is not a string as empty."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    code: Annotated[int, BeforeValidator(_code)]
    message: Annotated[str, BeforeValidator(_text)] = ""
    details: list[Any] = Field(default_factory=list)


class Operation(BaseModel):
    """An Operation as the API answers it. Timestamps stay RFC 3339 text; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    id: Annotated[str, Field(min_length=1)]
    description: Annotated[str, BeforeValidator(_text)] = ""
    created_at: OptionalText = Field(default=None, alias="createdAt")
    created_by: OptionalText = Field(default=None, alias="createdBy")
    modified_at: OptionalText = Field(default=None, alias="modifiedAt")
    done: Annotated[bool, BeforeValidator(lambda value: value is True)] = False
    metadata: dict[str, Any] | None = None
    error: OperationError | None = None
    response: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON object; ``error``, ``response`` and ``metadata`` only when set."""
        body: dict[str, Any] = {
            "id": self.id,
            "description": self.description,
            "createdAt": self.created_at,
            "createdBy": self.created_by,
            "modifiedAt": self.modified_at,
            "done": self.done,
        }
        if self.metadata is not None:
            body["metadata"] = dict(self.metadata)
        if self.error is not None:
            body["error"] = self.error.model_dump()
        if self.response is not None:
            body["response"] = dict(self.response)
        return body

    def check_outcome(self) -> Operation:
        """``self``, once it is checked to keep the rule: done means exactly one of error and response,
        not done means no response. Raises ValueError otherwise."""
        if self.done and (self.error is None) == (self.response is None):
            raise ValueError("a done operation has exactly one of error and response")
        if not self.done and self.response is not None:
            raise ValueError("an operation that is not done has no response")
        return self
