"""mTLS: client certificates are enforced when configured; the admin token is compared in constant time."""

from __future__ import annotations

import hmac
import http.client
import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.config import ListenConfig
from exporter.http import ExporterHTTPServer
from tests.schema import create_list_table, insert_rows
from tests.support import config_for, self_signed_certificate, serving
from tests.support import http as fetch

TOKEN = "tok-" + "7" * 28


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    return self_signed_certificate(directory, name)


def _signed(directory: Path, name: str, ca: tuple[Path, Path], san: str | None = None) -> tuple[Path, Path]:
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.crt"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
    extra = directory / f"{name}.ext"
    extra.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        str(extra),
        "-out",
        str(cert),
    )
    return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not found")
    ca = _ca(tmp_path, "client-ca")
    other_ca = _ca(tmp_path, "other-ca")
    server_ca = _ca(tmp_path, "server-ca")
    return {
        "ca": ca,
        "server_ca": server_ca,
        "server": _signed(tmp_path, "server", server_ca, "IP:127.0.0.1"),
        "client": _signed(tmp_path, "client", ca),
        "stranger": _signed(tmp_path, "stranger", other_ca),
    }


@pytest.fixture
def mtls(conn: psycopg.Connection[Any], dsn: str, pki: dict[str, tuple[Path, Path]]) -> Iterator[ExporterHTTPServer]:
    create_list_table(conn, modulus=4, trigger=None)
    exporter = Exporter(config_for(dsn, "modulus: 4"))
    exporter.run_all_once()
    listen = ListenConfig(
        address="127.0.0.1",
        port=0,
        tls_cert_file=pki["server"][0],
        tls_key_file=pki["server"][1],
        tls_client_ca_file=pki["ca"][0],
    )
    with serving(exporter, listen) as server:
        yield server


def _get(server: ExporterHTTPServer, pki: dict[str, tuple[Path, Path]], client: str | None) -> int:
    context = ssl.create_default_context(cafile=str(pki["server_ca"][0]))
    if client is not None:
        context.load_cert_chain(str(pki[client][0]), str(pki[client][1]))
    host, port = server.server_address[:2]
    connection = http.client.HTTPSConnection(str(host), int(port), context=context, timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        assert b'partkey_up{target="t1"} 1.0' in body
        return response.status
    finally:
        connection.close()


def test_mtls_client_certificate_signed_by_the_ca_gets_200(
    mtls: ExporterHTTPServer, pki: dict[str, tuple[Path, Path]]
) -> None:
    assert mtls.url.startswith("https://")
    assert _get(mtls, pki, "client") == 200


@pytest.mark.parametrize("client", [None, "stranger"], ids=["no-client-cert", "cert-from-another-ca"])
def test_mtls_refuses_the_handshake(
    mtls: ExporterHTTPServer, pki: dict[str, tuple[Path, Path]], client: str | None
) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)) as refused:
        _get(mtls, pki, client)
    assert any(word in str(refused.value).lower() for word in ("certificate", "alert", "reset", "closed", "eof")), (
        refused.value
    )
    # The refused client did not take the server down: a good client still gets its scrape.
    assert _get(mtls, pki, "client") == 200


@pytest.fixture
def guarded(conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ExporterHTTPServer]:
    monkeypatch.setenv("PARTKEY_REL_TOKEN", TOKEN)
    create_list_table(conn, modulus=4, trigger=None)
    insert_rows(conn, 40, modulus=4)
    exporter = Exporter(config_for(dsn, "modulus: 4", extra="admin_token_env: PARTKEY_REL_TOKEN"))
    with serving(exporter) as server:
        yield server


def test_token_goes_through_compare_digest(guarded: ExporterHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("exporter.admin.hmac.compare_digest", spy)  # the hmac module the admin API calls
    url = guarded.url + "/admin/partition/verify"
    right_length_wrong = "x" * len(TOKEN)
    cases = {
        "wrong length": f"Bearer {TOKEN[:-3]}",
        "right length, wrong token": f"Bearer {right_length_wrong}",
        "right token, one byte off": f"Bearer {TOKEN[:-1]}8",
        "wrong scheme": f"Basic {TOKEN}",
    }
    statuses = {name: fetch(url, "POST", b"{}", {"Authorization": value}) for name, value in cases.items()}
    good = fetch(url, "POST", b"{}", {"Authorization": f"Bearer {TOKEN}"})
    for name, (status, headers, body) in statuses.items():
        assert (status, json.loads(body)) == (401, {"error": "missing or wrong bearer token"}), name
        assert headers["WWW-Authenticate"] == "Bearer"
    assert good[0] == 200 and json.loads(good[2])["success"] is True
    # Every bearer token, whatever its length, went through hmac.compare_digest (no early == on the way).
    assert [given for given, _ in compared] == [
        TOKEN[:-3].encode(),
        right_length_wrong.encode(),
        (TOKEN[:-1] + "8").encode(),
        TOKEN.encode(),
    ]
    assert all(expected == TOKEN.encode() for _, expected in compared)
