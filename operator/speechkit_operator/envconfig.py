"""Strict loading of settings from environment variables.

pydantic-settings ignores variables it does not know, so ``SPEECHKIT_OPERATOR_BAKEND=self-hosted``
would leave the default backend in force without a word. :func:`load_settings` refuses every
variable under the settings' prefix that names no field, suggesting the closest valid name, and
reports every invalid value by the variable's name, never the Python field's.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)

#: Variables Kubernetes injects for every Service in a pod's namespace ("service links"): a Service
#: named ``speechkit-operator-metrics`` becomes ``SPEECHKIT_OPERATOR_METRICS_SERVICE_HOST`` and
#: friends. They are not settings, so they are never refused.
_SERVICE_LINK = re.compile(
    r"_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)(_ADDR|_PORT|_PROTO)?)$"
)
#: ``<SERVICE>_PORT`` is a link only with a value like ``tcp://10.0.0.1:8080``.
_SERVICE_PORT_LINK = re.compile(r"_PORT$")
_LINK_URL = re.compile(r"^(tcp|udp|sctp)://\S+$")


class ConfigurationError(Exception):
    """One or more settings are wrong; each line of :attr:`problems` names its variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def variable_name(settings_class: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"{_prefix(settings_class)}{field.upper()}"


def unknown_variables(settings_class: type[BaseSettings], environ: Mapping[str, str]) -> list[str]:
    """A problem for each variable under the prefix that is not a setting, with the closest name."""
    prefix = _prefix(settings_class)
    known = {variable_name(settings_class, field) for field in settings_class.model_fields}
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(prefix) or upper in known:
            continue
        if _SERVICE_LINK.search(upper) or (
            _SERVICE_PORT_LINK.search(upper) and _LINK_URL.match(environ[name])
        ):
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; valid names start with {prefix}"
        problems.append(f"{name} is not a setting{hint}")
    return problems


def describe_validation_error(settings_class: type[BaseSettings], error: ValidationError) -> list[str]:
    """The errors of ``error``, each naming the variable it is about (values of secrets left out)."""
    problems = []
    for item in error.errors():
        location = item["loc"]
        message = item["msg"].removeprefix("Value error, ")
        if not location:
            problems.append(message)
            continue
        field = str(location[0])
        name = variable_name(settings_class, field) if field in settings_class.model_fields else field
        value = item.get("input")
        shown = ""
        if not _is_secret(settings_class, field) and isinstance(value, str | int | float) and value != "":
            text = str(value)
            shown = f" (got {text[:60]!r}{'…' if len(text) > 60 else ''})"
        problems.append(f"{name}: {message}{shown}")
    return problems


def load_settings(
    settings_class: type[S], *, environ: Mapping[str, str] | None = None, **overrides: Any
) -> S:
    """The settings from the environment (and ``overrides``), or :class:`ConfigurationError`."""
    problems = unknown_variables(settings_class, os.environ if environ is None else environ)
    try:
        settings = settings_class(**overrides)
    except ValidationError as exc:
        problems.extend(describe_validation_error(settings_class, exc))
    if problems:
        raise ConfigurationError(problems)
    return settings


def _prefix(settings_class: type[BaseSettings]) -> str:
    return str(settings_class.model_config.get("env_prefix", "")).upper()


def _is_secret(settings_class: type[BaseSettings], field: str) -> bool:
    info = settings_class.model_fields.get(field)
    return info is not None and "SecretStr" in repr(info.annotation)
