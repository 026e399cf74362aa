"""kopf handlers: thin adapters between kopf and :mod:`speechkit_operator.workflow`."""

from speechkit_operator.handlers.registration import register

__all__ = ["register"]
