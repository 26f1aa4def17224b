"""Every place the catalog holds a key formula, parsed (pglast), compared, and explained in plain words."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import pglast
import psycopg
from pglast.parser import ParseError
from psycopg.rows import dict_row

from exporter.formula import (
    Formula,
    FormulaError,
    Scope,
    called_functions,
    count_overflows,
    find_formulas,
    formula_from_node,
    renamed,
)
from exporter.formula_body import plpgsql_calls, read_plpgsql, read_sql_function, trigger_formula
from exporter.keyspec import KeySpec
from exporter.pg.catalog import relation_tree

PlaceKind = Literal["trigger", "generated", "check", "partition", "index", "helper", "unattached", "configured"]
# The place that maintains the key, by precedence: the one rows actually get their key from.
_MAINTAINERS: tuple[PlaceKind, ...] = ("generated", "partition", "trigger", "check")

# pg_trigger.tgtype bits: ROW=1, BEFORE=2, INSERT=4.
_BEFORE_ROW_INSERT = 1 | 2 | 4


@dataclass(frozen=True)
class Place:
    """One place that holds a key formula, what it says, and whether it agrees with the table's formula."""

    kind: PlaceKind
    name: str
    formula: Formula | None
    error: str | None = None
    agrees: bool | None = None

    @property
    def normalised(self) -> str | None:
        """The formula's canonical safe form."""
        return self.formula.normalised if self.formula else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "kind": self.kind,
            "name": self.name,
            "normalised": self.normalised,
            "as_written": self.formula.as_written if self.formula else None,
            "columns": list(self.formula.columns) if self.formula else [],
            "overflows": self.formula.overflows if self.formula else False,
            "agrees": self.agrees,
            "error": self.error,
        }


@dataclass(frozen=True)
class TableFormulas:
    """What one table's formulas say: each place, the one that keys rows, and the drift between them."""

    table: str
    places: tuple[Place, ...]
    table_formula: Formula | None
    maintained_by: str | None
    drift: bool
    findings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        data = asdict(self)
        data["places"] = [p.to_dict() for p in self.places]
        data["table_formula"] = self.table_formula.normalised if self.table_formula else None
        data["columns"] = list(self.table_formula.columns) if self.table_formula else []
        data["findings"] = list(self.findings)
        return data


_TABLE_SQL = """
SELECT c.oid, c.relkind, CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partkeydef,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) AS columns,
       ARRAY(SELECT format_type(a.atttypid, NULL) FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) AS types
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND c.relkind IN ('r', 'p')
"""

_TRIGGER_FUNCTIONS_SQL = (
    relation_tree("%(oid)s::oid")
    + """SELECT DISTINCT ON (p.oid) t.tgname, pn.nspname AS fschema, p.proname, l.lanname,
       pg_get_functiondef(p.oid) AS definition
FROM tree JOIN pg_trigger t ON t.tgrelid = tree.relid AND NOT t.tgisinternal AND t.tgtype & 7 = 7
JOIN pg_proc p ON p.oid = t.tgfoid
JOIN pg_namespace pn ON pn.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
ORDER BY p.oid, t.tgrelid <> %(oid)s, t.tgname
"""
)

_GENERATED_SQL = """
SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) AS expression
FROM pg_attribute a JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %(oid)s AND a.attgenerated <> '' AND NOT a.attisdropped
ORDER BY a.attnum
"""

# Column DEFAULTs and generated expressions: a helper called from one is tied to the table.
_DEFAULTS_SQL = """
SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) AS expression
FROM pg_attribute a JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %(oid)s AND NOT a.attisdropped
ORDER BY a.attnum
"""

_CHECKS_SQL = """
SELECT conname, pg_get_expr(conbin, conrelid) AS expression
FROM pg_constraint WHERE conrelid = %(oid)s AND contype = 'c' ORDER BY conname
"""

_INDEXES_SQL = """
SELECT c.relname, pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = %(oid)s AND i.indexprs IS NOT NULL ORDER BY c.relname
"""

_FUNCTIONS_SQL = """
SELECT p.oid, p.proname, l.lanname, p.prosrc, pg_get_functiondef(p.oid) AS definition,
       COALESCE(p.proargnames, '{{}}'::text[]) AS argnames, p.pronargs,
       ARRAY(SELECT format_type(t.oid, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS t(oid, n)
             ORDER BY t.n) AS argtypes,
       p.prorettype = 'trigger'::regtype AS is_trigger
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = %(schema)s AND l.lanname IN ('plpgsql', 'sql') AND {kind}
ORDER BY p.proname, p.oid
"""


