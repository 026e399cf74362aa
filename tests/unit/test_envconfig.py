"""Strict configuration: unknown variables and invalid values are refused, by the variable's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechkit_operator.cli import main
from speechkit_operator.config import Settings
from speechkit_operator.envconfig import ConfigurationError, load_settings, unknown_variables
from speechkit_operator.selfhosted.config import ServiceSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith(("SPEECHKIT_OPERATOR_", "SPEECHKIT_SERVE_")):
            monkeypatch.delenv(name)


def refused(settings_class: type[Settings] | type[ServiceSettings]) -> list[str]:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(settings_class)
    return raised.value.problems


def test_a_misspelt_operator_setting_is_refused_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPEECHKIT_OPERATOR_BAKEND", "self-hosted")
    monkeypatch.setenv("SPEECHKIT_OPERATOR_POLL_MAX_INTERVAL_SECOND", "10")
    assert refused(Settings) == [
        "SPEECHKIT_OPERATOR_BAKEND is not a setting; did you mean SPEECHKIT_OPERATOR_BACKEND?",
        "SPEECHKIT_OPERATOR_POLL_MAX_INTERVAL_SECOND is not a setting; "
        "did you mean SPEECHKIT_OPERATOR_POLL_MAX_INTERVAL_SECONDS?",
    ]


def test_a_misspelt_service_setting_is_refused_with_the_closest_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECHKIT_SERVE_WORKER", "4")
    assert refused(ServiceSettings) == [
        "SPEECHKIT_SERVE_WORKER is not a setting; did you mean SPEECHKIT_SERVE_WORKERS?"
    ]


def test_a_name_like_nothing_lists_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECHKIT_OPERATOR_ZZZZZZZZZZZZZZZZZZZZZ", "1")
    assert refused(Settings) == [
        "SPEECHKIT_OPERATOR_ZZZZZZZZZZZZZZZZZZZZZ is not a setting; "
        "valid names start with SPEECHKIT_OPERATOR_"
    ]


def test_lower_case_names_count_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # pydantic-settings reads names case-insensitively, so a lower-case typo is a typo too.
    monkeypatch.setenv("speechkit_operator_bakend", "cloud")
    assert refused(Settings)[0].startswith("speechkit_operator_bakend is not a setting; did you mean")


def test_valid_names_in_any_case_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECHKIT_OPERATOR_POLL_MAX_INTERVAL_SECONDS", "10")
    assert load_settings(Settings).poll_max_interval_seconds == 10


def test_kubernetes_service_links_are_not_settings_and_not_refused() -> None:
    # A Service named speechkit-operator-recognizer (or -metrics) in the operator's namespace.
    links = {
        "SPEECHKIT_OPERATOR_RECOGNIZER_SERVICE_HOST": "10.0.0.7",
        "SPEECHKIT_OPERATOR_RECOGNIZER_SERVICE_PORT": "8088",
        "SPEECHKIT_OPERATOR_RECOGNIZER_SERVICE_PORT_HTTP": "8088",
        "SPEECHKIT_OPERATOR_RECOGNIZER_PORT": "tcp://10.0.0.7:8088",
        "SPEECHKIT_OPERATOR_RECOGNIZER_PORT_8088_TCP": "tcp://10.0.0.7:8088",
        "SPEECHKIT_OPERATOR_RECOGNIZER_PORT_8088_TCP_ADDR": "10.0.0.7",
        "SPEECHKIT_OPERATOR_RECOGNIZER_PORT_8088_TCP_PORT": "8088",
        "SPEECHKIT_OPERATOR_RECOGNIZER_PORT_8088_TCP_PROTO": "tcp",
    }
    assert unknown_variables(Settings, links) == []
    # ... but a setting-like name ending in _PORT with a plain number is a typo.
    assert unknown_variables(Settings, {"SPEECHKIT_OPERATOR_METRIC_PORT": "9090"}) != []


def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECHKIT_OPERATOR_HTTP_TIMEOUT", "soon")
    monkeypatch.setenv("SPEECHKIT_OPERATOR_POLL_MAX_INTERVAL_SECONDS", "-1")
    problems = refused(Settings)
    assert len(problems) == 2
    assert problems[0].startswith("SPEECHKIT_OPERATOR_HTTP_TIMEOUT: ") and "'soon'" in problems[0]
    assert problems[1].startswith("SPEECHKIT_OPERATOR_POLL_MAX_INTERVAL_SECONDS: ") and "'-1'" in problems[1]
    assert not any("http_timeout" in problem for problem in problems)


def test_rules_across_settings_name_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECHKIT_OPERATOR_BACKEND", "self-hosted")
    assert refused(Settings) == [
        "SPEECHKIT_OPERATOR_BACKEND=self-hosted needs SPEECHKIT_OPERATOR_SELF_HOSTED_URL"
    ]


def test_secret_values_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECHKIT_SERVE_STORAGE_SECRET_ACCESS_KEY", "hunter2-very-secret")
    problems = refused(ServiceSettings)
    assert problems == [
        "set both SPEECHKIT_SERVE_STORAGE_ACCESS_KEY_ID and "
        "SPEECHKIT_SERVE_STORAGE_SECRET_ACCESS_KEY, or neither"
    ]
    # A value of the wrong type for a secret field is described without the value.
    with pytest.raises(ConfigurationError) as raised:
        load_settings(ServiceSettings, storage_secret_access_key=31337271828, storage_access_key_id="id")
    assert raised.value.problems[0].startswith("SPEECHKIT_SERVE_STORAGE_SECRET_ACCESS_KEY: ")
    assert "31337271828" not in str(raised.value)
    # ... while other fields show what they got.
    with pytest.raises(ConfigurationError) as raised:
        load_settings(ServiceSettings, workers=31337271828)
    assert "31337271828" in str(raised.value)


def test_both_typos_and_bad_values_are_reported_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECHKIT_SERVE_WORKERS", "0")
    monkeypatch.setenv("SPEECHKIT_SERVE_QUEUE", "3")
    problems = refused(ServiceSettings)
    assert problems[0] == "SPEECHKIT_SERVE_QUEUE is not a setting; did you mean SPEECHKIT_SERVE_QUEUE_SIZE?"
    assert problems[1].startswith("SPEECHKIT_SERVE_WORKERS: ")


def test_run_exits_2_naming_the_misspelt_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPEECHKIT_OPERATOR_BAKEND", "self-hosted")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err
    assert "SPEECHKIT_OPERATOR_BAKEND is not a setting; did you mean SPEECHKIT_OPERATOR_BACKEND?" in err
    assert "Traceback" not in err


def test_serve_exits_2_naming_the_misspelt_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPEECHKIT_SERVE_PROT", "9000")
    assert main(["serve"]) == 2
    assert (
        "SPEECHKIT_SERVE_PROT is not a setting; did you mean SPEECHKIT_SERVE_PORT?" in capsys.readouterr().err
    )


def test_serve_flags_are_checked_like_variables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "70000"]) == 2
    assert "SPEECHKIT_SERVE_PORT: " in capsys.readouterr().err


def test_a_ca_bundle_that_is_not_pem_stops_run_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate")
    monkeypatch.setenv("SPEECHKIT_OPERATOR_CA_BUNDLE", str(bundle))
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert f"SPEECHKIT_OPERATOR_CA_BUNDLE={bundle} is not a readable PEM file" in err
