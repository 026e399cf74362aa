"""configure_logging replaces the root logger's handlers (pytest's too): tests put them back."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

#: The loggers whose levels configure_logging sets.
CONFIGURED = ("kopf.objects", "urllib3", "botocore", "boto3", "s3transfer", "kubernetes", "aiohttp.access")


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """Run the block, then restore the root logger's handlers and level and the configured levels."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in CONFIGURED}
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, saved in levels.items():
            logging.getLogger(name).setLevel(saved)
