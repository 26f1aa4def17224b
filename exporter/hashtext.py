"""PostgreSQL's hashtext() in pure Python, so applications can compute partition keys without a round trip."""

from __future__ import annotations

import uuid
from typing import Literal

_MASK = 0xFFFFFFFF
_INT_MIN = -(2**31)


def _rot(x: int, k: int) -> int:
    """Rotate a uint32 left by k bits."""
    return ((x << k) | (x >> (32 - k))) & _MASK


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    """lookup3's mix(): scramble three uint32 words reversibly."""
    a = (a - c) & _MASK
    a ^= _rot(c, 4)
    c = (c + b) & _MASK
    b = (b - a) & _MASK
    b ^= _rot(a, 6)
    a = (a + c) & _MASK
    c = (c - b) & _MASK
    c ^= _rot(b, 8)
    b = (b + a) & _MASK
    a = (a - c) & _MASK
    a ^= _rot(c, 16)
    c = (c + b) & _MASK
    b = (b - a) & _MASK
    b ^= _rot(a, 19)
    a = (a + c) & _MASK
    c = (c - b) & _MASK
    c ^= _rot(b, 4)
    b = (b + a) & _MASK
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    """lookup3's final(): the last avalanche; only c is the result."""
    c ^= b
    c = (c - _rot(b, 14)) & _MASK
    a ^= c
    a = (a - _rot(c, 11)) & _MASK
    b ^= a
    b = (b - _rot(a, 25)) & _MASK
    c ^= b
    c = (c - _rot(b, 16)) & _MASK
    a ^= c
    a = (a - _rot(c, 4)) & _MASK
    b ^= a
    b = (b - _rot(a, 14)) & _MASK
    c ^= b
    c = (c - _rot(b, 24)) & _MASK
    return c


def hash_bytes(data: bytes) -> int:
    """PostgreSQL's hash_bytes() (lookup3, little-endian build) as an unsigned 32-bit integer."""
    length = len(data)
    a = b = c = (0x9E3779B9 + length + 3923095) & _MASK
    offset = 0
    while length - offset >= 12:
        a = (a + int.from_bytes(data[offset : offset + 4], "little")) & _MASK
        b = (b + int.from_bytes(data[offset + 4 : offset + 8], "little")) & _MASK
        c = (c + int.from_bytes(data[offset + 8 : offset + 12], "little")) & _MASK
        a, b, c = _mix(a, b, c)
        offset += 12
    tail = data[offset:]
    # The C switch falls through from the tail's length down to 1; on little-endian the low byte of c is
    # reserved for the length, so c takes bytes 8..10 shifted up by 8 bits.
    if len(tail) > 8:
        c = (c + (int.from_bytes(tail[8:], "little") << 8)) & _MASK
    if len(tail) > 4:
        b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    if tail:
        a = (a + int.from_bytes(tail[:4], "little")) & _MASK
    return _final(a, b, c)


def hashtext(text: str) -> int:
    """PostgreSQL's hashtext(text) as the signed int32 the server returns (UTF-8 database encoding)."""
    value = hash_bytes(text.encode("utf-8"))
    return value - 2**32 if value >= 2**31 else value


def pg_mod(dividend: int, divisor: int) -> int:
    """PostgreSQL's integer %: C truncation, so the result takes the dividend's sign (Python's % does not)."""
    remainder = abs(dividend) % abs(divisor)
    return -remainder if dividend < 0 else remainder


def partition_for(source: str, modulus: int = 100, formula: Literal["safe", "legacy"] = "safe") -> int:
    """The partition key the server computes: abs(hashtext(x) % n), or legacy abs(hashtext(x)) % n."""
    if modulus < 1:
        raise ValueError(f"modulus must be a positive integer, got {modulus}")
    hashed = hashtext(source)
    if formula == "legacy":
        if hashed == _INT_MIN:
            # The server's int4abs() raises here; so does every legacy trigger and CHECK.
            raise OverflowError("integer out of range")
        return pg_mod(abs(hashed), modulus)
    if formula != "safe":
        raise ValueError(f"formula must be 'safe' or 'legacy', got {formula!r}")
    return abs(pg_mod(hashed, modulus))


_INTEGER_TYPES = frozenset({"smallint", "integer", "bigint", "int2", "int4", "int8", "int"})


def text_form(value: str, type_name: str = "text") -> str:
    """The text the server hashes for `value` stored in a column of `type_name` (its ::text): uuid and integers
    are normalised as their output functions print them; text and varchar are hashed exactly as stored."""
    kind = type_name.lower().split("(")[0].strip()
    if kind == "uuid":
        return str(uuid.UUID(value.strip()))  # any spelling: upper case, braces, no hyphens
    if kind in _INTEGER_TYPES:
        return str(int(value.strip()))
    if kind in ("character", "char", "bpchar"):
        return value.rstrip(" ")  # char(n)::text drops the padding
    return value
