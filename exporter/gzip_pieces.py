"""A gzip body joined from pieces deflated one by one, so that an unchanged piece is never compressed again."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Hashable, Iterable

# Level 1: a fleet's body is megabytes of repetitive text; level 6 saves little more and costs several times the CPU.
GZIP_LEVEL = 1
WINDOW = 32 * 1024  # how far back deflate refers: the most of the preceding piece a dictionary can use
# Magic, deflate, no flags, mtime 0 (the same bytes for the same body), no extra flags, OS unknown (RFC 1952).
_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# A final, empty block with fixed Huffman codes: what ends the deflate stream after the last piece.
_LAST_BLOCK = b"\x03\x00"


def deflate(data: bytes, before: bytes = b"") -> bytes:
    """DATA as raw deflate blocks ending in a sync flush, referring back at most into BEFORE (its dictionary)."""
    # Such pieces concatenate into one valid deflate stream when each one's BEFORE is what precedes it in the
    # stream (a suffix is enough): this is how pigz compresses in parallel.
    if not data:
        return b""
    if before:
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=before[-WINDOW:])
    else:
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def gzip_member(pieces: Iterable[bytes], crc: int, size: int) -> bytes:
    """One gzip member from deflate() pieces, given the CRC-32 and length of their uncompressed concatenation."""
    trailer = struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)
    return b"".join([_HEADER, *pieces, _LAST_BLOCK, trailer])


class PieceCache:
    """Gzip bodies made of keyed pieces; a piece is compressed again only when it or the piece before it changed."""

    # Each piece is deflated with the piece before it as its dictionary: in a /metrics body that is the previous
    # target's block of the same family, nearly the same text, so the body compresses about as well as in one go.

    def __init__(self) -> None:
        # key -> (the piece, the piece before it, the piece deflated)
        self._cache: dict[Hashable, tuple[bytes, bytes, bytes]] = {}
        self.compressed = 0  # pieces deflated since the start, for tests and the benchmark

    def gzip(self, pieces: Iterable[tuple[Hashable, bytes]]) -> bytes:
        """The gzip body of the pieces' concatenation, in order; pieces no longer in the body are forgotten."""
        kept: dict[Hashable, tuple[bytes, bytes, bytes]] = {}
        packed: list[bytes] = []
        crc = size = 0
        before = b""
        for key, data in pieces:
            if not data:
                continue
            cached = self._cache.get(key)
            if cached is not None and _same(cached[0], data) and _same(cached[1], before):
                deflated = cached[2]
            else:
                deflated = deflate(data, before)
                self.compressed += 1
            kept[key] = (data, before, deflated)
            packed.append(deflated)
            crc, size = zlib.crc32(data, crc), size + len(data)
            before = data
        self._cache = kept
        return gzip_member(packed, crc, size)


def _same(a: bytes, b: bytes) -> bool:
    """The same bytes: the same object (an unchanged fragment) or, rarely, equal text."""
    return a is b or a == b