def _functions_sql(conn: psycopg.Connection[Any]) -> str:
    """Plain functions only (prokind exists since PG 11; aggregates have no body to read)."""
    return _FUNCTIONS_SQL.format(kind="p.prokind = 'f'")


def _expression(text: str) -> Any:
    """A catalog expression (pg_get_expr output) parsed."""
    statement: Any = pglast.parse_sql(f"SELECT {text}")[0].stmt
    return statement.targetList[0].val


def _check_formula(text: str, key_column: str, scope: Scope) -> Formula | None:
    """The formula of CHECK (key = formula) (either side), or None when the CHECK is not about the key."""
    node = _expression(text)
    names = getattr(node, "name", None)
    if names and [getattr(n, "sval", "") for n in names] == ["="]:
        for key_side, formula_side in ((node.lexpr, node.rexpr), (node.rexpr, node.lexpr)):
            fields = [getattr(f, "sval", "") for f in getattr(key_side, "fields", None) or ()]
            if fields == [key_column]:
                return formula_from_node(formula_side, scope)
            if len(fields) == 1:
                return None  # CHECK (other_column = formula): about another column
    if key_column not in text:
        return None
    found = find_formulas(node, scope)
    if found:
        return found[0]
    if "hashtext" in text.lower():
        raise FormulaError("holds hashtext() outside the key formula family")
    return None


def _place(kind: PlaceKind, name: str, read: Any) -> Place | None:
    """Run one reader; a formula outside the family is listed with the reason instead of failing the check."""
    try:
        formula = read()
    except (FormulaError, ParseError) as error:
        return Place(kind, name, None, error=str(error))
    return Place(kind, name, formula) if formula is not None else None


def read_places(conn: psycopg.Connection[Any], spec: KeySpec) -> tuple[list[Place], tuple[str, ...]] | None:
    """Every place on the table (and its schema's helper functions) that holds a key formula; None: no table."""
    with conn.cursor(row_factory=dict_row) as cur:
        table = cur.execute(_TABLE_SQL, {"schema": spec.schema, "table": spec.table}).fetchone()
        if table is None:
            return None
        oid, columns = table["oid"], tuple(table["columns"])
        scope = Scope(columns=columns)
        places: list[Place | None] = []
        for row in cur.execute(_TRIGGER_FUNCTIONS_SQL, {"oid": oid}).fetchall():
            name = f"trigger {row['tgname']} -> {row['fschema']}.{row['proname']}()"
            if row["lanname"] == "plpgsql":
                definition = row["definition"]
                places.append(
                    _place("trigger", name, lambda d=definition: trigger_formula(d, spec.key_column, columns))
                )
        if conn.info.server_version >= 120000:
            for row in cur.execute(_GENERATED_SQL, {"oid": oid}).fetchall():
                if row["attname"] == spec.key_column:
                    expression = row["expression"]
                    places.append(
                        _place("generated", f"column {row['attname']}", lambda e=expression: _formula_of(e, scope))
                    )
        for row in cur.execute(_CHECKS_SQL, {"oid": oid}).fetchall():
            expression = row["expression"]
            places.append(
                _place(
                    "check",
                    f"CHECK {row['conname']}",
                    lambda e=expression: _check_formula(e, spec.key_column, scope),
                )
            )
        if table["partkeydef"]:
            definition = table["partkeydef"]
            places.append(
                _place("partition", f"PARTITION BY {definition}", lambda: _partition_formula(definition, scope))
            )
        for row in cur.execute(_INDEXES_SQL, {"oid": oid}).fetchall():
            definition = row["definition"]
            places.append(_place("index", f"index {row['relname']}", lambda d=definition: _first(d, scope)))
        trigger_functions = {p.name.split(" -> ")[1] for p in places if p is not None and p.kind == "trigger"}
        calls = _table_calls(cur, oid)
        reference = _maintainer_formula([p for p in places if p is not None])
        types = dict(zip(columns, table["types"], strict=True))
        for row in cur.execute(_functions_sql(conn), {"schema": spec.schema}).fetchall():
            signature = f"{spec.schema}.{row['proname']}()"
            if row["is_trigger"] or signature in trigger_functions:
                continue
            reading = _read_function(row)
            for formula in reading.formulas:
                # Tied to this table by what the parser sees: called from it, or the same formula (modulus and
                # source types) as the one that keys its rows. Anything else is listed as not tied to it.
                tied = row["proname"].lower() in calls or _same_source(formula, row, reference, types)
                if tied:
                    places.append(Place("helper", f"function {signature}", _as_columns(formula, row, reference)))
                else:
                    places.append(Place("unattached", f"function {signature}", formula))
    return [p for p in places if p is not None], columns


