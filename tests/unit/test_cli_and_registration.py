"""The command line and what it registers with kopf."""

from __future__ import annotations

import kopf
import pytest

from speechkit_operator import __version__
from speechkit_operator.cli import main
from speechkit_operator.config import Settings
from speechkit_operator.constants import ANNOTATION_PREFIX, FINALIZER
from speechkit_operator.handlers import register
from speechkit_operator.handlers.lifecycle import configure_kopf


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_run_refuses_invalid_configuration_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPEECHKIT_OPERATOR_POLL_MAX_INTERVAL_SECONDS", "-1")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err
    assert "SPEECHKIT_OPERATOR_POLL_MAX_INTERVAL_SECONDS: Input should be greater than 0" in err


def test_namespace_and_all_namespaces_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--namespace", "a", "--all-namespaces"])
    assert exited.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_register_adds_one_event_handler_per_kind_and_nothing_that_needs_a_finalizer() -> None:
    registry = register(kopf.OperatorRegistry(), Settings())

    watching = list(registry._watching.get_all_handlers())  # kopf has no public listing
    assert [handler.id for handler in watching] == ["observe", "observe-batch"]
    # No creation/update handlers (no progress annotations), no timers or daemons (no finalizer).
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []


def test_startup_settings_keep_kopf_bookkeeping_under_our_prefix() -> None:
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings, Settings(watch_server_timeout=123, watch_client_timeout=150))

    assert kopf_settings.persistence.finalizer == FINALIZER
    progress = kopf_settings.persistence.progress_storage
    assert isinstance(progress, kopf.AnnotationsProgressStorage)
    assert progress.prefix == ANNOTATION_PREFIX
    diffbase = kopf_settings.persistence.diffbase_storage
    assert isinstance(diffbase, kopf.AnnotationsDiffBaseStorage)
    assert diffbase.prefix == ANNOTATION_PREFIX
    assert kopf_settings.watching.server_timeout == 123
    assert kopf_settings.watching.client_timeout == 150
    assert kopf_settings.peering.standalone is True
