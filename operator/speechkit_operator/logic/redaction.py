"""Keep secrets out of logs, events and status.

Messages from remote APIs may echo what they were given: a presigned URL (whose query string is a
bearer credential), an Authorization header, a token. Everything the operator shows a person goes
through :func:`redact` first.
"""

from __future__ import annotations

import re

_URL_QUERY = re.compile(r"(https?://[^\s?#\"']+)\?[^\s#\"']*")
_AUTH_VALUE = re.compile(r"(?i)\b(x-api-key|api-key|bearer)(\s*[:=]\s*|\s+)[A-Za-z0-9._~+/=-]+")
_TOKEN_LIKE = re.compile(r"\b(t1\.[A-Za-z0-9._-]{8,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9._-]+)")
_SIGNATURE_PARAM = re.compile(r"(?i)\b(x-amz-[a-z-]+|signature|awsaccesskeyid)=[^\s&\"']+")
# A PEM block, or what is left of one when a message was cut short before its END line.
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----.*?(-----END [A-Z ]+-----|\Z)", re.DOTALL)

MAX_MESSAGE_LENGTH = 1024


def _redact_auth_value(match: re.Match[str]) -> str:
    separator = match.group(2)
    return f"{match.group(1)}{' ' if separator.isspace() else separator}[redacted]"


def redact(text: str, *, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """Remove URL query strings, auth header values, IAM tokens/JWTs and PEM blocks; cap the length."""
    text = _PEM.sub("[redacted key]", text)
    text = _URL_QUERY.sub(r"\1?[redacted]", text)
    text = _SIGNATURE_PARAM.sub(r"\1=[redacted]", text)
    text = _AUTH_VALUE.sub(_redact_auth_value, text)
    text = _TOKEN_LIKE.sub("[redacted token]", text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