def _table_calls(cur: Any, oid: int) -> set[str]:
    """Every function the table's trigger functions, DEFAULTs, generated columns and CHECKs call."""
    calls: set[str] = set()
    for row in cur.execute(_TRIGGER_FUNCTIONS_SQL, {"oid": oid}).fetchall():
        if row["lanname"] == "plpgsql":
            calls |= plpgsql_calls(row["definition"])
    expressions = [r["expression"] for r in cur.execute(_DEFAULTS_SQL, {"oid": oid}).fetchall()]
    expressions += [r["expression"] for r in cur.execute(_CHECKS_SQL, {"oid": oid}).fetchall()]
    for text in expressions:
        try:
            calls |= called_functions(pglast.parse_sql(f"SELECT {text}"))
        except ParseError:
            continue
    return calls


def _maintainer_formula(places: list[Place]) -> Formula | None:
    """The formula of the place that keys the rows (the precedence compare() uses)."""
    return next((p.formula for kind in _MAINTAINERS for p in places if p.kind == kind and p.formula), None)


# Types whose text form hashtext() sees the same way: a text helper hashes a varchar column's value as stored.
_TEXT_TYPES = frozenset({"text", "character varying", "character", "name"})


def _type_family(name: str | None) -> str | None:
    """A type name with the text types folded into one."""
    return "text" if name in _TEXT_TYPES else name


def _same_source(formula: Formula, row: dict[str, Any], reference: Formula | None, types: dict[str, str]) -> bool:
    """True when a helper's formula has the table formula's modulus and hashes values of its source columns' types."""
    if reference is None or formula.modulus != reference.modulus:
        return False
    parameters = _parameters(row)
    argtypes = tuple(row["argtypes"])
    wanted = {_type_family(types.get(column)) for column in reference.columns}
    for name in formula.columns:
        kind = argtypes[parameters.index(name)] if name in parameters else types.get(name)
        if kind is None or _type_family(kind) not in wanted:
            return False
    return True


def _as_columns(formula: Formula, row: dict[str, Any], reference: Formula | None) -> Formula:
    """A tied helper's formula with its parameters spelt as the table's source columns, in order of first use, when
    it takes as many as the table's formula uses (key_of(v) hashing v compares with hashtext(tenant))."""
    parameters = _parameters(row)
    if reference is None or len(formula.columns) != len(reference.columns):
        return formula
    if not all(name in parameters for name in formula.columns):
        return formula
    names = dict(zip(formula.columns, reference.columns, strict=True))
    return replace(formula, source=renamed(formula.source, names))


def _formula_of(text: str, scope: Scope) -> Formula:
    """The formula a whole catalog expression is."""
    return formula_from_node(_expression(text), scope)


def _partition_formula(definition: str, scope: Scope) -> Formula | None:
    """The formula in a partition key definition such as LIST (abs(hashtext(x) % 100))."""
    tree = pglast.parse_sql(f"CREATE TABLE partkey_probe () PARTITION BY {definition}")
    found = find_formulas(tree, scope)
    return found[0] if found else None


def _first(statement: str, scope: Scope) -> Formula | None:
    """The first family formula in a statement (an index definition)."""
    found = find_formulas(pglast.parse_sql(statement), scope)
    return found[0] if found else None


def _parameters(row: dict[str, Any]) -> tuple[str, ...]:
    """A function's input parameter names, $n for unnamed ones."""
    names = tuple(row["argnames"])[: row["pronargs"]]
    return tuple(name or f"${i + 1}" for i, name in enumerate(names)) or tuple(
        f"${i + 1}" for i in range(row["pronargs"])
    )


