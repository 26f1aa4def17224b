"""Generated blocks inside hand-written pages: the text between a page's markers belongs to one generator."""

from __future__ import annotations

import re


def start_marker(name: str) -> str:
    """The line that opens block NAME."""
    return f"<!-- generated:{name} start (make docs writes this block; edit its source, not this text) -->"


def end_marker(name: str) -> str:
    """The line that closes block NAME."""
    return f"<!-- generated:{name} end -->"


class MissingBlockError(ValueError):
    """A page lacks the markers of a block it should hold."""


def replace_block(text: str, name: str, body: str) -> str:
    """TEXT with block NAME's contents replaced by BODY."""
    start, end = start_marker(name), end_marker(name)
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise MissingBlockError(f"no '{start}' ... '{end}' markers")
    return pattern.sub(lambda _: f"{start}\n{body.strip()}\n{end}", text, count=1)
