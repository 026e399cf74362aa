"""Log formats and levels: JSON lines with the job's namespace and name; no INFO per handler run."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from speechkit_operator.cli import _parser
from speechkit_operator.logs import configure_logging, job_fields
from tests.support.logging_state import logging_restored


@pytest.fixture
def restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


def kopf_object_record(logger: logging.Logger, message: str, level: int = logging.INFO) -> None:
    """What kopf's per-object logger emits: the object's reference in ``k8s_ref``."""
    ref = {
        "apiVersion": "speechkit.dev/v1alpha1",
        "kind": "TranscriptionJob",
        "namespace": "calls",
        "name": "a",
    }
    logger.log(level, message, extra={"k8s_ref": ref, "k8s_skip": False})


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_the_jobs_namespace_and_name() -> None:
    out = io.StringIO()
    configure_logging(log_format="json", stream=out)
    logging.getLogger("speechkit_operator.workflow").info(
        "job %s submitted", "calls/a", extra=job_fields("calls", "a")
    )
    kopf_object_record(
        logging.getLogger("kopf.objects"), "Handler 'submit' failed temporarily", logging.WARNING
    )
    try:
        int("boom")
    except ValueError:
        logging.getLogger("speechkit_operator").exception("unexpected")

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    first, second, third = lines
    assert first["message"] == "job calls/a submitted"
    assert (first["level"], first["logger"]) == ("INFO", "speechkit_operator.workflow")
    assert (first["namespace"], first["name"]) == ("calls", "a")
    assert first["time"].endswith("+00:00")
    assert (second["namespace"], second["name"], second["level"]) == ("calls", "a", "WARNING")
    assert "namespace" not in third
    assert "ValueError: invalid literal for int() with base 10: 'boom'" in third["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_plain_lines_prefix_the_job() -> None:
    out = io.StringIO()
    configure_logging(stream=out)
    logging.getLogger("speechkit_operator.workflow").warning("failed: X", extra=job_fields("calls", "a"))
    assert out.getvalue().rstrip().endswith("WARNING  speechkit_operator.workflow: [calls/a] failed: X")


@pytest.mark.usefixtures("restore_logging")
def test_kopf_handler_bookkeeping_is_not_info() -> None:
    out = io.StringIO()
    configure_logging(stream=out)
    kopf = logging.getLogger("kopf.objects")
    kopf_object_record(kopf, "Timer 'poll/status.phase' succeeded.")
    kopf_object_record(kopf, "Handler 'submit' failed temporarily: x", logging.WARNING)
    logging.getLogger("speechkit_operator.workflow").info("job calls/a succeeded")
    text = out.getvalue()
    assert "Timer" not in text
    assert "failed temporarily" in text
    assert "job calls/a succeeded" in text


@pytest.mark.usefixtures("restore_logging")
def test_verbose_shows_kopf_bookkeeping_and_quiet_hides_info() -> None:
    out = io.StringIO()
    configure_logging(verbose=True, stream=out)
    kopf_object_record(logging.getLogger("kopf.objects"), "Timer 'poll/status.phase' succeeded.")
    assert "[calls/a] Timer 'poll/status.phase' succeeded." in out.getvalue()

    quiet = io.StringIO()
    configure_logging(quiet=True, stream=quiet)
    logging.getLogger("speechkit_operator.workflow").info("job calls/a submitted")
    assert quiet.getvalue() == ""


def test_log_format_flags() -> None:
    assert _parser().parse_args(["run", "--log-format", "json"]).log_format == "json"
    assert _parser().parse_args(["run"]).log_format == "plain"
    assert _parser().parse_args(["serve", "--log-format", "json"]).log_format == "json"
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--log-format", "xml"])
