"""The version matrix tables, from the last `make test-matrix` run (tests/matrix/last-matrix.md)."""

from __future__ import annotations

from pathlib import Path

MATRIX = Path(__file__).resolve().parents[2] / "tests" / "matrix" / "last-matrix.md"


def render(matrix: Path = MATRIX) -> str:
    """The matrix file without its title line."""
    return "\n".join(line for line in matrix.read_text().splitlines() if not line.startswith("# ")).strip()
