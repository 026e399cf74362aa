"""Log setup for ``run`` and ``serve``: plain text or one JSON object per line.

A record about a job carries its namespace and name: kopf's per-object records hold them in
``k8s_ref``; ours in ``k8s_namespace`` and ``k8s_name`` (see :func:`job_fields`). Plain lines prefix
them as ``[namespace/name]``; JSON lines have them as the fields ``namespace`` and ``name``.

INFO is for what a person watching wants to see: a job changing phase, the operator starting or
stopping. kopf's per-handler bookkeeping ("Timer 'poll' succeeded.", every few seconds per running
job) goes to DEBUG, that is to ``--verbose`` only.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["plain", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("plain", "json")

#: Libraries that print request details at DEBUG; never below WARNING.
_CHATTY = ("urllib3", "botocore", "boto3", "s3transfer", "kubernetes", "aiohttp.access")
#: kopf's records about single objects (handler started, succeeded, retried).
_KOPF_OBJECTS = "kopf.objects"

_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def job_fields(namespace: str, name: str) -> dict[str, str]:
    """``extra=`` for a record about one job."""
    return {"k8s_namespace": namespace, "k8s_name": name}


def _object_of(record: logging.LogRecord) -> tuple[str | None, str | None]:
    namespace = getattr(record, "k8s_namespace", None)
    name = getattr(record, "k8s_name", None)
    ref = getattr(record, "k8s_ref", None)
    if isinstance(ref, dict):
        namespace = namespace or ref.get("namespace")
        name = name or ref.get("name")
    return namespace, name


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-8s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        namespace, name = _object_of(record)
        if name and not record.getMessage().startswith("["):
            where = f"{namespace}/{name}" if namespace else name
            record.message = f"[{where}] {record.message}"
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, ``namespace`` and
    ``name`` of the job when the record is about one, ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        namespace, name = _object_of(record)
        if namespace:
            entry["namespace"] = namespace
        if name:
            entry["name"] = name
        for key, value in vars(record).items():
            if key in _STANDARD_ATTRIBUTES or key.startswith("k8s_") or key in entry:
                continue
            entry[key] = value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    *,
    verbose: bool = False,
    quiet: bool = False,
    log_format: LogFormat = "plain",
    stream: TextIO | None = None,
) -> None:
    """Replace the root logger's handlers with one that writes ``log_format`` to ``stream``."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else PlainFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    # kopf's per-object INFO lines are bookkeeping: visible with --verbose only.
    logging.getLogger(_KOPF_OBJECTS).setLevel(logging.DEBUG if verbose else max(level, logging.WARNING))