def _read_function(row: dict[str, Any]) -> Any:
    """The formulas and overflow count of one plpgsql or sql function."""
    parameters = _parameters(row)
    if row["lanname"] == "plpgsql":
        return read_plpgsql(row["definition"])
    body = row["prosrc"] if str(row["prosrc"]).strip() else row["definition"]
    return read_sql_function(body, parameters)


def compare(
    table: str, places: list[Place], configured: Formula | None = None, major: int | None = None
) -> TableFormulas:
    """Which places agree with the formula that keys the rows, and what follows from each disagreement."""
    maintainer = next((p for kind in _MAINTAINERS for p in places if p.kind == kind and p.formula), None)
    # A configured formula is listed only when it says something: when it differs from the table's.
    reference_formula = maintainer.formula if maintainer is not None else None
    if configured is not None and reference_formula is not None and not configured.same_key(reference_formula):
        places = [*places, Place("configured", "key_expression in the configuration", configured)]
    reference = maintainer.formula if maintainer else None
    judged: list[Place] = []
    findings: list[str] = []
    for place in places:
        if place.formula is None or reference is None or place.kind == "unattached":
            judged.append(place)
            continue
        agrees = place.formula.same_key(reference)
        judged.append(Place(place.kind, place.name, place.formula, place.error, agrees))
        if not agrees and maintainer is not None:
            findings.append(_consequence(place, maintainer, major))
    for place in judged:
        if place.error is not None:
            findings.append(f"{place.name} holds a formula this tool cannot read: {place.error}")
        elif place.formula is not None and place.formula.overflows:
            findings.append(
                f"{place.name} takes abs() of hashtext(): ids that hash to INT_MIN raise 'integer out of range'"
            )
    drift = any(p.agrees is False for p in judged)
    return TableFormulas(
        table=table,
        places=tuple(judged),
        table_formula=reference,
        maintained_by=maintainer.name if maintainer else None,
        drift=drift,
        findings=tuple(findings),
    )


def _consequence(place: Place, maintainer: Place, major: int | None) -> str:
    """What a disagreement does, in plain words."""
    assert place.formula is not None and maintainer.formula is not None
    wrong_key = (
        "on PG 13+ every such INSERT fails with 'moving row to another partition during a BEFORE FOR EACH ROW "
        "trigger is not supported'; on PG 11-12 with 'new row ... violates partition constraint'"
    )
    if major is not None and major >= 13:
        wrong_key = (
            "every such INSERT fails with 'moving row to another partition during a BEFORE FOR EACH ROW "
            "trigger is not supported'"
        )
    elif major is not None:
        wrong_key = "every such INSERT fails with 'new row ... violates partition constraint'"
    differ = f"{place.name} computes {place.formula.normalised}, but {maintainer.name} computes " + (
        maintainer.formula.normalised
    )
    if place.kind == "helper" and maintainer.kind == "trigger":
        return (
            f"{differ}: the trigger recomputes the key with a different formula than the application sends "
            f"(when it asks {place.name.removeprefix('function ')} for the key); {wrong_key}"
        )
    if place.kind == "helper":
        return f"{differ}: keys the application gets from the helper land in the wrong partition or are rejected"
    if place.kind == "check":
        return f"{differ}: the CHECK rejects rows whose key the table computes, with 'violates check constraint'"
    if place.kind == "configured":
        return (
            f"{differ}: the configured expression is not the table's formula; what is checked or written with it "
            "counts the table's own keys as wrong"
        )
    if place.kind == "index":
        return f"{differ}: queries that filter by the table's formula cannot use this index"
    return f"{differ}: rows keyed by one are routed or rejected by the other"


