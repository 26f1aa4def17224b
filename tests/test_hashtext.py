"""The Python hashtext() port agrees with the server bit for bit, and partition_for() with its formulas."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from exporter.hashtext import hash_bytes, hashtext, partition_for, pg_mod
from exporter.keyspec import KeyFormula, key_expression
from tests.schema import INT_MIN_COLLECTION_ID

# Keeps the server's answers in the order of the strings sent.
IN_ORDER = " FROM unnest(%s::text[]) WITH ORDINALITY AS u(x, n) ORDER BY n"

VECTORS = [
    ("abc", -785388649),
    ("", -1477818771),
    ("é", -983094517),
    ("ü日本語", 1307309297),
    (INT_MIN_COLLECTION_ID, -2147483648),
]

# Characters of 1, 2, 3 and 4 UTF-8 bytes, so every tail length (0-11 bytes) and block boundary gets hit.
_ALPHABET = "abcXYZ019-_ ~\t" + "éüßñØ" + "ЖжΩπ" + "日本語中文한국" + "€✓\u200b\ufeff" + "😀🐘𝄞"


def generated_strings(count: int = 10_000, seed: int = 20261125) -> list[str]:
    """Deterministic mixed strings: empty, every length 0-120, ASCII and multibyte, plus uuids."""
    rng = random.Random(seed)
    strings = ["", INT_MIN_COLLECTION_ID, "a" * 1000, "日" * 400]
    for length in range(121):
        strings.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(length)))
        strings.append("".join(rng.choice(_ALPHABET) for _ in range(length)))
    while len(strings) < count:
        kind = rng.randrange(4)
        if kind == 0:
            strings.append(str(uuid.UUID(int=rng.getrandbits(128), version=4)))
        elif kind == 1:
            strings.append("".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(rng.randrange(121))))
        elif kind == 2:
            strings.append("".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(121))))
        else:
            # Any code point the server accepts in text: no NUL, no surrogates.
            chars = []
            for _ in range(rng.randrange(121)):
                point = rng.randrange(1, 0x110000)
                chars.append(chr(point if not 0xD800 <= point <= 0xDFFF else 0xE000))
            strings.append("".join(chars))
    return strings[:count]


@pytest.mark.parametrize(("text", "expected"), VECTORS)
def test_known_vectors(text: str, expected: int) -> None:
    assert hashtext(text) == expected


def test_hash_bytes_is_unsigned_view_of_hashtext() -> None:
    assert hash_bytes(b"abc") == -785388649 + 2**32
    assert hash_bytes("é".encode()) == -983094517 + 2**32


def test_pg_mod_truncates_like_c() -> None:
    assert [pg_mod(-7, 3), pg_mod(7, 3), pg_mod(-7, -3), pg_mod(7, -3), pg_mod(-6, 3)] == [-1, 1, -1, 1, 0]
    assert pg_mod(-785388649, 100) == -49
    assert -785388649 % 100 == 51  # Python's % would give a different, wrong key


def test_partition_for_vectors() -> None:
    assert partition_for("abc") == 49
    assert partition_for("abc", 10) == 9
    assert partition_for("abc", formula="legacy") == 49
    assert partition_for("ü日本語") == 97
    assert partition_for("") == 71
    assert partition_for(INT_MIN_COLLECTION_ID) == 48
    assert partition_for(INT_MIN_COLLECTION_ID, 1000) == 648
    assert partition_for(INT_MIN_COLLECTION_ID, 1) == 0


def test_legacy_formula_overflows_on_int_min_like_the_server() -> None:
    with pytest.raises(OverflowError, match=r"^integer out of range$"):
        partition_for(INT_MIN_COLLECTION_ID, formula="legacy")


@pytest.mark.parametrize("modulus", [0, -5])
def test_bad_modulus_rejected(modulus: int) -> None:
    with pytest.raises(ValueError, match="modulus must be a positive integer"):
        partition_for("abc", modulus)


def test_bad_formula_rejected() -> None:
    with pytest.raises(ValueError, match="formula must be 'safe' or 'legacy'"):
        partition_for("abc", formula="unsafe")  # type: ignore[arg-type]


def test_generated_strings_cover_what_they_claim() -> None:
    strings = generated_strings()
    assert len(strings) == 10_000
    assert len(set(strings)) > 9_800
    assert "" in strings
    assert {len(s) for s in strings} >= set(range(121))
    assert any(len(s.encode()) >= 4 * len(s) > 0 for s in strings)
    assert all("\x00" not in s for s in strings)


@pytest.mark.versioned("hashtext agreement")
def test_agrees_with_server_on_10k_strings(conn: psycopg.Connection[Any], does: Callable[[str, str], None]) -> None:
    assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
    strings = generated_strings()
    rows = conn.execute("SELECT x, hashtext(x)" + IN_ORDER, (strings,)).fetchall()
    assert [r[0] for r in rows] == strings  # the strings made the round trip unchanged
    mismatches = [(text, server, hashtext(text)) for text, server in rows if hashtext(text) != server]
    assert mismatches == []
    does("`partkey-exporter key <id>` (Python hashtext)", f"equals the server on {len(strings)} strings")


@pytest.mark.versioned("hashtext agreement")
def test_vectors_on_server(conn: psycopg.Connection[Any]) -> None:
    texts = [text for text, _ in VECTORS]
    rows = conn.execute("SELECT hashtext(x)" + IN_ORDER, (texts,))
    assert [r[0] for r in rows.fetchall()] == [expected for _, expected in VECTORS]


@pytest.mark.versioned("hashtext agreement")
@pytest.mark.parametrize("modulus", [100, 7, 1000])
def test_partition_for_agrees_with_server_safe_formula(conn: psycopg.Connection[Any], modulus: int) -> None:
    strings = generated_strings(3000, seed=modulus)
    rows = conn.execute("SELECT abs(hashtext(x) %% %s)" + IN_ORDER, (modulus, strings)).fetchall()
    assert [r[0] for r in rows] == [partition_for(s, modulus) for s in strings]


@pytest.mark.versioned("hashtext agreement")
def test_partition_for_agrees_with_server_legacy_formula(conn: psycopg.Connection[Any]) -> None:
    strings = [s for s in generated_strings(3000, seed=7) if s != INT_MIN_COLLECTION_ID]
    rows = conn.execute("SELECT abs(hashtext(x)) %% 100" + IN_ORDER, (strings,)).fetchall()
    assert [r[0] for r in rows] == [partition_for(s, formula="legacy") for s in strings]


@pytest.mark.versioned("hashtext agreement")
@pytest.mark.parametrize("formula", ["safe", "legacy"])
def test_partition_for_agrees_with_the_exporters_key_sql(conn: psycopg.Connection[Any], formula: KeyFormula) -> None:
    """The SQL the exporter verifies with and the Python the CLI answers with give the same keys."""
    strings = [str(uuid.UUID(int=n * 7919 + 1, version=4)) for n in range(2000)]
    # The expression holds a bare '%': pass the strings as a literal, not as a bound parameter.
    query = sql.SQL("SELECT {} FROM unnest({}::text[]) WITH ORDINALITY AS u(x, n) ORDER BY n").format(
        key_expression(sql.Identifier("x"), 100, formula), sql.Literal(strings)
    )
    rows = conn.execute(query).fetchall()
    assert [r[0] for r in rows] == [partition_for(s, 100, formula) for s in strings]


@pytest.mark.versioned("hashtext agreement")
def test_int_min_on_server(conn: psycopg.Connection[Any]) -> None:
    safe = conn.execute(
        "SELECT hashtext(x), abs(hashtext(x) %% 100) FROM (SELECT %s::text AS x) s", (INT_MIN_COLLECTION_ID,)
    ).fetchone()
    assert safe == (-2147483648, partition_for(INT_MIN_COLLECTION_ID))
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match=r"^integer out of range$"):
        conn.execute("SELECT abs(hashtext(%s)) %% 100", (INT_MIN_COLLECTION_ID,))
