"""The error taxonomy of speech API calls: transient (retry later) or permanent (fail the job)."""

from __future__ import annotations

import email.utils
import json
import math
import re
import ssl
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from speechkit_operator.contracts.grpc import GrpcCode, code_for_http_status
from speechkit_operator.models.job import Reason


def grpc_reason(code: int | None) -> Reason:
    """A CamelCase condition reason for a gRPC code: 3 -> ``InvalidArgument``; UNKNOWN's for others."""
    return Reason.from_grpc(code)


def is_transient_http_status(status: int) -> bool:
    return status == 429 or status >= 500


class SpeechApiError(Exception):
    """A call to a speech API failed.

    ``http_status`` is None for failures below HTTP (connection errors, timeouts).
    ``message`` is safe to show: it never holds credentials or presigned URLs.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        grpc_code: int | None = None,
        retry_after: float | None = None,
        unsent: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.grpc_code = grpc_code if grpc_code is not None else code_for_http_status(http_status)
        self.retry_after = retry_after
        self._unsent = unsent

    @property
    def certainly_unprocessed(self) -> bool:
        """True when the server surely did nothing: no connection was made, or it refused the
        request outright (429, 503). A timeout, a dropped connection or another 5xx may come after
        the server acted on the request: repeating a submission then may create a second operation.
        """
        return self._unsent or self.http_status in (429, 503)

    @property
    def transient(self) -> bool:
        if self.http_status is None:
            return True
        return is_transient_http_status(self.http_status)

    @property
    def reason(self) -> Reason:
        """A CamelCase reason for conditions and events, from the API's code."""
        if self.http_status is None:
            return Reason.SPEECH_API_UNREACHABLE
        return grpc_reason(self.grpc_code)

    def __str__(self) -> str:
        known = GrpcCode.from_wire(self.grpc_code)
        code = f" ({known.name if known is not None else '?'})" if self.grpc_code is not None else ""
        status = f"HTTP {self.http_status}{code}: " if self.http_status is not None else ""
        return f"{status}{self.message}"


class OperationNotFoundError(SpeechApiError):
    """The operation is unknown: never existed, or its result expired (retention is 3 days)."""


class CredentialsError(SpeechApiError):
    """The credentials themselves are unusable (for example a private key that does not load).

    Retrying cannot help, so the error is permanent whatever the transport said.
    """

    @property
    def transient(self) -> bool:
        return False

    @property
    def reason(self) -> Reason:
        return Reason.INVALID_CREDENTIALS


class TlsError(SpeechApiError):
    """TLS with the server failed: its certificate is not trusted or not valid for the host, or the
    handshake failed. No request was sent.

    A configuration problem rather than a blip: transient for the job (fixing the setting and
    restarting the operator heals it, so the job is retried with backoff), but never repeated within
    one call. The message says what to fix.
    """

    def __init__(self, message: str, *, certificate: bool) -> None:
        super().__init__(message, unsent=True)
        self.certificate = certificate

    @property
    def reason(self) -> Reason:
        return Reason.TLS_CERTIFICATE_REJECTED if self.certificate else Reason.TLS_HANDSHAKE_FAILED


