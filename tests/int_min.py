"""Find a text whose hashtext() is INT_MIN: invert lookup3 for a 12-byte input, confirm with exporter.hashtext."""

from __future__ import annotations

import functools
import random

from exporter.hashtext import hashtext

_MASK = 0xFFFFFFFF
INT_MIN = -(2**31)

# lookup3's final() and mix() as (target, operation, source, rotation) steps; each step is a bijection that keeps
# the source unchanged, so the whole sequence runs backwards step by step.
_FINAL = [
    ("c", "^", "b", 0), ("c", "-", "b", 14), ("a", "^", "c", 0), ("a", "-", "c", 11),
    ("b", "^", "a", 0), ("b", "-", "a", 25), ("c", "^", "b", 0), ("c", "-", "b", 16),
    ("a", "^", "c", 0), ("a", "-", "c", 4), ("b", "^", "a", 0), ("b", "-", "a", 14),
    ("c", "^", "b", 0), ("c", "-", "b", 24),
]  # fmt: skip
_MIX = [
    ("a", "-", "c", 0), ("a", "^", "c", 4), ("c", "+", "b", 0),
    ("b", "-", "a", 0), ("b", "^", "a", 6), ("a", "+", "c", 0),
    ("c", "-", "b", 0), ("c", "^", "b", 8), ("b", "+", "a", 0),
    ("a", "-", "c", 0), ("a", "^", "c", 16), ("c", "+", "b", 0),
    ("b", "-", "a", 0), ("b", "^", "a", 19), ("a", "+", "c", 0),
    ("c", "-", "b", 0), ("c", "^", "b", 4), ("b", "+", "a", 0),
]  # fmt: skip


def _rot(x: int, k: int) -> int:
    """Rotate a uint32 left by k bits."""
    return ((x << k) | (x >> (32 - k))) & _MASK if k else x


def _backwards(state: dict[str, int], steps: list[tuple[str, str, str, int]]) -> None:
    """Undo the steps in reverse order."""
    for target, operation, source, rotation in reversed(steps):
        value = _rot(state[source], rotation)
        if operation == "^":
            state[target] ^= value
        elif operation == "-":
            state[target] = (state[target] + value) & _MASK
        else:
            state[target] = (state[target] - value) & _MASK


@functools.cache
def int_min_text(seed: int = 0) -> str:
    """A 12-character ASCII text (no NUL) whose hashtext() is exactly INT_MIN, found by a seeded search."""
    rng = random.Random(seed)
    start = (0x9E3779B9 + 12 + 3923095) & _MASK  # lookup3's initial a = b = c for a 12-byte input
    for _ in range(2_000_000):
        # Any final a and b, with c = 0x80000000: run final() and the one mix() of a 12-byte input backwards.
        state = {"a": rng.getrandbits(32), "b": rng.getrandbits(32), "c": 0x80000000}
        _backwards(state, _FINAL)
        _backwards(state, _MIX)
        data = b"".join(((state[k] - start) & _MASK).to_bytes(4, "little") for k in "abc")
        if all(0 < byte < 0x80 for byte in data):
            text = data.decode("ascii")
            # The inversion is only a search strategy: the port of the server's hashtext() has the last word.
            assert hashtext(text) == INT_MIN, text
            return text
    raise AssertionError("no INT_MIN text found")
