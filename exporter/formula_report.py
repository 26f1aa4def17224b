"""The key formulas in plain words, for partkey-exporter report and partkey-migrate status alike."""

from __future__ import annotations

from exporter.introspect import Implementation


def _yes(flag: bool) -> str:
    return "YES" if flag else "NO"


def formula_lines(info: Implementation) -> list[str]:
    """Each place holding a key formula, its normalised form, which disagree, and what follows (plain words)."""
    found = info.formulas
    lines: list[str] = []
    if found is not None:
        if found.table_formula is not None:
            lines.append(f"  Key Formula: {found.table_formula.normalised} (from {found.maintained_by})")
            lines.append(f"  Key Source Columns: {', '.join(found.table_formula.columns)}")
        else:
            lines.append("  Key Formula: none found (no trigger, generated column, CHECK or partition expression)")
        if found.places:
            lines.append("  Formula Places:")
        for place in found.places:
            if place.formula is None:
                lines.append(f"    - {place.name}: unreadable ({place.error})")
                continue
            verdict = {True: "agrees", False: "DISAGREES", None: "keys the rows"}[place.agrees]
            if place.name == found.maintained_by:
                verdict = "keys the rows"
            elif place.kind == "unattached":
                verdict = "not tied to this table: not called from it, another modulus or source type"
            written = " (written abs(hashtext(...)) % n: overflows on INT_MIN)" if place.formula.overflows else ""
            lines.append(f"    - {place.name}: {place.formula.normalised} [{verdict}]{written}")
        lines.append(f"  Formula Drift: {_yes(found.drift)}")
        if found.findings:
            lines.append("  What Follows:")
            lines += [f"    - {finding}" for finding in found.findings]
    if info.schema_overflows:
        schema = info.table.split(".", 1)[0]
        places = ", ".join(
            f"{p.kind} {p.name}" + (f" x{p.count}" if p.count > 1 else "") for p in info.schema_overflows
        )
        lines.append(f"  Overflowing Formulas in Schema {schema}: {len(info.schema_overflows)} ({places})")
    return lines
