"""Turn the data of referenced Secrets into credentials, with errors a person can act on.

A storage Secret's ``endpoint`` is where the operator will connect, so it is held to the operator's
allowlist (``SPEECHKIT_OPERATOR_STORAGE_ENDPOINTS``, besides the configured default endpoint): whoever
may create Secrets in a watched namespace must not be able to make the operator probe other hosts or
ports. The endpoint must be plain ``scheme://host[:port]``, parsed here strictly and passed on in that
canonical form, so that no URL parser downstream can read another host into it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from speechkit_operator.models.credentials import (
    API_KEY,
    AUTHORIZED_KEY,
    FOLDER_ID,
    IAM_TOKEN,
    ApiKeyCredentials,
    Credentials,
    IamTokenCredentials,
    ServiceAccountKeyCredentials,
)
from speechkit_operator.models.job import Reason
from speechkit_operator.models.storage import (
    ACCESS_KEY_ID,
    ENDPOINT,
    REGION,
    SECRET_ACCESS_KEY,
    StorageConfig,
)

#: The setting that lists the storage endpoints a Secret may name.
STORAGE_ENDPOINTS_VARIABLE = "SPEECHKIT_OPERATOR_STORAGE_ENDPOINTS"


class SecretProblem(Exception):
    """A referenced Secret is missing, unreadable or lacks what the operator needs."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _text(data: Mapping[str, bytes], key: str) -> str | None:
    raw = data.get(key)
    if raw is None:
        return None
    value = raw.decode("utf-8", errors="strict").strip()
    return value or None


def parse_speech_credentials(secret_name: str, data: Mapping[str, bytes]) -> Credentials:
    """One of ``authorized-key.json``, ``api-key`` or ``iam-token`` (in that order of precedence)."""
    try:
        folder_id = _text(data, FOLDER_ID)
        key_json = _text(data, AUTHORIZED_KEY)
        if key_json is not None:
            return _service_account_key(secret_name, key_json, folder_id)
        api_key = _text(data, API_KEY)
        if api_key is not None:
            return ApiKeyCredentials(api_key=api_key, folder_id=folder_id)
        token = _text(data, IAM_TOKEN)
        if token is not None:
            return IamTokenCredentials(iam_token=token, folder_id=folder_id)
    except UnicodeDecodeError:
        raise SecretProblem(
            Reason.INVALID_CREDENTIALS_SECRET, f"Secret {secret_name!r} holds a value that is not UTF-8 text"
        ) from None
    raise SecretProblem(
        Reason.INVALID_CREDENTIALS_SECRET,
        f"Secret {secret_name!r} has none of the keys {API_KEY!r}, {IAM_TOKEN!r} or {AUTHORIZED_KEY!r}",
    )


def _service_account_key(secret_name: str, raw: str, folder_id: str | None) -> ServiceAccountKeyCredentials:
    try:
        document = json.loads(raw)
    except json.JSONDecodeError:
        raise SecretProblem(
            Reason.INVALID_CREDENTIALS_SECRET,
            f"{AUTHORIZED_KEY!r} in Secret {secret_name!r} is not valid JSON",
        ) from None
    if not isinstance(document, dict):
        raise SecretProblem(
            Reason.INVALID_CREDENTIALS_SECRET,
            f"{AUTHORIZED_KEY!r} in Secret {secret_name!r} is not a JSON object",
        )
    missing = [field for field in ("id", "service_account_id", "private_key") if not document.get(field)]
    if missing:
        raise SecretProblem(
            Reason.INVALID_CREDENTIALS_SECRET,
            f"{AUTHORIZED_KEY!r} in Secret {secret_name!r} lacks {', '.join(missing)}",
        )
    private_key = str(document["private_key"])
    if "PRIVATE KEY-----" not in private_key:
        raise SecretProblem(
            Reason.INVALID_CREDENTIALS_SECRET,
            f"private_key in {AUTHORIZED_KEY!r} of Secret {secret_name!r} is not a PEM private key",
        )
    return ServiceAccountKeyCredentials(
        key_id=str(document["id"]),
        service_account_id=str(document["service_account_id"]),
        private_key=private_key,
        folder_id=folder_id,
    )


def _is_http_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and " " not in text


_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]"
_ENDPOINT = re.compile(rf"(?P<scheme>https?)://(?P<host>{_HOST})(:(?P<port>[0-9]{{1,5}}))?/*", re.IGNORECASE)
_PATTERN = re.compile(r"(?P<scheme>https?)://(?P<host>[^/:\[\]]+|\[[^/\]]+\])(:(?P<port>\*|[0-9]{1,5}))?/*")


