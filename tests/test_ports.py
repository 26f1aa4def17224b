"""bench/ports.py: a server that lost its port to another process is started again on another port, and only then."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.ports import PortTaken, listens_on, on_free_port, wait_listening
from bench.processes import stop_process
from tests.reliability.harness import Daemon, write_daemon_config

# Binds 127.0.0.1:PORT, says so and waits: a server as small as a server gets.
SERVER = "import socket, sys, time\ns = socket.socket()\ns.bind(('127.0.0.1', int(sys.argv[1])))\ns.listen()\n"
SERVER += "print('listening', flush=True)\ntime.sleep(120)\n"


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another process (this one) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _run(code: str, port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    first = process.stdout.readline()  # "listening", or the start of a traceback when the bind failed
    wait_listening(
        process, lambda: first == "listening\n", lambda: first + process.communicate()[0], "server", timeout=60
    )
    return process


def test_a_lost_port_is_picked_again_and_the_server_started_there(taken: int) -> None:
    tried: list[int] = []

    def start(port: int) -> subprocess.Popen[str]:
        tried.append(taken if not tried else port)  # the first pick loses the race to `taken`
        return _run(SERVER, tried[-1])

    port, process = on_free_port(start)
    try:
        assert tried == [taken, port] and port != taken
        assert process.poll() is None
    finally:
        stop_process(process)


def test_any_other_failure_to_start_is_not_retried() -> None:
    tried: list[int] = []

    def start(port: int) -> subprocess.Popen[str]:
        tried.append(port)
        return _run("import sys\nprint('no config file')\nsys.exit(3)\n", port)

    with pytest.raises(RuntimeError, match="server exited with 3:\nno config file"):
        on_free_port(start)
    assert len(tried) == 1


def test_the_exporter_daemon_on_a_taken_port_is_told_apart(taken: int, tmp_path: Path) -> None:
    path = tmp_path / "partkey.yaml"
    write_daemon_config(path, "postgresql://nobody@127.0.0.1:1/nowhere?connect_timeout=1", taken)
    daemon = Daemon(path)
    try:
        with pytest.raises(PortTaken, match="Address already in use"):
            wait_listening(daemon.process, lambda: False, daemon.last_words, "the daemon", timeout=60)
    finally:
        daemon.stop()


def test_listens_on_tells_the_server_from_whoever_took_its_port(taken: int) -> None:
    """Benchmarks wait on listens_on: a port that answers because another process holds it is not their server's."""
    port, server = on_free_port(lambda port: _run(SERVER, port))
    try:
        assert listens_on(server.pid, port)
        assert not listens_on(server.pid, taken)  # it answers, but this test's process holds it
        assert listens_on(os.getpid(), taken)
    finally:
        stop_process(server)
    assert not listens_on(server.pid, port)  # gone