def table_formulas(
    conn: psycopg.Connection[Any], spec: KeySpec, configured: Formula | None = None
) -> TableFormulas | None:
    """Read and compare every formula of one table; None when the table does not exist."""
    read = read_places(conn, spec)
    if read is None:
        return None
    return compare(spec.label, read[0], configured, conn.info.server_version // 10000)


_COLUMN_NAMES_SQL = """
SELECT a.attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND a.attnum > 0 AND NOT a.attisdropped
"""


def resolve_spec(conn: psycopg.Connection[Any], spec: KeySpec) -> KeySpec:
    """The spec keyed by the table's own formula when key_expression is auto; unchanged otherwise or if none."""
    if not spec.auto:
        columns = conn.execute(_COLUMN_NAMES_SQL, {"schema": spec.schema, "table": spec.table}).fetchall()
        missing = [c for c in spec.source_columns if columns and (c,) not in columns]
        if missing:
            raise ValueError(f"key_expression: {spec.label} has no column {', '.join(missing)}")
        return spec
    formulas = table_formulas(conn, spec)
    if formulas is None or formulas.table_formula is None:
        return spec
    return spec.with_formula(formulas.table_formula)


# ---------------------------------------------------------------------------------------------- schema-wide

_SCHEMA_EXPRESSIONS_SQL = """
SELECT 'generated' AS kind, c.relname || '.' || a.attname AS name, pg_get_expr(d.adbin, d.adrelid) AS text
FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
WHERE n.nspname = %(schema)s AND {generated}
UNION ALL
SELECT 'check', c.relname || '.' || k.conname, pg_get_expr(k.conbin, k.conrelid)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND k.contype = 'c' AND NOT c.relispartition
UNION ALL
SELECT 'index', ic.relname, pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND i.indexprs IS NOT NULL AND NOT c.relispartition
UNION ALL
SELECT 'partition', c.relname, pg_get_partkeydef(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind = 'p'
UNION ALL
SELECT 'view', c.relname, pg_get_viewdef(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind IN ('v', 'm')
"""

_WRAPS = {
    "generated": "SELECT {}",
    "check": "SELECT {}",
    "index": "{}",
    "partition": "CREATE TABLE partkey_probe () PARTITION BY {}",
    "view": "{}",
}


@dataclass(frozen=True)
class OverflowPlace:
    """One place in a schema whose formula overflows on INT_MIN."""

    kind: str
    name: str
    count: int


def schema_overflows(conn: psycopg.Connection[Any], schema: str) -> list[OverflowPlace]:
    """Every function, trigger function, generated column, CHECK, index, partition key and view that overflows."""
    found: list[OverflowPlace] = []
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute(_functions_sql(conn), {"schema": schema}).fetchall():
            count = _read_function(row).overflows
            if count:
                found.append(OverflowPlace("function", f"{schema}.{row['proname']}()", count))
        generated = "a.attgenerated <> ''" if conn.info.server_version >= 120000 else "false"
        for row in cur.execute(_SCHEMA_EXPRESSIONS_SQL.format(generated=generated), {"schema": schema}).fetchall():
            if not row["text"] or "hashtext" not in str(row["text"]).lower():
                continue
            count = count_overflows(str(row["text"]).rstrip().rstrip(";"), _WRAPS[row["kind"]])
            if count:
                found.append(OverflowPlace(row["kind"], row["name"], count))
    return found


@dataclass(frozen=True)
class DiscoveredTable:
    """A table whose key is maintained by a hashtext formula (for `tables: auto`)."""

    schema: str
    table: str
    key_column: str
    formula: Formula
    maintained_by: str


_CANDIDATES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'
  AND n.nspname LIKE %(pattern)s
ORDER BY n.nspname, c.relname
"""

_KEY_COLUMNS_SQL = """
SELECT a.attname FROM pg_attribute a
WHERE a.attrelid = %(oid)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
  AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
ORDER BY a.attnum
"""


def discover_tables(conn: psycopg.Connection[Any], schema_pattern: str = "%") -> list[DiscoveredTable]:
    """Every table (schema LIKE schema_pattern) whose integer key column a hashtext formula maintains."""
    found: list[DiscoveredTable] = []
    tables = conn.execute(_CANDIDATES_SQL, {"pattern": schema_pattern}).fetchall()
    for schema, table in tables:
        ident = f'"{schema.replace(chr(34), chr(34) * 2)}"."{table.replace(chr(34), chr(34) * 2)}"'
        for (column,) in conn.execute(_KEY_COLUMNS_SQL, {"oid": ident}).fetchall():
            spec = KeySpec(table=table, schema=schema, key_column=column)
            formulas = table_formulas(conn, spec)
            if formulas is None or formulas.table_formula is None or formulas.maintained_by is None:
                continue
            maintainer = next(p for p in formulas.places if p.name == formulas.maintained_by)
            if maintainer.kind == "partition" or maintainer.kind == "index":
                # A partition expression keys rows itself; it names no key column.
                continue
            found.append(DiscoveredTable(schema, table, column, formulas.table_formula, formulas.maintained_by))
    return found
