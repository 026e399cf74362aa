"""Keep secrets out of logs, events and status.

Messages from remote APIs may echo what they were given: a presigned URL (whose query string is a
bearer credential), an Authorization header, a token. Everything the operator shows a person goes
through :func:`redact` first.
"""

from __future__ import annotations

import re

_URL_QUERY = re.compile(r"(https?://[^\s?#\"']+)\?[^\s#\"']*")
_AUTH_VALUE = re.compile(r"(?i)\b(api-key|bearer)\s+[A-Za-z0-9._~+/=-]+")
_TOKEN_LIKE = re.compile(r"\b(t1\.[A-Za-z0-9._-]{8,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9._-]+)")
_SIGNATURE_PARAM = re.compile(r"(?i)\b(x-amz-[a-z-]+|signature|awsaccesskeyid)=[^\s&\"']+")
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----.*?-----END [A-Z ]+-----", re.DOTALL)

MAX_MESSAGE_LENGTH = 1024


def redact(text: str, *, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """Remove URL query strings, auth header values, IAM tokens/JWTs and PEM blocks; cap the length."""
    text = _PEM.sub("[redacted key]", text)
    text = _URL_QUERY.sub(r"\1?[redacted]", text)
    text = _SIGNATURE_PARAM.sub(r"\1=[redacted]", text)
    text = _AUTH_VALUE.sub(r"\1 [redacted]", text)
    text = _TOKEN_LIKE.sub("[redacted token]", text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
