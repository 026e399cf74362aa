"""Credentials from environment variables, read as if they were the operator's default Secrets.

``speechkit-operator transcribe`` runs without Kubernetes: :class:`EnvSecrets` has the interface of
:class:`~speechkit_operator.clients.secrets.SecretReader` (``read``/``forget``) and answers for the
two Secret names a job uses by default (``default_credentials_secret``, ``default_storage_secret``)
with the data those Secrets would hold, taken from the variables the seed cron script used or their
usual names. Values are never logged nor put in a message; only variable names are.

==========================  ==========================================================
Secret key                  Variables (the first one set wins)
==========================  ==========================================================
``api-key``                 ``API_SECRET`` (the seed script's), ``SPEECHKIT_API_KEY``
``iam-token``               ``SPEECHKIT_IAM_TOKEN``
``authorized-key.json``     the file named by ``SPEECHKIT_AUTHORIZED_KEY_FILE``
``folder-id``               ``SPEECHKIT_FOLDER_ID``
``access-key-id``           ``S3_KEY`` (the seed's) with ``S3_SECRET``, else ``AWS_ACCESS_KEY_ID``
``secret-access-key``       ``S3_SECRET`` with ``S3_KEY``, else ``AWS_SECRET_ACCESS_KEY``
``region``                  ``S3_REGION``, ``AWS_REGION``, ``AWS_DEFAULT_REGION``
==========================  ==========================================================

The storage endpoint (``S3_ENDPOINT``) is not part of the Secret: the command makes it the
settings' ``storage_endpoint``, which any Secret may use (see :func:`storage_endpoint`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from speechkit_operator.clients.secrets import SecretNotFoundError, SecretUnreadableError
from speechkit_operator.config import Settings
from speechkit_operator.models.credentials import API_KEY, AUTHORIZED_KEY, FOLDER_ID, IAM_TOKEN
from speechkit_operator.models.storage import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY

API_KEY_VARIABLES = ("API_SECRET", "SPEECHKIT_API_KEY")
IAM_TOKEN_VARIABLE = "SPEECHKIT_IAM_TOKEN"
AUTHORIZED_KEY_FILE_VARIABLE = "SPEECHKIT_AUTHORIZED_KEY_FILE"
FOLDER_ID_VARIABLE = "SPEECHKIT_FOLDER_ID"
SEED_KEY_PAIR = ("S3_KEY", "S3_SECRET")
AWS_KEY_PAIR = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
REGION_VARIABLES = ("S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
ENDPOINT_VARIABLE = "S3_ENDPOINT"
#: The most bytes of an authorized key file read.
MAX_KEY_FILE_BYTES = 64 * 1024


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def storage_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """``S3_ENDPOINT`` when set (the storage every job of the run uses), else None."""
    value = (os.environ if environ is None else environ).get(ENDPOINT_VARIABLE, "").strip()
    return value or None


class EnvSecrets:
    """The default credentials and storage Secrets, from the environment (see the module's text)."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)

    def forget(self, namespace: str, name: str) -> None:
        """Nothing cached: the environment is read at each call."""

    async def read(self, namespace: str, name: str) -> Mapping[str, bytes]:
        del namespace
        if name == self.settings.default_credentials_secret:
            return self.speech_data()
        if name == self.settings.default_storage_secret:
            return self.storage_data()
        raise SecretNotFoundError(
            f"Secret {name!r}: transcribe reads credentials from environment variables only "
            f"(the defaults {self.settings.default_credentials_secret!r} and "
            f"{self.settings.default_storage_secret!r})"
        )

    # -- SpeechKit -----------------------------------------------------------------------------

    def speech_sources(self) -> list[str]:
        """The variables the SpeechKit credentials come from (names only)."""
        used = []
        if found := _first(self.environ, API_KEY_VARIABLES):
            used.append(found[0])
        for name in (IAM_TOKEN_VARIABLE, AUTHORIZED_KEY_FILE_VARIABLE, FOLDER_ID_VARIABLE):
            if self.environ.get(name, "").strip():
                used.append(name)
        return used

    def speech_data(self) -> dict[str, bytes]:
        data: dict[str, bytes] = {}
        if found := _first(self.environ, API_KEY_VARIABLES):
            data[API_KEY] = found[1].encode()
        if token := self.environ.get(IAM_TOKEN_VARIABLE, "").strip():
            data[IAM_TOKEN] = token.encode()
        if path := self.environ.get(AUTHORIZED_KEY_FILE_VARIABLE, "").strip():
            try:
                with Path(path).open("rb") as file:
                    data[AUTHORIZED_KEY] = file.read(MAX_KEY_FILE_BYTES)
            except OSError as exc:
                why = exc.strerror or type(exc).__name__
                raise SecretUnreadableError(
                    f"{AUTHORIZED_KEY_FILE_VARIABLE}: {path} cannot be read ({why})"
                ) from None
        if not data:
            raise SecretNotFoundError(
                "no SpeechKit credentials in the environment: set API_SECRET (as for the cron script) or "
                f"SPEECHKIT_API_KEY, or {IAM_TOKEN_VARIABLE}, or {AUTHORIZED_KEY_FILE_VARIABLE}"
            )
        if folder := self.environ.get(FOLDER_ID_VARIABLE, "").strip():
            data[FOLDER_ID] = folder.encode()
        return data

    # -- storage -------------------------------------------------------------------------------

    def storage_pair(self) -> tuple[str, str] | None:
        """The names of the two key variables in use, or None when neither pair is complete."""
        for pair in (SEED_KEY_PAIR, AWS_KEY_PAIR):
            if all(self.environ.get(name, "").strip() for name in pair):
                return pair
        return None

    def storage_problem(self) -> str | None:
        """Why the storage keys cannot be used (a sentence naming the variables), or None."""
        if self.storage_pair() is not None:
            return None
        for pair in (SEED_KEY_PAIR, AWS_KEY_PAIR):
            present = [name for name in pair if self.environ.get(name, "").strip()]
            if present:
                missing = [name for name in pair if name not in present]
                return f"{present[0]} is set but {missing[0]} is not"
        return (
            "no storage keys in the environment: set S3_KEY and S3_SECRET (as for the cron script), "
            "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )

    def storage_data(self) -> dict[str, bytes]:
        pair = self.storage_pair()
        if pair is None:
            raise SecretNotFoundError(self.storage_problem() or "no storage keys")
        data = {
            ACCESS_KEY_ID: self.environ[pair[0]].strip().encode(),
            SECRET_ACCESS_KEY: self.environ[pair[1]].strip().encode(),
        }
        if region := _first(self.environ, REGION_VARIABLES):
            data[REGION] = region[1].encode()
        return data
