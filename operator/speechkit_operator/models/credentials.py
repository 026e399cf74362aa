"""Credentials for a speech API, as the logic reads them from a Secret and the clients send them.

Pure values: which header a client sends for each is :mod:`speechkit_operator.clients.speech.auth`'s
business; how a Secret's data becomes one is :mod:`speechkit_operator.logic.credentials`'.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The keys of a credentials Secret.
API_KEY = "api-key"
IAM_TOKEN = "iam-token"
AUTHORIZED_KEY = "authorized-key.json"
FOLDER_ID = "folder-id"


@dataclass(frozen=True)
class ApiKeyCredentials:
    api_key: str
    folder_id: str | None = None


@dataclass(frozen=True)
class IamTokenCredentials:
    iam_token: str
    folder_id: str | None = None


@dataclass(frozen=True)
class ServiceAccountKeyCredentials:
    """An authorized key of a service account (``authorized-key.json``)."""

    key_id: str
    service_account_id: str
    private_key: str  # PEM
    folder_id: str | None = None


@dataclass(frozen=True)
class AnonymousCredentials:
    """No ``Authorization`` header: for a self-hosted service that runs without API keys."""

    folder_id: str | None = None


Credentials = ApiKeyCredentials | IamTokenCredentials | ServiceAccountKeyCredentials | AnonymousCredentials
