"""`python -m exporter._docsgen` rewrites every generated block; `--check` only reports the stale ones (exit 1)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from exporter._docsgen import compatibility_page, config_page, http_page, metrics_page
from exporter._docsgen.blocks import replace_block

DOCS = Path(__file__).resolve().parents[2] / "docs"

# page -> block name -> generator. Each block has one source in the code; the page holds the prose around it.
BLOCKS: dict[str, dict[str, Callable[[], str]]] = {
    "configuration.md": {"config-keys": config_page.render},
    "metrics.md": {"metrics": metrics_page.render},
    "http-api.md": {"endpoints": http_page.render},
    "compatibility.md": {"matrix": compatibility_page.render},
}


def regenerate(docs: Path = DOCS) -> dict[Path, str]:
    """Every page whose generated blocks differ from its file, with its new text."""
    changed = {}
    for page, blocks in BLOCKS.items():
        path = docs / page
        old = path.read_text()
        new = old
        for name, render in blocks.items():
            new = replace_block(new, name, render())
        if new != old:
            changed[path] = new
    return changed


def main(argv: list[str] | None = None) -> int:
    """Write the stale pages, or with --check name them and fail."""
    parser = argparse.ArgumentParser(prog="python -m exporter._docsgen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page is stale")
    args = parser.parse_args(argv)
    changed = regenerate()
    for path, text in changed.items():
        if args.check:
            print(f"{path.relative_to(DOCS.parent)} is stale: run `make docs`", file=sys.stderr)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(DOCS.parent)}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
