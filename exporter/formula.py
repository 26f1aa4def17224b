"""Partition-key formulas of the hashtext family, parsed with PostgreSQL's own parser (pglast) and normalised.

The family is `abs(hashtext(<source>)) % n` (overflows on INT_MIN) and `abs(hashtext(<source>) % n)` (safe),
where <source> is built from the table's columns, text literals, `||`, COALESCE and CASE WHEN col IS [NOT] NULL.
Both spellings give the same key for every other hash, so a normalised formula is its source and its modulus;
whether the spelling overflows is kept beside it. Importable without psycopg.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Union

import pglast
from pglast import ast, enums
from pglast.parser import ParseError, scan

from exporter.hashtext import hashtext, pg_mod

_INT_MIN = -(2**31)
# Casts that do not change a value's text: hashtext() takes text, and varchar/char -> text is binary.
_TEXT_TYPES = frozenset({"text", "varchar", "character varying", "bpchar", "char", "character", "name"})
_INT_TYPES = frozenset({"int", "int2", "int4", "int8", "integer", "smallint", "bigint"})


class FormulaError(ValueError):
    """An expression that is not a key formula of the hashtext family, with the reason."""


@dataclass(frozen=True)
class Column:
    """A column of the table, hashed in its text form (column::text)."""

    name: str


@dataclass(frozen=True)
class Text:
    """A literal text, such as a separator or a fallback."""

    value: str


@dataclass(frozen=True)
class Concat:
    """a || b || ...: NULL when any part is NULL."""

    parts: tuple[Source, ...]


@dataclass(frozen=True)
class Coalesce:
    """COALESCE(a, b, ...): the first part that is not NULL."""

    args: tuple[Source, ...]


@dataclass(frozen=True)
class IsNull:
    """The condition `column IS NULL`, or `IS NOT NULL` when negated."""

    column: str
    negated: bool


@dataclass(frozen=True)
class Case:
    """CASE WHEN cond THEN a ... ELSE b END; without ELSE the result is NULL."""

    whens: tuple[tuple[IsNull, Source], ...]
    default: Source | None


Source = Union[Column, Text, Concat, Coalesce, Case]  # noqa: UP007 - a runtime alias, used before its parts exist


@dataclass(frozen=True)
class Formula:
    """One normalised key formula: key = abs(hashtext(source) % modulus); `overflows` for abs(hashtext()) % n."""

    source: Source
    modulus: int
    overflows: bool = False

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the key depends on, in order of first use."""
        return columns_of(self.source)

    def same_key(self, other: Formula) -> bool:
        """True when both give the same key for every row (the safe and overflowing spellings do)."""
        return self.source == other.source and self.modulus == other.modulus

    @property
    def normalised(self) -> str:
        """The canonical text of the formula, in its safe form."""
        return f"abs(hashtext({render(self.source)}) % {self.modulus})"

    @property
    def as_written(self) -> str:
        """The canonical text keeping the spelling's variant, so an overflowing one shows it."""
        if self.overflows:
            return f"abs(hashtext({render(self.source)})) % {self.modulus}"
        return self.normalised

    def source_text(self, values: Mapping[str, str | None]) -> str | None:
        """The text hashtext() receives for a row whose columns have these text forms (None is NULL)."""
        return evaluate(self.source, values)

    def key(self, values: Mapping[str, str | None], safe: bool = True) -> int | None:
        """The key the server computes for a row given each column's text form; None when the source is NULL."""
        text = self.source_text(values)
        if text is None:
            return None
        hashed = hashtext(text)
        if not safe and self.overflows and hashed == _INT_MIN:
            raise OverflowError("integer out of range")
        return abs(pg_mod(hashed, self.modulus))


def columns_of(source: Source) -> tuple[str, ...]:
    """Column names used by a source, in order of first use."""
    seen: list[str] = []
    for node in _walk(source):
        names = [node.name] if isinstance(node, Column) else [node.column] if isinstance(node, IsNull) else []
        for name in names:
            if name not in seen:
                seen.append(name)
    return tuple(seen)


def _walk(node: Source | IsNull) -> Iterator[Source | IsNull]:
    """Every node of a source tree, depth first."""
    yield node
    if isinstance(node, Concat):
        for part in node.parts:
            yield from _walk(part)
    elif isinstance(node, Coalesce):
        for arg in node.args:
            yield from _walk(arg)
    elif isinstance(node, Case):
        for condition, result in node.whens:
            yield from _walk(condition)
            yield from _walk(result)
        if node.default is not None:
            yield from _walk(node.default)


