"""Turn the data of referenced Secrets into credentials, with errors a person can act on."""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import urlsplit

from speechkit_operator.clients.speech.base import (
    ApiKeyCredentials,
    Credentials,
    IamTokenCredentials,
    ServiceAccountKeyCredentials,
)
from speechkit_operator.clients.storage import StorageConfig

API_KEY = "api-key"
IAM_TOKEN = "iam-token"
AUTHORIZED_KEY = "authorized-key.json"
FOLDER_ID = "folder-id"
ACCESS_KEY_ID = "access-key-id"
SECRET_ACCESS_KEY = "secret-access-key"
ENDPOINT = "endpoint"
REGION = "region"


class SecretProblem(Exception):
    """A referenced Secret is missing, unreadable or lacks what the operator needs."""

    def __init__(self, reason: str, message: str) -> None:
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
            "InvalidCredentialsSecret", f"Secret {secret_name!r} holds a value that is not UTF-8 text"
        ) from None
    raise SecretProblem(
        "InvalidCredentialsSecret",
        f"Secret {secret_name!r} has none of the keys {API_KEY!r}, {IAM_TOKEN!r} or {AUTHORIZED_KEY!r}",
    )


def _service_account_key(secret_name: str, raw: str, folder_id: str | None) -> ServiceAccountKeyCredentials:
    try:
        document = json.loads(raw)
    except json.JSONDecodeError:
        raise SecretProblem(
            "InvalidCredentialsSecret", f"{AUTHORIZED_KEY!r} in Secret {secret_name!r} is not valid JSON"
        ) from None
    if not isinstance(document, dict):
        raise SecretProblem(
            "InvalidCredentialsSecret", f"{AUTHORIZED_KEY!r} in Secret {secret_name!r} is not a JSON object"
        )
    missing = [field for field in ("id", "service_account_id", "private_key") if not document.get(field)]
    if missing:
        raise SecretProblem(
            "InvalidCredentialsSecret",
            f"{AUTHORIZED_KEY!r} in Secret {secret_name!r} lacks {', '.join(missing)}",
        )
    private_key = str(document["private_key"])
    if "PRIVATE KEY-----" not in private_key:
        raise SecretProblem(
            "InvalidCredentialsSecret",
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


def parse_storage_secret(
    secret_name: str, data: Mapping[str, bytes], *, default_endpoint: str, default_region: str
) -> StorageConfig:
    try:
        access_key_id = _text(data, ACCESS_KEY_ID)
        secret_access_key = _text(data, SECRET_ACCESS_KEY)
        endpoint = _text(data, ENDPOINT) or default_endpoint
        region = _text(data, REGION) or default_region
    except UnicodeDecodeError:
        raise SecretProblem(
            "InvalidStorageSecret", f"Secret {secret_name!r} holds a value that is not UTF-8 text"
        ) from None
    missing = [
        key
        for key, value in ((ACCESS_KEY_ID, access_key_id), (SECRET_ACCESS_KEY, secret_access_key))
        if value is None
    ]
    if missing or access_key_id is None or secret_access_key is None:
        raise SecretProblem("InvalidStorageSecret", f"Secret {secret_name!r} lacks {', '.join(missing)}")
    if not _is_http_url(endpoint):
        raise SecretProblem(
            "InvalidStorageSecret",
            f"endpoint in Secret {secret_name!r} must be an http:// or https:// URL with a host",
        )
    return StorageConfig(
        endpoint=endpoint.rstrip("/"),
        region=region,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
    )
