"""The daemon as users run it with TLS: `partkey-exporter run --config FILE` (signals and reload: test_signals.py)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.reliability.harness import start_daemon
from tests.schema import create_list_table
from tests.support import answers_ready, poll, self_signed_certificate

CONFIG = """
listen: {{address: 127.0.0.1, port: {port}{tls}}}
log_level: {level}
targets:
  - name: live
    dsn: "{dsn}"
    tables:
      - table: chunks
        modulus: 4
"""


def _write(path: Path, dsn: str, port: int, level: str = "info", tls: str = "") -> None:
    path.write_text(CONFIG.format(port=port, dsn=dsn, level=level, tls=tls))


def test_tls_serves_metrics_with_the_configured_certificate(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    if not _openssl():
        pytest.skip("openssl command not found")
    create_list_table(conn, modulus=4, trigger=None)
    cert, key = self_signed_certificate(tmp_path, "127.0.0.1", san="IP:127.0.0.1")
    config = tmp_path / "partkey.yaml"
    tls = f", tls_cert_file: {cert}, tls_key_file: {key}"
    port, daemon = start_daemon(config, lambda port: _write(config, dsn, port, tls=tls))
    context = ssl.create_default_context(cafile=str(cert))
    try:
        poll(lambda: answers_ready(f"https://127.0.0.1:{port}", context), "the daemon ready", step=0.3)
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context, timeout=5) as response:
            assert response.status == 200
            assert 'partkey_up{target="live"} 1.0' in response.read().decode()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        daemon.stop()


def _openssl() -> bool:
    return any(os.access(os.path.join(d, "openssl"), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep))


def _run(config: Path) -> tuple[int, str]:
    """`partkey-exporter run --config FILE` as a user starts it: exit code and stderr."""
    process = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return process.returncode, process.stderr


def test_a_taken_port_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "partkey.yaml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _write(config, "postgresql://nobody@127.0.0.1:1/none", port)
        code, err = _run(config)
    assert code == 2, err
    assert f"listen: cannot listen on 127.0.0.1:{port}: Address already in use" in err
    assert "Traceback" not in err


def test_tls_files_that_are_not_pem_are_one_clear_line(tmp_path: Path) -> None:
    config, cert, key = tmp_path / "partkey.yaml", tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    with socket.socket() as probe:  # a port free now; nothing else needs it, since the run fails before serving
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _write(config, "postgresql://nobody@127.0.0.1:1/none", port, tls=f", tls_cert_file: {cert}, tls_key_file: {key}")
    code, err = _run(config)
    assert code == 2, err
    assert f"listen: cannot load the TLS files ({cert}, {key}):" in err
    assert "Traceback" not in err
