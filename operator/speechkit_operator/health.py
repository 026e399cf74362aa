"""The liveness endpoint while a replica waits for leadership (kopf serves it once it runs)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Standby(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path.split("?", 1)[0] == "/healthz"
        body = b'{"standby": true}' if ok else b"{}"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@contextlib.contextmanager
def standby_health(port: int | None) -> Iterator[None]:
    """Answer ``GET /healthz`` on ``port`` (all interfaces) until the block ends; nothing without a port."""
    if not port:
        yield
        return
    server = ThreadingHTTPServer(("0.0.0.0", port), _Standby)  # noqa: S104 - a pod's probe port
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
