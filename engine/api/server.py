"""Serve the API with uvicorn on a background thread of the engine's process."""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time

import uvicorn

from .app import create_app
from .tokens import TokenStore

log = logging.getLogger("cutline.api")


class ApiRefused(RuntimeError):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiServer:
    def __init__(self, engine_like, host: str = "127.0.0.1", port: int = 8765) -> None:
        self.tokens = TokenStore(engine_like.home)
        if not self.tokens.path.exists():
            self.tokens.ensure_default()  # first start; after that, revoked tokens stay revoked
        if not is_loopback(host) and not self.tokens.tokens():
            raise ApiRefused(f"refusing to listen on {host} (not loopback) without an API token")
        self.host = host
        self.app = create_app(engine_like, self.tokens)
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))  # bound here, so a busy port fails the caller at once, clearly
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False,
                                                     lifespan="off"))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "ApiServer":
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="cutline-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)
        if not self._server.started:
            raise RuntimeError("the API server did not start")
        log.info("API listening on %s", self.url)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()