class MalformedResponseError(SpeechApiError):
    """The API answered, but not with the shape it documents (not JSON, a missing id, ...).

    Treated as transient: it is usually a proxy or an outage page. Clients do not repeat a
    non-idempotent call because of it; the caller decides when to look again. ``body`` is the JSON
    object that came back, when one did (a finished operation whose result has an unknown shape).
    """

    def __init__(self, message: str, *, body: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.body = body

    @property
    def transient(self) -> bool:
        return True

    @property
    def reason(self) -> Reason:
        return Reason.MALFORMED_RESPONSE


_REDACTED = "***"
_MAX_API_MESSAGE = 300
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization header values, whatever follows the scheme.
    (re.compile(r"(?i)\b(bearer|api-key)\s+\S+"), rf"\1 {_REDACTED}"),
    # JWTs: three base64url parts, the first one a JSON object ("eyJ").
    (re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*"), _REDACTED),
    # Yandex Cloud IAM tokens ("t1.<...>").
    (re.compile(r"\bt1\.[\w.-]{8,}"), _REDACTED),
    # Any URL: presigned object URLs carry credentials in their query.
    (re.compile(r"(?i)\b(?:https?|s3)://\S+"), "<url>"),
)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove known secrets and anything that looks like a credential or a URL from ``text``.

    Use it on every text that came from outside (error bodies) before it goes into an
    exception message, a condition or a log line.
    """
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def api_error_from_body(
    what: str,
    status: int,
    body: bytes,
    *,
    retry_after: float | None = None,
    secrets: Iterable[str | None] = (),
    error_class: type[SpeechApiError] = SpeechApiError,
) -> SpeechApiError:
    """Build the error for a non-2xx answer with the REST error body ``{"code", "message", "details"}``.

    Bodies that are not JSON (proxies, load balancers) are tolerated: only the HTTP status counts then.
    The API's message is scrubbed of ``secrets``, credentials and URLs, and shortened.
    """
    grpc_code: int | None = None
    api_message = ""
    try:
        parsed: object = json.loads(body.decode("utf-8", errors="replace")) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        code = GrpcCode.from_wire(parsed.get("code"))
        if code is not None and code is not GrpcCode.OK:
            grpc_code = int(code)
        message = parsed.get("message")
        if isinstance(message, str):
            api_message = scrub(message, secrets).strip()
    if len(api_message) > _MAX_API_MESSAGE:
        api_message = api_message[:_MAX_API_MESSAGE] + "..."
    text = f"{what} failed: {api_message}" if api_message else f"{what} failed"
    return error_class(text, http_status=status, grpc_code=grpc_code, retry_after=retry_after)


# --- TLS ------------------------------------------------------------------------------------------

#: The setting that names a CA bundle, quoted in messages about untrusted certificates.
CA_BUNDLE_SETTING = "SPEECHKIT_OPERATOR_CA_BUNDLE"

# OpenSSL's X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code) that need a fix other
# than trusting another CA.
_CERT_NOT_YET_VALID = 9
_CERT_HAS_EXPIRED = 10
_HOSTNAME_MISMATCH = 62
_IP_ADDRESS_MISMATCH = 64
_CERT_VERIFY_FAILED = re.compile(r"certificate verify failed: ([^()\[\]]+?)\s*(?:\(_ssl|$)")


def origin_of(url: str) -> str:
    """``scheme://host:port`` of ``url``: no user info, path or query (a presigned URL's query is a
    credential, and paths name objects)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}" if parts.scheme else netloc or "the server"


def find_ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The :class:`ssl.SSLError` behind ``exc``, through the wrappers of aiohttp, urllib3 and botocore."""
    queue: list[BaseException] = [exc]
    seen: set[int] = set()
    while queue and len(seen) < 32:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        linked: list[object] = [
            current.__cause__,
            current.__context__,
            getattr(current, "certificate_error", None),  # aiohttp
            getattr(current, "reason", None),  # urllib3's MaxRetryError
            *current.args,
        ]
        kwargs = getattr(current, "kwargs", None)  # botocore
        if isinstance(kwargs, dict):
            linked.append(kwargs.get("error"))
        queue.extend(item for item in linked if isinstance(item, BaseException))
    return None


def is_certificate_error(error: BaseException | None) -> bool:
    return isinstance(error, ssl.SSLCertVerificationError) or (
        error is not None and "CERTIFICATE_VERIFY_FAILED" in str(error)
    )


def tls_problem(origin: str, error: BaseException | None) -> str:
    """What went wrong with TLS to ``origin`` (``scheme://host:port``) and what to do about it.

    Safe for a status message: it names the origin only, never a path or a query.
    """
    code = getattr(error, "verify_code", None)  # set on ssl.SSLCertVerificationError by OpenSSL
    detail = str(getattr(error, "verify_message", None) or "")
    if error is not None and not detail:
        match = _CERT_VERIFY_FAILED.search(str(error))
        detail = match.group(1) if match else str(getattr(error, "reason", None) or "")
    detail = scrub(detail).strip().rstrip(".") or (type(error).__name__ if error is not None else "")
    if not is_certificate_error(error):
        return (
            f"TLS handshake with {origin} failed ({detail}): check that it serves HTTPS on that port "
            "(a proxy may also be in the way)"
        )
    if code in (_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH):
        return (
            f"TLS certificate of {origin} is not valid for that host ({detail}): use a host name the "
            "certificate names, or reissue the certificate with it"
        )
    if code in (_CERT_HAS_EXPIRED, _CERT_NOT_YET_VALID):
        return f"TLS certificate of {origin} is not valid now ({detail}): renew it, or check the clocks"
    return (
        f"TLS certificate of {origin} not trusted ({detail}): set {CA_BUNDLE_SETTING} to a PEM file "
        "with the CA that signed it and restart the operator"
    )