def evaluate(source: Source, values: Mapping[str, str | None]) -> str | None:
    """SQL semantics in Python: || gives NULL on a NULL part, COALESCE takes the first non-NULL."""
    if isinstance(source, Column):
        if source.name not in values:
            raise KeyError(f"no value given for column {source.name!r}")
        return values[source.name]
    if isinstance(source, Text):
        return source.value
    if isinstance(source, Concat):
        parts = [evaluate(part, values) for part in source.parts]
        return None if any(part is None for part in parts) else "".join(p for p in parts if p is not None)
    if isinstance(source, Coalesce):
        for arg in source.args:
            value = evaluate(arg, values)
            if value is not None:
                return value
        return None
    for condition, result in source.whens:
        if (values.get(condition.column) is None) != condition.negated:
            return evaluate(result, values)
    return None if source.default is None else evaluate(source.default, values)


def quote_ident(name: str) -> str:
    """An identifier as PostgreSQL prints it: bare when lower-case and plain, else double-quoted."""
    plain = name.isidentifier() and name == name.lower() and name.isascii()
    return name if plain else '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A standard-conforming string literal."""
    return "'" + value.replace("'", "''") + "'"


def render(source: Source, column: Callable[[str], str] = quote_ident) -> str:
    """The canonical SQL text of a source; `column` spells each column (e.g. NEW."x"::text)."""
    if isinstance(source, Column):
        return column(source.name)
    if isinstance(source, Text):
        return quote_literal(source.value)
    if isinstance(source, Concat):
        return " || ".join(render(part, column) for part in source.parts)
    if isinstance(source, Coalesce):
        return "COALESCE(" + ", ".join(render(arg, column) for arg in source.args) + ")"
    branches = " ".join(
        f"WHEN {column(c.column)} IS {'NOT ' if c.negated else ''}NULL THEN {render(result, column)}"
        for c, result in source.whens
    )
    default = f" ELSE {render(source.default, column)}" if source.default is not None else ""
    return f"CASE {branches}{default} END"


# ---------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Scope:
    """What names an expression may use: the table's columns, a row alias (NEW) and function parameters."""

    columns: Collection[str] | None = None
    row_alias: str | None = None
    parameters: tuple[str, ...] = ()

    def column(self, fields: tuple[str, ...]) -> str:
        """The column a ColumnRef names, or FormulaError."""
        if self.row_alias is not None and len(fields) == 2 and fields[0].lower() == self.row_alias.lower():
            fields = fields[1:]
        if len(fields) != 1:
            raise FormulaError(f"{'.'.join(fields)} is not a column of the table")
        name = fields[0]
        if self.columns is not None and name not in self.columns and name not in self.parameters:
            raise FormulaError(f"{name} is not a column of the table")
        return name


def _names(nodes: Any) -> tuple[str, ...]:
    """The strings of a pglast name list."""
    return tuple(str(getattr(n, "sval", "*")) for n in nodes or ())


def _function(call: ast.FuncCall) -> str:
    """A function's name, accepting an explicit pg_catalog schema."""
    names = _names(call.funcname)
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    return ".".join(names).lower()


def _type(cast: Any) -> str:
    """A cast's target type name without pg_catalog, e.g. 'text', 'varchar', 'int4'."""
    names = [n for n in _names(cast.typeName.names) if n != "pg_catalog"]
    return " ".join(names).lower()


def _strip_int_casts(node: Any) -> Any:
    """An integer expression without ::int casts around it."""
    while isinstance(node, ast.TypeCast) and _type(node) in _INT_TYPES:
        node = node.arg
    return node


def _describe(node: Any) -> str:
    """A short description of a node outside the family, for error messages."""
    if isinstance(node, ast.SubLink):
        return "a subquery"
    if isinstance(node, ast.FuncCall):
        return f"function {_function(node)}() is outside the key formula family"
    if isinstance(node, ast.A_Expr):
        return f"operator {' '.join(_names(node.name))} is outside the key formula family"
    if isinstance(node, ast.TypeCast):
        return f"cast to {_type(node)} is outside the key formula family"
    return f"{type(node).__name__} is outside the key formula family"


