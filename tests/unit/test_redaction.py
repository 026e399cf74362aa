"""redact(): what must never reach status, events or logs, and what must survive."""

from __future__ import annotations

import pytest

from speechkit_operator.logic.redaction import MAX_MESSAGE_LENGTH, redact

PRESIGNED = (
    "https://storage.yandexcloud.net/calls/incoming/a.wav"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=YCAJEexampleKeyId%2F20260101%2Fru-central1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=21600&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
)
SIGNATURE = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
IAM_TOKEN = "t1.9euelZqVk5GOl8qXy5GNjs-Lk5SJx-3rnpWaz5yQlpqYjJ6XmsaOjZzMlJXl8_dfLHxc-e9yMBNu_d3z9x9aeVz57"
JWT = (
    "eyJhbGciOiJQUzI1NiIsImtpZCI6ImFqZWtleSJ9"
    ".eyJpc3MiOiJhamVzYSIsImF1ZCI6Imh0dHBzOi8vaWFtIn0"
    ".c2lnbmF0dXJlLWJ5dGVzLWhlcmUtcXVpdGUtbG9uZw"
)
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
    "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n"
    "-----END PRIVATE KEY-----"
)


# --- URLs ----------------------------------------------------------------------------------------


def test_presigned_url_query_is_removed_and_the_path_kept() -> None:
    result = redact(f"cannot fetch {PRESIGNED} (HTTP 403)")

    assert result == "cannot fetch https://storage.yandexcloud.net/calls/incoming/a.wav?[redacted] (HTTP 403)"


def test_every_url_query_is_removed() -> None:
    result = redact("see http://minio.local:9000/b/k?token=abc123&foo=bar and https://x.example/y?z=1")

    assert result == "see http://minio.local:9000/b/k?[redacted] and https://x.example/y?[redacted]"


def test_url_query_stops_at_a_quote() -> None:
    result = redact('{"uri": "https://h.example/p?sig=1", "code": 7}')

    assert result == '{"uri": "https://h.example/p?[redacted]", "code": 7}'


def test_url_fragment_is_kept_but_query_removed() -> None:
    assert redact("https://h.example/p?secret=1#part") == "https://h.example/p?[redacted]#part"


def test_url_without_query_is_untouched() -> None:
    text = "object at https://storage.yandexcloud.net/calls/a.wav is too large"

    assert redact(text) == text


# --- X-Amz-* parameters outside a URL ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"X-Amz-Signature={SIGNATURE}", "X-Amz-Signature=[redacted]"),
        ("x-amz-credential=AKID/20260101/us-east-1/s3/aws4_request", "x-amz-credential=[redacted]"),
        ("X-Amz-Security-Token=FQoGZXIvYXdzEBQaDGm", "X-Amz-Security-Token=[redacted]"),
        ("Signature=abc123&Expires=1", "Signature=[redacted]&Expires=1"),
        ("AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE", "AWSAccessKeyId=[redacted]"),
    ],
)
def test_signature_parameters_are_redacted(text: str, expected: str) -> None:
    assert redact(f"params: {text} end") == f"params: {expected} end"


def test_signature_parameters_in_a_bare_query_string() -> None:
    result = redact(f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={SIGNATURE}&X-Amz-Expires=60")

    assert SIGNATURE not in result
    assert "AWS4-HMAC-SHA256" not in result
    assert result.count("[redacted]") == 3


# --- authorization values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Api-Key AQVNxyz_secret-1234", "Authorization: Api-Key [redacted]"),
        ("authorization: api-key AQVNxyz", "authorization: api-key [redacted]"),
        ("Authorization: Bearer abc.def~ghi+jkl/mno=", "Authorization: Bearer [redacted]"),
        ("BEARER   spaced-out", "BEARER [redacted]"),
    ],
)
def test_authorization_values_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_bearer_iam_token_is_redacted() -> None:
    result = redact(f"Authorization: Bearer {IAM_TOKEN} rejected")

    assert IAM_TOKEN not in result
    assert "9euelZq" not in result
    assert result.endswith(" rejected")


# --- tokens --------------------------------------------------------------------------------------


def test_bare_iam_token_is_redacted() -> None:
    assert redact(f"token {IAM_TOKEN} expired") == "token [redacted token] expired"


def test_jwt_is_redacted() -> None:
    assert redact(f"jwt={JWT};") == "jwt=[redacted token];"


def test_jwt_in_json_is_redacted() -> None:
    result = redact(f'{{"jwt": "{JWT}"}}')

    assert result == '{"jwt": "[redacted token]"}'


def test_short_t1_and_eyj_words_are_not_tokens() -> None:
    text = "model t1.short and eyJust kidding"

    assert redact(text) == text


# --- PEM -----------------------------------------------------------------------------------------


def test_pem_block_is_redacted() -> None:
    result = redact(f"bad key:\n{PEM}\nend")

    assert result == "bad key:\n[redacted key]\nend"


def test_several_pem_blocks_are_redacted_separately() -> None:
    certificate = PEM.replace("PRIVATE KEY", "CERTIFICATE")

    result = redact(f"{PEM} between {certificate}")

    assert result == "[redacted key] between [redacted key]"


def test_rsa_pem_block_is_redacted() -> None:
    rsa = PEM.replace("PRIVATE KEY", "RSA PRIVATE KEY")

    assert redact(rsa) == "[redacted key]"


# --- everything at once --------------------------------------------------------------------------


def test_mixed_message_leaks_nothing() -> None:
    text = (
        f"request to {PRESIGNED} with Authorization: Api-Key AQVNsecretKey failed; "
        f"token {IAM_TOKEN}; jwt {JWT}; key {PEM}"
    )

    result = redact(text)

    for secret in (SIGNATURE, "YCAJEexampleKeyId", "AQVNsecretKey", IAM_TOKEN, JWT, "MIIEvQIBADAN"):
        assert secret not in result
    assert result.startswith("request to https://storage.yandexcloud.net/calls/incoming/a.wav?[redacted]")


# --- length --------------------------------------------------------------------------------------


def test_long_text_is_capped_with_an_ellipsis() -> None:
    result = redact("a" * 5000)

    assert len(result) == MAX_MESSAGE_LENGTH
    assert result == "a" * (MAX_MESSAGE_LENGTH - 1) + "…"


def test_text_at_the_limit_is_not_cut() -> None:
    text = "b" * MAX_MESSAGE_LENGTH

    assert redact(text) == text


def test_custom_limit() -> None:
    assert redact("abcdefgh", limit=5) == "abcd…"


def test_length_is_capped_after_redaction() -> None:
    # The cap applies to the redacted text, so a long secret cannot be half-cut and half-shown.
    text = "Bearer " + "s" * 2000

    assert redact(text, limit=100) == "Bearer [redacted]"


# --- ordinary text -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "recognition failed with code 3: audio is too long",
        "Secret 'speechkit-credentials' has none of the keys 'api-key', 'iam-token' or 'authorized-key.json'",
        "s3://calls/incoming/a.wav: not found (NoSuchKey)",
        "transcripts written: json, srt, txt, vtt",
        "Распознавание завершено: 3 канала, 61.5 секунды",
        "a=b&c=d, ratio 3/4 = 0.75; key=value",
    ],
)
def test_ordinary_text_is_untouched(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
        "header Api-Key: AQVNsecretvalue sent",
        "x-api-key=AQVNsecretvalue",
    ],
)
def test_cut_short_pems_and_colon_or_equals_forms_are_redacted(text: str) -> None:
    redacted = redact(text)
    assert "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" not in redacted
    assert "AQVNsecretvalue" not in redacted
