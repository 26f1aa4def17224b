"""The statements partkey-migrate runs, composed with sql.Identifier for every name."""

from __future__ import annotations

from psycopg import sql

from exporter.keyspec import KeySpec


def safe_expression(spec: KeySpec) -> sql.Composed:
    """abs(hashtext(source) % n), the table's own formula (composite too) in its safe form: no INT_MIN overflow."""
    return spec.expression("safe")


def function_body(spec: KeySpec) -> sql.Composed:
    """PL/pgSQL body that sets NEW.key with the safe form of the table's formula."""
    return sql.SQL("BEGIN\n    NEW.{} := {};\n    RETURN NEW;\nEND;").format(
        sql.Identifier(spec.key_column), spec.expression("safe", row="NEW")
    )


def create_function(spec: KeySpec, schema: str, name: str, body_text: str) -> sql.Composed:
    """CREATE OR REPLACE the key trigger function; body_text is function_body rendered to text."""
    return sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
        sql.Identifier(schema, name), sql.Literal(body_text)
    )


def drop_function(schema: str, name: str) -> sql.Composed:
    """DROP FUNCTION IF EXISTS schema.name()."""
    return sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(schema, name))


def create_trigger(trigger: str, schema: str, relation: str, function_schema: str, function: str) -> sql.Composed:
    """A BEFORE INSERT row trigger (EXECUTE FUNCTION exists since PG 11)."""
    return sql.SQL("CREATE TRIGGER {} BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
        sql.Identifier(trigger), sql.Identifier(schema, relation), sql.Identifier(function_schema, function)
    )


def drop_trigger(trigger: str, schema: str, relation: str) -> sql.Composed:
    """DROP TRIGGER IF EXISTS, so a resumed run can repeat it."""
    return sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), sql.Identifier(schema, relation))


def add_check(spec: KeySpec, name: str) -> sql.Composed:
    """ADD CONSTRAINT ... CHECK (key = safe) NOT VALID: catalog-only, existing rows are checked later."""
    return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({} = {}) NOT VALID").format(
        spec.table_ident, sql.Identifier(name), sql.Identifier(spec.key_column), safe_expression(spec)
    )


def validate_check(spec: KeySpec, name: str) -> sql.Composed:
    """VALIDATE CONSTRAINT: scans under SHARE UPDATE EXCLUSIVE, so DML keeps flowing."""
    return sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(spec.table_ident, sql.Identifier(name))


def drop_constraint(spec: KeySpec, name: str) -> sql.Composed:
    """DROP CONSTRAINT IF EXISTS."""
    return sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(spec.table_ident, sql.Identifier(name))


def add_generated_column(spec: KeySpec, column: str, type_sql: str, not_null: str | None = None) -> sql.Composed:
    """ADD COLUMN … GENERATED ALWAYS AS (safe) STORED [NOT NULL, checked during the rewrite under ACCESS EXCLUSIVE]."""
    constraint: sql.Composable = sql.SQL("")
    if not_null:
        constraint = sql.SQL(" CONSTRAINT {} NOT NULL").format(sql.Identifier(not_null))
    return sql.SQL("ALTER TABLE {} ADD COLUMN {} {} GENERATED ALWAYS AS ({}) STORED{}").format(
        spec.table_ident, sql.Identifier(column), sql.SQL(type_sql), safe_expression(spec), constraint
    )


def rename_constraint(spec: KeySpec, old: str, new: str) -> sql.Composed:
    """RENAME CONSTRAINT (PG 18 gives NOT NULL constraints names)."""
    return sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
        spec.table_ident, sql.Identifier(old), sql.Identifier(new)
    )


def add_plain_column(spec: KeySpec, column: str, type_sql: str) -> sql.Composed:
    """ADD COLUMN without a default: catalog-only."""
    return sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
        spec.table_ident, sql.Identifier(column), sql.SQL(type_sql)
    )


def drop_column(spec: KeySpec, column: str) -> sql.Composed:
    """DROP COLUMN IF EXISTS (silently drops the PK and indexes that use it)."""
    return sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(spec.table_ident, sql.Identifier(column))


def rename_column(spec: KeySpec, old: str, new: str) -> sql.Composed:
    """RENAME COLUMN."""
    return sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
        spec.table_ident, sql.Identifier(old), sql.Identifier(new)
    )


def set_not_null(spec: KeySpec, column: str) -> sql.Composed:
    """SET NOT NULL (scans the table, under the lock the swap already holds)."""
    return sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(spec.table_ident, sql.Identifier(column))


def columns_differ(spec: KeySpec, left: str, right: str) -> sql.Composed:
    """Count rows where two columns disagree."""
    return sql.SQL("SELECT count(*) FROM {} WHERE {} IS DISTINCT FROM {}").format(
        spec.table_ident, sql.Identifier(left), sql.Identifier(right)
    )


def wrong_keys_guard(spec: KeySpec) -> sql.Composed:
    """A DO block for offline scripts: stop when any row's key is wrong, naming repair."""
    inner = sql.SQL("SELECT 1 FROM {} WHERE {} IS DISTINCT FROM {}").format(
        spec.table_ident, sql.Identifier(spec.key_column), safe_expression(spec)
    )
    return sql.SQL(
        "DO $partkey$ BEGIN IF EXISTS ({}) THEN RAISE EXCEPTION "
        "'wrong partition keys found: run partkey-migrate repair first'; END IF; END $partkey$"
    ).format(inner)


def columns_guard(spec: KeySpec, left: str, right: str) -> sql.Composed:
    """A DO block for offline scripts: stop when the new column disagrees with the old."""
    inner = sql.SQL("SELECT 1 FROM {} WHERE {} IS DISTINCT FROM {}").format(
        spec.table_ident, sql.Identifier(left), sql.Identifier(right)
    )
    return sql.SQL(
        "DO $partkey$ BEGIN IF EXISTS ({}) THEN RAISE EXCEPTION "
        "'the generated column disagrees with the old key column'; END IF; END $partkey$"
    ).format(inner)


def sync_function_body(spec: KeySpec, column: str) -> sql.Composed:
    """PL/pgSQL body that keeps a plain copy of the key right while a downgrade backfills it."""
    return sql.SQL("BEGIN\n    NEW.{} := {};\n    RETURN NEW;\nEND;").format(
        sql.Identifier(column), spec.expression("safe", row="NEW")
    )


def create_sync_trigger(trigger: str, spec: KeySpec, function: str) -> sql.Composed:
    """BEFORE INSERT OR UPDATE: new and changed rows get their copy while old rows are backfilled."""
    return sql.SQL("CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
        sql.Identifier(trigger), spec.table_ident, sql.Identifier(spec.schema, function)
    )


def backfill_batch(spec: KeySpec, column: str, batch: int) -> sql.Composed:
    """Fill up to batch rows' copy of the key (one short transaction each)."""
    return sql.SQL(
        "UPDATE {t} SET {c} = {k} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {c} IS NULL LIMIT {n}))"
    ).format(t=spec.table_ident, c=sql.Identifier(column), k=sql.Identifier(spec.key_column), n=sql.Literal(batch))


def add_not_null_check(spec: KeySpec, name: str, column: str) -> sql.Composed:
    """CHECK (column IS NOT NULL) NOT VALID: once validated, SET NOT NULL needs no scan (PG 12+)."""
    return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID").format(
        spec.table_ident, sql.Identifier(name), sql.Identifier(column)
    )