def _modulus(node: Any) -> int:
    """A positive integer constant."""
    node = _strip_int_casts(node)
    value = getattr(getattr(node, "val", None), "ival", None) if isinstance(node, ast.A_Const) else None
    if not isinstance(value, int) or value < 1:
        raise FormulaError("the modulus must be a positive integer constant")
    return value


def _mod_operands(node: Any) -> tuple[Any, Any] | None:
    """(a, n) for `a % n` or mod(a, n)."""
    if isinstance(node, ast.A_Expr) and _names(node.name) == ("%",) and node.lexpr is not None:
        return node.lexpr, node.rexpr
    if isinstance(node, ast.FuncCall) and _function(node) == "mod" and len(node.args or ()) == 2:
        args: Any = node.args
        return args[0], args[1]
    return None


def _call(node: Any, name: str) -> Any | None:
    """The one argument of name(arg), or None."""
    if isinstance(node, ast.FuncCall) and _function(node) == name and len(node.args or ()) == 1:
        args: Any = node.args
        return args[0]
    return None


def formula_from_node(node: Any, scope: Scope) -> Formula:
    """The formula of one parsed expression, or FormulaError saying why it is not one."""
    node = _strip_int_casts(node)
    operands = _mod_operands(node)
    if operands is not None:
        inner = _call(_strip_int_casts(operands[0]), "abs")
        hashed = _call(_strip_int_casts(inner), "hashtext") if inner is not None else None
        if hashed is None:
            raise FormulaError("expected abs(hashtext(...)) % n or abs(hashtext(...) % n)")
        return Formula(source_from_node(hashed, scope), _modulus(operands[1]), overflows=True)
    inner = _call(node, "abs")
    if inner is not None:
        operands = _mod_operands(_strip_int_casts(inner))
        hashed = _call(_strip_int_casts(operands[0]), "hashtext") if operands is not None else None
        if operands is None or hashed is None:
            raise FormulaError("expected abs(hashtext(...)) % n or abs(hashtext(...) % n)")
        return Formula(source_from_node(hashed, scope), _modulus(operands[1]), overflows=False)
    raise FormulaError(f"not a key formula: {_describe(node)}")


def source_from_node(node: Any, scope: Scope) -> Source:
    """The normalised source of hashtext(): text casts dropped, || flattened, COALESCE/CASE simplified."""
    if isinstance(node, ast.TypeCast):
        if _type(node) not in _TEXT_TYPES:
            raise FormulaError(_describe(node))
        return source_from_node(node.arg, scope)
    if isinstance(node, ast.ColumnRef):
        return Column(scope.column(_names(node.fields)))
    if isinstance(node, ast.ParamRef):
        number = int(node.number or 0)
        if not 1 <= number <= len(scope.parameters):
            raise FormulaError(f"${number} is not a parameter of the function")
        return Column(scope.parameters[number - 1])
    if isinstance(node, ast.A_Const):
        if node.isnull:
            raise FormulaError("a NULL literal in the key source")
        value = node.val
        text = getattr(value, "sval", None)
        if text is None:
            integer = getattr(value, "ival", None)
            text = getattr(value, "fval", None) if integer is None else str(integer)
        if text is None:
            raise FormulaError(f"literal {type(value).__name__} is outside the key formula family")
        return Text(str(text))
    if isinstance(node, ast.A_Expr) and _names(node.name) == ("||",) and node.lexpr is not None:
        return _concat(source_from_node(node.lexpr, scope), source_from_node(node.rexpr, scope))
    if isinstance(node, ast.CoalesceExpr):
        return _coalesce(tuple(source_from_node(arg, scope) for arg in node.args or ()))
    if isinstance(node, ast.CaseExpr):
        if node.arg is not None:
            raise FormulaError("CASE <expr> WHEN is outside the key formula family; use CASE WHEN col IS NULL")
        whens = tuple((condition_from_node(w.expr, scope), source_from_node(w.result, scope)) for w in node.args or ())
        default = source_from_node(node.defresult, scope) if node.defresult is not None else None
        return simplify_case(Case(whens, default))
    raise FormulaError(_describe(node))


def condition_from_node(node: Any, scope: Scope) -> IsNull:
    """A CASE or IF condition: col IS [NOT] NULL."""
    if isinstance(node, ast.NullTest) and not node.argisrow:
        target = node.arg
        while isinstance(target, ast.TypeCast):
            target = target.arg
        if isinstance(target, ast.ColumnRef | ast.ParamRef):
            column = source_from_node(target, scope)
            assert isinstance(column, Column)
            return IsNull(column.name, negated=node.nulltesttype == enums.NullTestType.IS_NOT_NULL)
    raise FormulaError("a condition other than <column> IS [NOT] NULL is outside the key formula family")


