"""One gzip member made of pieces deflated one by one, so that an unchanged piece is never compressed again."""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Level 1: a fleet's body is megabytes of repetitive text; level 6 saves ~15% more and costs several times the CPU.
GZIP_LEVEL = 1
# Magic, deflate, no flags, mtime 0 (the same bytes for the same body), no extra flags, OS unknown (RFC 1952).
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# A final, empty block with fixed Huffman codes: what ends the deflate stream after the last piece.
LAST_BLOCK = b"\x03\x00"


@dataclass(frozen=True)
class Piece:
    """Some text deflated on its own, ending on a byte boundary (sync flush), with its CRC-32 and length."""

    deflated: bytes
    crc: int
    size: int


def deflate(data: bytes) -> Piece:
    """DATA as raw deflate blocks that any deflate stream can continue with (no back-references before it)."""
    # Pieces made so concatenate into one valid deflate stream: each starts a new block on a byte boundary and
    # refers to nothing before it. (One gzip member per piece would do without the CRC arithmetic below, but
    # curl and other zlib users read the first member only.)
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return Piece(compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH), zlib.crc32(data), len(data))


def member(pieces: Sequence[Piece]) -> list[bytes]:
    """One gzip member of the pieces' text, in order, as the buffers to send."""
    crc = size = 0
    for piece in pieces:
        crc, size = crc32_combine(crc, piece.crc, piece.size), size + piece.size
    trailer = struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)
    return [HEADER, *(piece.deflated for piece in pieces), LAST_BLOCK + trailer]


_POLY = 0xEDB88320  # CRC-32, reflected


def _multiply(a: int, b: int) -> int:
    """a(x) b(x) modulo the CRC-32 polynomial (zlib's multmodp)."""
    m, product = 1 << 31, 0
    while True:
        if a & m:
            product ^= b
            if a & (m - 1) == 0:
                return product
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _powers() -> list[int]:
    """x^(2^k) modulo the polynomial, k = 0..31."""
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = _multiply(p, p)
    return table


_X2N = _powers()


def _python_crc32_combine(crc1: int, crc2: int, size2: int) -> int:
    """CRC-32 of A + B from CRC-32(A), CRC-32(B) and len(B) (zlib's crc32_combine, in Python)."""
    power, n, k = 1 << 31, size2, 3  # x^(8 n): shift crc1 past B's bits
    while n:
        if n & 1:
            power = _multiply(_X2N[k & 31], power)
        n >>= 1
        k += 1
    return _multiply(power, crc1) ^ crc2


def _zlib_crc32_combine() -> Callable[[int, int, int], int] | None:
    """zlib's own crc32_combine through ctypes (Python's zlib module does not offer it); None without libz."""
    try:
        function = ctypes.CDLL(ctypes.util.find_library("z") or "libz.so.1").crc32_combine
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_ulong, ctypes.c_ulong, ctypes.c_long]
    function.restype = ctypes.c_ulong
    combine: Callable[[int, int, int], int] = function
    return combine


crc32_combine: Callable[[int, int, int], int] = _zlib_crc32_combine() or _python_crc32_combine
