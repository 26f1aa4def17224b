"""Key formulas inside function bodies: PL/pgSQL (parse_plpgsql) and SQL functions, with pglast."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import pglast
from pglast.parser import ParseError, scan

from exporter.formula import (
    Formula,
    FormulaError,
    IsNull,
    Scope,
    called_functions,
    condition_from_node,
    count_overflows,
    find_formulas,
    formula_from_node,
    hashes_and_names,
    merge_branches,
)

# libpg_query's parse modes for PL/pgSQL assignments (RAW_PARSE_PLPGSQL_ASSIGN1..3): "target := expr".
_ASSIGN_MODES = (3, 4, 5)


@dataclass(frozen=True)
class BodyReading:
    """What one function body holds: its key formula (trigger) or formulas (helper), and overflow count."""

    formulas: tuple[Formula, ...]
    overflows: int
    error: str | None = None


def _expression(text: str) -> Any:
    """One SQL expression parsed as SELECT <text>."""
    statement: Any = pglast.parse_sql(f"SELECT {text}")[0].stmt
    return statement.targetList[0].val


def _split_assignment(query: str) -> tuple[str, str]:
    """('NEW.partition_key', 'abs(...) % 100') from a PL/pgSQL assignment's query text."""
    for token in scan(query):
        if token.name in ("COLON_EQUALS", "ASCII_61"):
            return query[: token.start].strip(), query[token.end + 1 :].strip()
    raise FormulaError(f"cannot find the assignment in {query!r}")


def _target(text: str) -> tuple[str, ...]:
    """An assignment target's name parts, unquoted; unquoted names fold to lower case like the server."""
    parts = []
    for token in scan(text):
        word = text[token.start : token.end + 1]
        if word == ".":
            continue
        parts.append(word[1:-1].replace('""', '"') if word.startswith('"') else word.lower())
    return tuple(parts)


def _statement(query: str, mode: int) -> str:
    """A PLpgSQL_expr as one SQL statement: a whole statement (mode 0), or its expression as SELECT <expr>."""
    if mode == 0:
        return query
    return "SELECT " + (", ".join(_split_assignment(query)) if mode in _ASSIGN_MODES else query)


def _queries(tree: Any) -> Iterator[tuple[str, int]]:
    """Every PLpgSQL_expr (query, parseMode) anywhere in a parse_plpgsql tree."""
    if isinstance(tree, dict):
        expression = tree.get("PLpgSQL_expr")
        if isinstance(expression, dict) and "query" in expression:
            yield str(expression["query"]), int(expression.get("parseMode", 2))
        for value in tree.values():
            yield from _queries(value)
    elif isinstance(tree, list):
        for item in tree:
            yield from _queries(item)


class _TriggerReader:
    """Follows a trigger function's statements to the value NEW.<key> ends with."""

    def __init__(self, key_column: str, columns: Collection[str] | None) -> None:
        self.key_column = key_column
        self.scope = Scope(columns=columns, row_alias="new")
        self.variables: dict[str, Formula] = {}

    def statements(self, body: list[Any], current: Formula | None) -> Formula | None:
        """The key after running `body`, starting from `current`."""
        for item in body:
            current = self.statement(item, current)
        return current

    def statement(self, item: dict[str, Any], current: Formula | None) -> Formula | None:
        """The key after one statement."""
        kind, node = next(iter(item.items()))
        if kind == "PLpgSQL_stmt_block":
            return self.statements(node.get("body", []), current)
        if kind == "PLpgSQL_stmt_assign":
            return self.assign(node, current)
        if kind == "PLpgSQL_stmt_if":
            return self.branch(node, current)
        return current

    def assign(self, node: dict[str, Any], current: Formula | None) -> Formula | None:
        """NEW.key := formula, or var := formula then NEW.key := var."""
        query = str(node["expr"]["PLpgSQL_expr"]["query"])
        target_text, value = _split_assignment(query)
        target = _target(target_text)
        if target == ("new", self.key_column):
            value_target = _target(value) if len(scan(value)) == 1 else ()
            if len(value_target) == 1 and value_target[0] in self.variables:
                return self.variables[value_target[0]]
            return formula_from_node(_expression(value), self.scope)
        if len(target) == 1:
            try:
                self.variables[target[0]] = formula_from_node(_expression(value), self.scope)
            except FormulaError:
                self.variables.pop(target[0], None)
        return current

    def branch(self, node: dict[str, Any], current: Formula | None) -> Formula | None:
        """IF cond THEN ... [ELSIF ...] ELSE ... END IF: branches joined into one CASE, then simplified."""
        arms: list[tuple[str, list[Any]]] = [(node["cond"]["PLpgSQL_expr"]["query"], node.get("then_body", []))]
        for elsif in node.get("elsif_list", []):
            arm = elsif["PLpgSQL_if_elsif"]
            arms.append((arm["cond"]["PLpgSQL_expr"]["query"], arm.get("stmts", [])))
        result = self.statements(node.get("else_body", []), current)
        for condition_text, body in reversed(arms):
            then = self.statements(body, current)
            if then == result:
                continue
            condition = _condition(condition_text, self.scope)
            result = merge_branches(condition, then, result)
        return result