def _concat(left: Source, right: Source) -> Source:
    """left || right, flattened, with adjacent literals joined."""
    parts: list[Source] = []
    for side in (left, right):
        for part in side.parts if isinstance(side, Concat) else (side,):
            if parts and isinstance(part, Text) and isinstance(parts[-1], Text):
                parts[-1] = Text(parts[-1].value + part.value)
            else:
                parts.append(part)
    return parts[0] if len(parts) == 1 else Concat(tuple(parts))


def _coalesce(args: tuple[Source, ...]) -> Source:
    """COALESCE flattened; arguments after a literal can never be reached."""
    flat: list[Source] = []
    for arg in args:
        for item in arg.args if isinstance(arg, Coalesce) else (arg,):
            if item not in flat:
                flat.append(item)
            if isinstance(item, Text):
                break
        if flat and isinstance(flat[-1], Text):
            break
    return flat[0] if len(flat) == 1 else Coalesce(tuple(flat))


def _differences(a: Source, b: Source) -> list[tuple[Source, Source]] | None:
    """Where two sources differ, as (a_part, b_part) pairs; None when their shapes differ above a leaf."""
    if a == b:
        return []
    if isinstance(a, Concat) and isinstance(b, Concat) and len(a.parts) == len(b.parts):
        found: list[tuple[Source, Source]] = []
        for x, y in zip(a.parts, b.parts, strict=True):
            found += _differences(x, y) or ([] if x == y else [(x, y)])
        return found
    return [(a, b)]


def _substitute(source: Source, old: Source, new: Source) -> Source:
    """source with every `old` sub-tree replaced by `new` (Concat parts only, which is where a merge happens)."""
    if source == old:
        return new
    if isinstance(source, Concat):
        return Concat(tuple(_substitute(part, old, new) for part in source.parts))
    return source


def simplify_case(case: Case) -> Source:
    """CASE WHEN x IS NOT NULL THEN f(x) ELSE f(y) END is f(COALESCE(x, y)): one formula, however it is spelt."""
    if len(case.whens) != 1 or case.default is None:
        return case
    condition, result = case.whens[0]
    then, otherwise = (result, case.default) if condition.negated else (case.default, result)
    # `then` is the branch taken when the column is NOT NULL.
    if then == otherwise:
        return then
    diffs = _differences(then, otherwise)
    if diffs is not None and len(diffs) == 1 and diffs[0][0] == Column(condition.column):
        fallback = diffs[0][1]
        merged = _coalesce((Column(condition.column), fallback))
        return _substitute(then, Column(condition.column), merged)
    return case


def merge_branches(condition: IsNull, then: Formula | None, otherwise: Formula | None) -> Formula | None:
    """One formula for IF cond THEN key := a ELSE key := b: the two sources joined in a CASE, then simplified."""
    if then is None or otherwise is None:
        return then or otherwise
    if then.modulus != otherwise.modulus:
        raise FormulaError(f"the branches use different moduli ({then.modulus} and {otherwise.modulus})")
    source = simplify_case(Case(((condition, then.source),), otherwise.source))
    return Formula(source, then.modulus, overflows=then.overflows or otherwise.overflows)


def _single_expression(text: str) -> Any:
    """The one expression in `text`, parsed as SELECT <text>; comments and extra statements are refused."""
    try:
        tokens = scan(text)
    except ParseError as error:
        raise FormulaError(f"not valid SQL: {error}") from None
    for token in tokens:
        if token.name in ("SQL_COMMENT", "C_COMMENT"):
            raise FormulaError("comments are not allowed in a key expression")
        if token.name == "ASCII_59":
            raise FormulaError("a ';' is not allowed in a key expression")
    try:
        statements = pglast.parse_sql(f"SELECT {text}")
    except ParseError as error:
        raise FormulaError(f"not valid SQL: {error}") from None
    statement = statements[0].stmt if len(statements) == 1 else None
    if not isinstance(statement, ast.SelectStmt) or len(statement.targetList or ()) != 1:
        raise FormulaError("expected exactly one expression")
    clauses = ("fromClause", "whereClause", "groupClause", "havingClause", "sortClause", "limitCount", "withClause")
    target: Any = (statement.targetList or ())[0]
    if any(getattr(statement, clause, None) for clause in clauses) or target.name:
        raise FormulaError("expected exactly one expression, not a query")
    return target.val


