"""Copy the matrix tables from tests/matrix/last-matrix.md into docs/compatibility.md, between its markers."""

from __future__ import annotations

import sys
from pathlib import Path

from exporter._docsgen import compatibility_page
from exporter._docsgen.blocks import MissingBlockError, replace_block

ROOT = Path(__file__).resolve().parents[2]


def update(
    page: Path = ROOT / "docs" / "compatibility.md", matrix: Path = ROOT / "tests" / "matrix" / "last-matrix.md"
) -> bool:
    """Replace the block; False when the page has no markers."""
    try:
        page.write_text(replace_block(page.read_text(), "matrix", compatibility_page.render(matrix)))
    except MissingBlockError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(0 if update() else 1)
