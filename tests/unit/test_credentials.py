"""Parsing the data of credentials and storage Secrets, and the errors a person sees."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from speechkit_operator.logic.credentials import (
    SecretProblem,
    parse_speech_credentials,
    parse_storage_secret,
)
from speechkit_operator.models.credentials import (
    ApiKeyCredentials,
    IamTokenCredentials,
    ServiceAccountKeyCredentials,
)
from speechkit_operator.models.storage import StorageConfig

SECRET = "speech-creds"
API_KEY = "AQVN-api-key-value-0123456789"
IAM_TOKEN = "t1.9euelZqIAMtokenValue-0123456789"
FOLDER = "b1gfolder0000"
DEFAULT_ENDPOINT = "https://storage.yandexcloud.net"
DEFAULT_REGION = "ru-central1"


@pytest.fixture(scope="module")
def pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def authorized_key(pem: str, **overrides: Any) -> bytes:
    document: dict[str, Any] = {
        "id": "ajekeyid0001",
        "service_account_id": "ajesa0000001",
        "created_at": "2026-01-01T00:00:00Z",
        "key_algorithm": "RSA_2048",
        "public_key": "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n",
        "private_key": pem,
    }
    document.update(overrides)
    return json.dumps(document).encode()


def problem(data: dict[str, bytes]) -> SecretProblem:
    with pytest.raises(SecretProblem) as caught:
        parse_speech_credentials(SECRET, data)
    return caught.value


def assert_not_leaked(error: SecretProblem, *values: str) -> None:
    for value in values:
        assert value not in error.message
        assert value not in str(error)


# --- speech credentials --------------------------------------------------------------------------


def test_api_key() -> None:
    assert parse_speech_credentials(SECRET, {"api-key": API_KEY.encode()}) == ApiKeyCredentials(
        api_key=API_KEY, folder_id=None
    )


def test_iam_token() -> None:
    assert parse_speech_credentials(SECRET, {"iam-token": IAM_TOKEN.encode()}) == IamTokenCredentials(
        iam_token=IAM_TOKEN, folder_id=None
    )


def test_authorized_key(pem: str) -> None:
    credentials = parse_speech_credentials(SECRET, {"authorized-key.json": authorized_key(pem)})

    assert credentials == ServiceAccountKeyCredentials(
        key_id="ajekeyid0001", service_account_id="ajesa0000001", private_key=pem, folder_id=None
    )


def test_authorized_key_private_key_loads(pem: str) -> None:
    credentials = parse_speech_credentials(SECRET, {"authorized-key.json": authorized_key(pem)})

    assert isinstance(credentials, ServiceAccountKeyCredentials)
    loaded = serialization.load_pem_private_key(credentials.private_key.encode(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"api-key": API_KEY.encode()}, ApiKeyCredentials(api_key=API_KEY, folder_id=FOLDER)),
        ({"iam-token": IAM_TOKEN.encode()}, IamTokenCredentials(iam_token=IAM_TOKEN, folder_id=FOLDER)),
    ],
)
def test_folder_id_is_attached(data: dict[str, bytes], expected: object) -> None:
    assert parse_speech_credentials(SECRET, {**data, "folder-id": FOLDER.encode()}) == expected


def test_folder_id_with_authorized_key(pem: str) -> None:
    credentials = parse_speech_credentials(
        SECRET, {"authorized-key.json": authorized_key(pem), "folder-id": FOLDER.encode()}
    )

    assert isinstance(credentials, ServiceAccountKeyCredentials)
    assert credentials.folder_id == FOLDER


def test_authorized_key_takes_precedence(pem: str) -> None:
    credentials = parse_speech_credentials(
        SECRET,
        {
            "iam-token": IAM_TOKEN.encode(),
            "api-key": API_KEY.encode(),
            "authorized-key.json": authorized_key(pem),
        },
    )

    assert isinstance(credentials, ServiceAccountKeyCredentials)


def test_api_key_takes_precedence_over_iam_token() -> None:
    credentials = parse_speech_credentials(
        SECRET, {"iam-token": IAM_TOKEN.encode(), "api-key": API_KEY.encode()}
    )

    assert credentials == ApiKeyCredentials(api_key=API_KEY)


def test_blank_value_falls_through_to_the_next_kind() -> None:
    credentials = parse_speech_credentials(
        SECRET, {"authorized-key.json": b"  \n", "api-key": b"", "iam-token": IAM_TOKEN.encode()}
    )

    assert credentials == IamTokenCredentials(iam_token=IAM_TOKEN)


def test_whitespace_is_trimmed() -> None:
    credentials = parse_speech_credentials(
        SECRET, {"api-key": f"  {API_KEY}\n".encode(), "folder-id": f"\t{FOLDER} \r\n".encode()}
    )

    assert credentials == ApiKeyCredentials(api_key=API_KEY, folder_id=FOLDER)


def test_blank_folder_id_is_none() -> None:
    credentials = parse_speech_credentials(SECRET, {"api-key": API_KEY.encode(), "folder-id": b"   "})

    assert credentials == ApiKeyCredentials(api_key=API_KEY, folder_id=None)


def test_authorized_key_with_surrounding_whitespace(pem: str) -> None:
    credentials = parse_speech_credentials(
        SECRET, {"authorized-key.json": b"\n  " + authorized_key(pem) + b"\n"}
    )

    assert isinstance(credentials, ServiceAccountKeyCredentials)


# --- speech credentials: problems ----------------------------------------------------------------


def test_no_known_keys() -> None:
    error = problem({"folder-id": FOLDER.encode(), "token": b"whatever-secret"})

    assert error.reason == "InvalidCredentialsSecret"
    assert SECRET in error.message
    for key in ("api-key", "iam-token", "authorized-key.json"):
        assert key in error.message
    assert_not_leaked(error, "whatever-secret", FOLDER)


def test_empty_secret() -> None:
    assert problem({}).reason == "InvalidCredentialsSecret"


def test_invalid_json(pem: str) -> None:
    raw = b'{"id": "ajekeyid0001", "private_key": "' + pem.encode()[:40]

    error = problem({"authorized-key.json": raw})

    assert error.reason == "InvalidCredentialsSecret"
    assert "not valid JSON" in error.message
    assert_not_leaked(error, "MII", "BEGIN PRIVATE KEY")


@pytest.mark.parametrize("document", [b"[1, 2]", b'"a string"', b"42", b"null"])
def test_json_that_is_not_an_object(document: bytes) -> None:
    error = problem({"authorized-key.json": document})

    assert error.reason == "InvalidCredentialsSecret"
    assert "not a JSON object" in error.message


@pytest.mark.parametrize(
    ("overrides", "missing"),
    [
        ({"id": None}, "id"),
        ({"service_account_id": ""}, "service_account_id"),
        ({"private_key": None}, "private_key"),
        ({"id": "", "private_key": ""}, "id, private_key"),
    ],
)
def test_missing_fields_in_the_key(pem: str, overrides: dict[str, Any], missing: str) -> None:
    error = problem({"authorized-key.json": authorized_key(pem, **overrides)})

    assert error.reason == "InvalidCredentialsSecret"
    assert error.message.endswith(f"lacks {missing}")
    assert_not_leaked(error, pem, pem.splitlines()[1])


def test_key_without_any_field() -> None:
    error = problem({"authorized-key.json": b"{}"})

    assert error.message.endswith("lacks id, service_account_id, private_key")


def test_private_key_that_is_not_pem() -> None:
    not_pem = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7secretbytes"

    error = problem(
        {
            "authorized-key.json": json.dumps(
                {"id": "k", "service_account_id": "sa", "private_key": not_pem}
            ).encode()
        }
    )

    assert error.reason == "InvalidCredentialsSecret"
    assert "not a PEM private key" in error.message
    assert_not_leaked(error, not_pem, "secretbytes")


def test_public_key_in_place_of_the_private_key() -> None:
    public = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n-----END PUBLIC KEY-----\n"

    error = problem(
        {
            "authorized-key.json": json.dumps(
                {"id": "k", "service_account_id": "sa", "private_key": public}
            ).encode()
        }
    )

    assert "not a PEM private key" in error.message


BAD_UTF8 = b"\xff\xfe hunter2-value \xc3\x28"


@pytest.mark.parametrize(
    "data",
    [
        {"api-key": BAD_UTF8},
        {"iam-token": BAD_UTF8},
        {"authorized-key.json": BAD_UTF8},
        {"folder-id": BAD_UTF8, "api-key": API_KEY.encode()},
    ],
    ids=["api-key", "iam-token", "authorized-key.json", "folder-id"],
)
def test_non_utf8_bytes(data: dict[str, bytes]) -> None:
    error = problem(data)

    assert error.reason == "InvalidCredentialsSecret"
    assert "not UTF-8" in error.message
    assert_not_leaked(error, API_KEY, "hunter2")


def test_messages_never_hold_the_values(pem: str) -> None:
    cases: list[dict[str, bytes]] = [
        {"authorized-key.json": authorized_key(pem, id="")},
        {"authorized-key.json": authorized_key(pem, private_key="not-a-key-" + API_KEY)},
        {"authorized-key.json": b"{" + API_KEY.encode()},
        {"authorized-key.json": json.dumps([API_KEY]).encode()},
        {"api-key": b"\xff" + API_KEY.encode()},
    ]
    for data in cases:
        error = problem(data)
        assert_not_leaked(error, API_KEY, pem.splitlines()[1])


# --- storage Secret ------------------------------------------------------------------------------


def storage(data: dict[str, bytes]) -> StorageConfig:
    return parse_storage_secret(
        "s3-keys", data, default_endpoint=DEFAULT_ENDPOINT, default_region=DEFAULT_REGION
    )


def storage_problem(data: dict[str, bytes]) -> SecretProblem:
    with pytest.raises(SecretProblem) as caught:
        storage(data)
    assert caught.value.reason == "InvalidStorageSecret"
    assert "s3-keys" in caught.value.message
    return caught.value


KEYS = {"access-key-id": b"YCAJEaccess", "secret-access-key": b"YCsecretAccessKeyValue"}


def test_storage_with_defaults() -> None:
    assert storage(KEYS) == StorageConfig(
        endpoint=DEFAULT_ENDPOINT,
        region=DEFAULT_REGION,
        access_key_id="YCAJEaccess",
        secret_access_key="YCsecretAccessKeyValue",
    )


def test_storage_with_endpoint_and_region() -> None:
    config = storage({**KEYS, "endpoint": b"http://minio.minio:9000", "region": b"us-east-1"})

    assert config.endpoint == "http://minio.minio:9000"
    assert config.region == "us-east-1"


def test_storage_values_are_trimmed_and_trailing_slash_stripped() -> None:
    config = storage(
        {
            "access-key-id": b" YCAJEaccess\n",
            "secret-access-key": b"\tYCsecretAccessKeyValue ",
            "endpoint": b" https://s3.example.net/// \n",
            "region": b" eu-1 ",
        }
    )

    assert config == StorageConfig(
        endpoint="https://s3.example.net",
        region="eu-1",
        access_key_id="YCAJEaccess",
        secret_access_key="YCsecretAccessKeyValue",
    )


def test_default_endpoint_trailing_slash_is_stripped() -> None:
    config = parse_storage_secret(
        "s3-keys", KEYS, default_endpoint="https://storage.yandexcloud.net/", default_region="r"
    )

    assert config.endpoint == "https://storage.yandexcloud.net"


def test_blank_endpoint_and_region_fall_back_to_defaults() -> None:
    config = storage({**KEYS, "endpoint": b"  ", "region": b""})

    assert (config.endpoint, config.region) == (DEFAULT_ENDPOINT, DEFAULT_REGION)


@pytest.mark.parametrize(
    ("data", "missing"),
    [
        ({"secret-access-key": b"YCsecretAccessKeyValue"}, "access-key-id"),
        ({"access-key-id": b"YCAJEaccess"}, "secret-access-key"),
        ({"access-key-id": b"YCAJEaccess", "secret-access-key": b"  "}, "secret-access-key"),
        ({}, "access-key-id, secret-access-key"),
    ],
)
def test_storage_missing_keys(data: dict[str, bytes], missing: str) -> None:
    error = storage_problem(data)

    assert error.message.endswith(f"lacks {missing}")
    assert_not_leaked(error, "YCsecretAccessKeyValue", "YCAJEaccess")


@pytest.mark.parametrize("endpoint", [b"storage.yandexcloud.net", b"ftp://host", b"s3://bucket", b"HTTPS//x"])
def test_storage_endpoint_without_scheme(endpoint: bytes) -> None:
    error = storage_problem({**KEYS, "endpoint": endpoint})

    assert "http:// or https://" in error.message
    assert_not_leaked(error, "YCsecretAccessKeyValue")


def test_storage_non_utf8_bytes() -> None:
    error = storage_problem({**KEYS, "secret-access-key": b"YCsecret\xff\xfeAccessKeyValue"})

    assert "not UTF-8" in error.message
    assert_not_leaked(error, "YCsecret", "AccessKeyValue", "YCAJEaccess")
