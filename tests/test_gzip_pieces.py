"""gzip bodies joined from separately deflated pieces: exact bytes back, and only changed pieces compressed again."""

from __future__ import annotations

import gzip
import platform
import zlib

import pytest

from exporter.gzip_pieces import PieceCache, deflate, gzip_member
from exporter.malloc import return_large_blocks


def block(target: int, value: int) -> bytes:
    """One target's sample block of a family, as /metrics holds them (nearly the same text for every target)."""
    return b"".join(
        f'partkey_partition_rows{{target="db{target:03d}",partition="chunks_p{p:03d}"}} {value + p}.0\n'.encode()
        for p in range(100)
    )


def test_pieces_decode_to_exactly_their_concatenation() -> None:
    pieces = [b"# HELP x\n", b"", block(0, 1), b"a" * 70_000, block(1, 2), b"\x00\xff", block(2, 3)]
    plain = b"".join(pieces)
    body = gzip_member([deflate(p) for p in pieces], zlib.crc32(plain), len(plain))
    assert gzip.decompress(body) == plain
    cached = PieceCache().gzip((index, piece) for index, piece in enumerate(pieces))
    assert gzip.decompress(cached) == plain
    assert PieceCache().gzip([]) == gzip_member([], 0, 0) and gzip.decompress(gzip_member([], 0, 0)) == b""


def test_only_a_changed_piece_and_the_one_after_it_are_compressed_again() -> None:
    """Each piece uses the one before it as its dictionary: a change costs two compressions, not the body's."""
    cache = PieceCache()
    blocks = {target: block(target, 10) for target in range(50)}
    first = cache.gzip(sorted(blocks.items()))
    assert cache.compressed == 50
    assert cache.gzip(sorted(blocks.items())) == first and cache.compressed == 50  # nothing changed
    blocks[7] = block(7, 11)
    second = cache.gzip(sorted(blocks.items()))
    assert cache.compressed == 52  # db007's block, and db008's whose dictionary it is
    assert gzip.decompress(second) == b"".join(blocks[t] for t in range(50))
    del blocks[49]
    assert gzip.decompress(cache.gzip(sorted(blocks.items()))) == b"".join(blocks[t] for t in range(49))
    assert cache.compressed == 52  # the last piece gone: nothing else moves
    # Sharing the previous piece's text keeps the ratio close to compressing the body in one go.
    whole = len(gzip.compress(b"".join(blocks.values()), compresslevel=1))
    assert len(cache.gzip(sorted(blocks.items()))) < whole * 1.3


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_large_blocks_are_given_back_on_glibc() -> None:
    assert return_large_blocks() is True