def _condition(text: str, scope: Scope) -> IsNull:
    """An IF condition of the family: NEW.col IS [NOT] NULL."""
    return condition_from_node(_expression(text), scope)


def trigger_formula(functiondef: str, key_column: str, columns: Collection[str] | None = None) -> Formula | None:
    """The formula a PL/pgSQL trigger function assigns to NEW.<key_column>, IF branches merged; None if none."""
    tree = pglast.parse_plpgsql(functiondef)
    action = tree[0]["PLpgSQL_function"]["action"]
    return _TriggerReader(key_column, columns).statement(action, None)


def read_plpgsql(functiondef: str) -> BodyReading:
    """Every family formula and overflowing abs(hashtext()) in a PL/pgSQL function, parameters as names."""
    try:
        tree = pglast.parse_plpgsql(functiondef)
    except ParseError as error:
        return BodyReading((), 0, f"cannot parse the function: {error}")
    datums = tree[0]["PLpgSQL_function"].get("datums", [])
    parameters = tuple(d["PLpgSQL_var"]["refname"] for d in datums if "PLpgSQL_var" in d)
    scope = Scope(parameters=parameters)
    formulas: list[Formula] = []
    overflows = 0
    for query, mode in _queries(tree):
        text = _split_assignment(query)[1] if mode in _ASSIGN_MODES else query
        statement = query if mode == 0 else f"SELECT {text}"
        overflows += count_overflows(statement)
        try:
            node = pglast.parse_sql(statement)
        except ParseError:
            continue
        formulas += [f for f in find_formulas(node, scope) if f not in formulas]
    return BodyReading(tuple(formulas), overflows)


def trigger_key_use(functiondef: str, key_column: str) -> tuple[bool, int]:
    """Whether a PL/pgSQL function computes `key_column` with hashtext(), and how many abs(hashtext()) it holds."""
    try:
        tree = pglast.parse_plpgsql(functiondef)
    except ParseError:
        return False, 0
    datums = tree[0]["PLpgSQL_function"].get("datums", [])
    # NEW.<key> as an assignment or INTO target is a record field datum, not a column in any query.
    names = any(d.get("PLpgSQL_recfield", {}).get("fieldname") == key_column for d in datums)
    hashes = False
    overflows = 0
    for query, mode in _queries(tree):
        statement = _statement(query, mode)
        overflows += count_overflows(statement)
        try:
            found = hashes_and_names(pglast.parse_sql(statement), key_column)
        except ParseError:
            continue
        hashes, names = hashes or found[0], names or found[1]
    return hashes and names, overflows


def plpgsql_calls(functiondef: str) -> set[str]:
    """The functions a PL/pgSQL function calls in any of its statements (names without schema, lower case)."""
    try:
        tree = pglast.parse_plpgsql(functiondef)
    except ParseError:
        return set()
    calls: set[str] = set()
    for query, mode in _queries(tree):
        try:
            calls |= called_functions(pglast.parse_sql(_statement(query, mode)))
        except (ParseError, FormulaError):
            continue
    return calls


def read_sql_function(body: str, parameters: tuple[str, ...]) -> BodyReading:
    """Every family formula and overflowing abs(hashtext()) in a LANGUAGE sql body (old style or BEGIN ATOMIC)."""
    try:
        tree = pglast.parse_sql(body)
    except ParseError as error:
        return BodyReading((), 0, f"cannot parse the function: {error}")
    formulas = find_formulas(tree, Scope(parameters=parameters))
    return BodyReading(tuple(formulas), count_overflows(body))


def expression_formula(text: str, scope: Scope) -> Formula:
    """The formula of a catalog expression (pg_get_expr output)."""
    return formula_from_node(_expression(text), scope)
