"""API keys of the self-hosted service: the REST APIs and gRPC streaming accept the same ones.

Clients send ``Authorization: Api-Key <key>`` (gRPC: the metadata ``authorization``), as SpeechKit wants
from service accounts; IAM tokens (``Bearer``) are not accepted. With no keys configured every request is
accepted (a service reachable by trusted clients alone).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from speechkit_operator.contracts.grpc import GrpcCode
from speechkit_operator.selfhosted.protocol import ApiError

__all__ = ["Authenticator"]

#: The answer without credentials, as the REST API words it.
_REQUIRED: Final = "Authentication required: send the header Authorization: Api-Key <key>"


class Authenticator:
    """Checks ``Authorization: Api-Key <key>``; answers the caller's ``createdBy``."""

    ANONYMOUS: Final = "anonymous"

    def __init__(self, api_keys: tuple[str, ...]) -> None:
        self._keys = [key.encode() for key in api_keys]
        # createdBy is derived from the key with a per-process secret, so it never reveals the key.
        self._salt = secrets.token_bytes(16)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, header: str | None, *, required_message: str = _REQUIRED) -> str:
        """The caller's ``createdBy``, or :class:`ApiError` 401 UNAUTHENTICATED (``required_message``
        when ``header`` is missing)."""
        if not self._keys:
            return self.ANONYMOUS
        if not header:
            raise ApiError(401, GrpcCode.UNAUTHENTICATED, required_message)
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "api-key":
            raise ApiError(
                401,
                GrpcCode.UNAUTHENTICATED,
                "Unsupported authorization scheme: this service accepts Api-Key only",
            )
        presented = credentials.strip().encode()
        # Compare with every key, so the time taken does not tell which one nearly matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        if not matched:
            raise ApiError(401, GrpcCode.UNAUTHENTICATED, "The API key is not valid")
        digest = hmac.new(self._salt, presented, hashlib.sha256).digest()
        alphabet = "0123456789abcdefghijklmnopqrstuv"
        return "aje" + "".join(alphabet[byte % 32] for byte in digest[:17])
