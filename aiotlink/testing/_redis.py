"""A real Redis server for tests: ``redis-server`` on a free loopback port, in a directory.

Durable following (``aiotlink.arq``) is tested against the real server, never a fake
of it: what must survive is Redis's own persistence (the append-only file) and its
scripts. The binary comes from the system (Debian's ``redis-server`` package).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

HOST = "127.0.0.1"
START_SECONDS = 10.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``redis-server`` on 127.0.0.1, persisted to an append-only file in ``directory``.

    ``with RedisServer() as redis:`` starts it on a free port in a fresh temporary
    directory and removes both at the end; :attr:`url` is its ``redis://`` URL.
    :meth:`restart` stops it (saving what it holds, as a deploy would) and starts it
    again on the same port from the same files; :meth:`kill` ends it with SIGKILL.
    Raises ``FileNotFoundError`` when no ``redis-server`` is installed.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, port: int = 0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(
                "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
            )
        self._binary = binary
        self._own_directory = directory is None
        self.directory = Path(
            tempfile.mkdtemp(prefix="aiotlink-redis-") if directory is None else directory
        )
        self.port = port or _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL, database 0."""
        return f"redis://{HOST}:{self.port}/0"

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} running={self.running}>"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers; raise RuntimeError if it does not."""
        command = [
            self._binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_SECONDS
        while not _ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log = self.directory / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server did not start on port {self.port}: {tail}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server as a deploy would: SIGTERM, which flushes the append-only file."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=START_SECONDS)
        except subprocess.TimeoutExpired:  # pragma: no cover - a redis-server deaf to SIGTERM
            process.kill()
            process.wait()

    def kill(self) -> None:
        """End the server with SIGKILL: what the last second of writes survives is AOF's."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop the server and start it again, on the same port, from the same files."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory if it made one."""
        self.stop()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with contextlib.suppress(OSError):
            self.close()