@dataclass(frozen=True)
class Endpoint:
    """A storage endpoint: ``scheme://host[:port]``, lower-case, the port only when one was written."""

    scheme: str
    host: str
    port: int | None = None

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else _DEFAULT_PORTS[self.scheme]

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port is not None else "")


def parse_endpoint(text: str) -> Endpoint | None:
    """``text`` as an :class:`Endpoint`, or None unless it is exactly ``http(s)://host[:port]`` (trailing
    slashes aside): no user, path, query, fragment, backslash or percent-encoding, a port in 1 to 65535."""
    found = _ENDPOINT.fullmatch(text.strip())
    if found is None:
        return None
    port = int(found["port"]) if found["port"] is not None else None
    if port is not None and not 0 < port < 65536:
        return None
    return Endpoint(found["scheme"].lower(), found["host"].lower(), port)


def endpoint_allowed(endpoint: Endpoint, patterns: Iterable[str]) -> bool:
    """Whether one of ``patterns`` (``scheme://host[:port]``) names ``endpoint``. ``*`` in a pattern's host
    matches any characters; a pattern without a port allows the scheme's default port, ``:*`` any port.
    Patterns that are not of that form allow nothing."""
    for pattern in patterns:
        found = _PATTERN.fullmatch(pattern.strip().lower())
        if found is None or found["scheme"] != endpoint.scheme:
            continue
        host = "".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", found["host"]))
        if re.fullmatch(host, endpoint.host) is None:
            continue
        wanted = found["port"]
        if wanted == "*" or int(wanted or _DEFAULT_PORTS[endpoint.scheme]) == endpoint.effective_port:
            return True
    return False


def _origin_pattern(url: str) -> str:
    """The configured default endpoint (a URL that may carry a path) as a pattern of its origin."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def parse_storage_secret(
    secret_name: str,
    data: Mapping[str, bytes],
    *,
    default_endpoint: str,
    default_region: str,
    allowed_endpoints: Iterable[str] | None = None,
) -> StorageConfig:
    """The storage configuration of a Secret; its ``endpoint`` must be ``default_endpoint`` or match one
    of ``allowed_endpoints`` (the operator's ``storage_endpoints``). ``None``: no allowlist at all,
    for callers that enforce no policy of their own (tests, tools); the operator always passes one."""
    try:
        access_key_id = _text(data, ACCESS_KEY_ID)
        secret_access_key = _text(data, SECRET_ACCESS_KEY)
        named_endpoint = _text(data, ENDPOINT)
        region = _text(data, REGION) or default_region
    except UnicodeDecodeError:
        raise SecretProblem(
            Reason.INVALID_STORAGE_SECRET, f"Secret {secret_name!r} holds a value that is not UTF-8 text"
        ) from None
    missing = [
        key
        for key, value in ((ACCESS_KEY_ID, access_key_id), (SECRET_ACCESS_KEY, secret_access_key))
        if value is None
    ]
    if missing or access_key_id is None or secret_access_key is None:
        raise SecretProblem(
            Reason.INVALID_STORAGE_SECRET, f"Secret {secret_name!r} lacks {', '.join(missing)}"
        )
    if named_endpoint is None:
        endpoint = default_endpoint
        if not _is_http_url(endpoint):
            raise SecretProblem(
                Reason.INVALID_STORAGE_SECRET,
                f"endpoint in Secret {secret_name!r} must be an http:// or https:// URL with a host",
            )
    else:
        parsed = parse_endpoint(named_endpoint)
        if parsed is None:
            raise SecretProblem(
                Reason.INVALID_STORAGE_SECRET,
                f"endpoint in Secret {secret_name!r} must be an http:// or https:// URL with a host and "
                "at most a port (scheme://host[:port]; no user, path or query)",
            )
        if allowed_endpoints is not None and not endpoint_allowed(
            parsed, (_origin_pattern(default_endpoint), *allowed_endpoints)
        ):
            raise SecretProblem(
                Reason.STORAGE_ENDPOINT_NOT_ALLOWED,
                f"endpoint {parsed} in Secret {secret_name!r} is not one the operator may connect to: "
                f"use the default endpoint (remove endpoint from the Secret), or ask an administrator "
                f"to add it to {STORAGE_ENDPOINTS_VARIABLE} (settings.storage_endpoints in the Helm chart)",
            )
        endpoint = str(parsed)
    return StorageConfig(
        endpoint=endpoint.rstrip("/"),
        region=region,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
    )