def parse_expression(text: str, scope: Scope | None = None) -> Formula:
    """The normalised formula of an SQL expression, e.g. 'abs(hashtext(a::text || b) % 100)'."""
    return formula_from_node(_single_expression(text), scope or Scope())


def parse_source(text: str, scope: Scope | None = None) -> Source:
    """The normalised source of an SQL expression over columns, e.g. "a::text || ':' || b"."""
    return source_from_node(_single_expression(text), scope or Scope())


def renamed(source: Source, names: Mapping[str, str]) -> Source:
    """The source with its columns renamed (a helper's parameters spelt as the table's columns)."""
    if isinstance(source, Column):
        return Column(names.get(source.name, source.name))
    if isinstance(source, Text):
        return source
    if isinstance(source, Concat):
        return Concat(tuple(renamed(part, names) for part in source.parts))
    if isinstance(source, Coalesce):
        return Coalesce(tuple(renamed(arg, names) for arg in source.args))
    whens = tuple(
        (IsNull(names.get(c.column, c.column), c.negated), renamed(result, names)) for c, result in source.whens
    )
    return Case(whens, renamed(source.default, names) if source.default is not None else None)


def with_modulus(formula: Formula, modulus: int) -> Formula:
    """The same formula over another number of partitions."""
    return replace(formula, modulus=modulus)


# ---------------------------------------------------------------------------------------------- overflow


def count_overflows(text: str, wrap: str = "{}") -> int:
    """How many abs(hashtext(...)) calls (which raise on INT_MIN) a SQL text holds; `wrap` makes it a statement."""
    try:
        tree = pglast.parse_sql(wrap.format(text))
    except ParseError:
        return 0
    return sum(1 for node in _nodes(tree) if _is_overflowing_abs(node))


def mentions(text: str, column: str, wrap: str = "SELECT {}") -> bool:
    """True when a SQL text calls hashtext() and names `column` (as col, NEW.col or t.col); False if unparsable."""
    try:
        tree = pglast.parse_sql(wrap.format(text))
    except ParseError:
        return False
    return all(hashes_and_names(tree, column))


def hashes_and_names(tree: Any, column: str) -> tuple[bool, bool]:
    """Whether a parsed tree calls hashtext(), and whether it references `column` (its last name part)."""
    nodes = list(_nodes(tree))
    hashes = any(_function(n) == "hashtext" for n in nodes if isinstance(n, ast.FuncCall))
    names = any(_names(n.fields)[-1:] == (column,) for n in nodes if isinstance(n, ast.ColumnRef))
    return hashes, names


def called_functions(tree: Any) -> set[str]:
    """The names (without schema, lower case) of every function a parsed tree calls."""
    return {_function(n).rsplit(".", 1)[-1] for n in _nodes(tree) if isinstance(n, ast.FuncCall)}


def _is_overflowing_abs(node: Any) -> bool:
    """abs() applied straight to hashtext() (through casts only)."""
    argument = _call(node, "abs")
    return argument is not None and _call(_strip_int_casts(argument), "hashtext") is not None


def _nodes(tree: Any) -> Iterator[Any]:
    """Every pglast node under tree."""
    if isinstance(tree, tuple | list):
        for item in tree:
            yield from _nodes(item)
    elif isinstance(tree, ast.Node):
        yield tree
        for name in tree:
            yield from _nodes(getattr(tree, name))


def expression_nodes(text: str) -> Iterator[Any]:
    """Every node of one expression (for callers that look for formulas inside larger expressions)."""
    yield from _nodes(_single_expression(text))


def find_formulas(node: Any, scope: Scope) -> list[Formula]:
    """Every family formula anywhere inside a parsed tree, outermost first."""
    found: list[Formula] = []
    for candidate in _nodes(node):
        if _mod_operands(candidate) is None and _call(candidate, "abs") is None:
            continue
        try:
            formula = formula_from_node(candidate, scope)
        except FormulaError:
            continue
        if not any(_inside(formula, f) for f in found):
            found.append(formula)
    return found


def _inside(inner: Formula, outer: Formula) -> bool:
    """abs(hashtext(x) % n) holds hashtext(x) % n, which is not a second formula."""
    return inner.source == outer.source and inner.modulus == outer.modulus
