"""A real (moto) S3 server on a free loopback port, for the fast tiers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer

from tests.support.free_port import free_port


@contextmanager
def moto_s3_server() -> Iterator[str]:
    """Yields the endpoint URL; stops the server on exit."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
