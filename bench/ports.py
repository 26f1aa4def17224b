"""Loopback ports for the servers tests and benchmarks start: picked free, picked again when another process took one.

One copy for both: tests import it from here, and bench/ imports nothing from tests/ for it.

A port is free when it is picked and bound later, by the server the test or benchmark starts; in between another
process on the machine may bind it. The servers say so and exit (Python: "[Errno 98] Address already in use",
Prometheus: "bind: address already in use", PgBouncer: "bind(): Address already in use"), so each start is
retried on a newly picked port when its output says that, and only then.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psutil

T = TypeVar("T")

IN_USE = "address already in use"
ATTEMPTS = 5


class PortTaken(Exception):
    """The server could not bind its port: another process took it between the pick and the bind."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (start servers on it with on_free_port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def on_free_port(start: Callable[[int], T], attempts: int = ATTEMPTS) -> tuple[int, T]:
    """(port, start(port)) on a free port; when start raises PortTaken, again on another port."""
    for _ in range(attempts - 1):
        port = free_port()
        try:
            return port, start(port)
        except PortTaken:
            continue
    port = free_port()
    return port, start(port)


def wait_listening(
    process: subprocess.Popen[Any], ready: Callable[[], bool], output: Callable[[], str], what: str, timeout: float
) -> None:
    """Poll ready() until it holds; PortTaken when the process exited saying its port was taken.

    Any other exit, or no readiness within timeout, raises RuntimeError with the process's output.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            text = output()
            if IN_USE in text.lower():
                raise PortTaken(f"{what}: {text[-500:]}")
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready within {timeout:.0f} s:\n{output()[-3000:]}")
        time.sleep(0.2)


def listens_on(pid: int, port: int) -> bool:
    """Whether process PID or one of its children listens on TCP PORT: the server itself, not whoever took the port."""
    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            for process in family
            for c in process.net_connections("tcp")
        )
    except psutil.Error:  # it exited (wait_listening then reads its output) or is not ours to inspect
        return False


# What `partkey-exporter run` logs once its port is bound (exporter/daemon.py).
EXPORTER_LISTENING = "partkey-exporter listening on"
