"""The exporter's configuration: pydantic models, YAML loading, ${ENV} expansion and located errors."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from exporter.formula import Formula, FormulaError, parse_expression
from exporter.keyspec import KeySpec
from exporter.shard import ENV as SHARD_ENV
from exporter.shard import owned, parse_spec

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as '500ms', '30s', '5m', '6h', '1d'."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {value!r}")


# At most a year: an infinite or astronomically long interval passed validation and then crashed the scheduler.
Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=366 * 86400, allow_inf_nan=False)]
Identifier = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[^\x00]+$")]


class Strict(BaseModel):
    """Base model: unknown keys are errors, values are immutable."""

    # Attribute docstrings become field descriptions: the configuration reference (docs/configuration.md) shows them.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class CheckSettings(Strict):
    """Schedule and limits of one check."""

    enabled: bool = True
    """Run this check at all."""
    interval: Duration = 60.0
    """Time between the starts of two runs."""
    statement_timeout: Duration = 10.0
    """Set on the server for the check's statements, so a timed-out query stops there too."""


class SampleSettings(CheckSettings):
    """The sample verification also takes the share of pages to read."""

    percent: float = Field(default=1.0, gt=0, le=100)
    """Share of the table's pages read (TABLESAMPLE SYSTEM)."""


class ProbeSettings(CheckSettings):
    """The insert probe is off by default and needs INSERT privilege."""

    enabled: bool = False
    """Off by default: the probe needs INSERT (its rows are always rolled back)."""
    samples: int = Field(default=3, ge=1, le=100)
    """Timed INSERTs per run."""
    source_value: str = "00000000-0000-0000-0000-000000000000"
    """The source column's value in the synthetic row."""
    extra_values: dict[Identifier, str] = Field(default_factory=dict)
    """Values for other NOT NULL columns without defaults, by column name."""


class ChecksConfig(Strict):
    """Every check of a table, with its defaults."""

    implementation: CheckSettings = CheckSettings(interval=300, statement_timeout=5)
    """Catalog only: how the key is maintained, and whether that is optimal."""
    verification_incremental: CheckSettings = CheckSettings(interval=60, statement_timeout=10)
    """Rows above a watermark of monotonic_column (needs it)."""
    verification_sample: SampleSettings = SampleSettings(interval=300, statement_timeout=30)
    """A TABLESAMPLE of the pages."""
    verification_full: CheckSettings = CheckSettings(interval=21600, statement_timeout=600)
    """Every row, on a slow schedule."""
    distribution: CheckSettings = CheckSettings(interval=60, statement_timeout=5)
    """Rows per partition from the statistics (catalog reads)."""
    distribution_exact: CheckSettings = CheckSettings(interval=3600, statement_timeout=600)
    """Rows per partition counted with one scan."""
    insert_probe: ProbeSettings = ProbeSettings(interval=60, statement_timeout=5)
    """Times a synthetic INSERT that is always rolled back."""


class TableConfig(Strict):
    """One watched table and how its key must be computed."""

    table: Identifier = "chunks"
    """The partitioned (or plain) table whose key is watched."""
    schema_: Identifier = Field(default="public", alias="schema")
    """The table's schema."""
    key_column: Identifier = "partition_key"
    """The column that holds the stored key."""
    source_column: Identifier = "collection_id"
    """The column the key is computed from."""
    modulus: int = Field(default=100, ge=1, le=1_000_000)
    """n in the key formula (the number of partitions)."""
    key_expression: Annotated[str, Field(min_length=1, max_length=2000)] = "auto"
    """`auto`: the table's own formula; `safe`, `legacy` (overflows), or an SQL expression (docs/formulas.md)."""
    monotonic_column: Identifier | None = None
    """An ever-increasing column (such as id); enables incremental verification."""
    examples_limit: int = Field(default=10, ge=0, le=1000)
    """Bad rows kept for the report (never metric labels)."""
    checks: ChecksConfig = ChecksConfig()
    """Each check's schedule and limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("key_expression")
    @classmethod
    def _family_expression(cls, value: str) -> str:
        """auto, safe, legacy, or an expression of the hashtext family (refused here with the reason)."""
        if value in ("auto", "safe", "legacy"):
            return value
        if value.isidentifier():
            raise ValueError(
                "should be 'auto', 'safe', 'legacy' or an expression such as abs(hashtext(collection_id::text) % 100)"
            )
        try:
            parse_expression(value)
        except FormulaError as error:
            raise ValueError(f"key_expression is not a partition-key formula: {error}") from None
        return value

    @model_validator(mode="after")
    def _modulus_agrees(self) -> TableConfig:
        """A configured expression carries its own modulus; a different explicit modulus is a contradiction."""
        formula = self.configured_formula
        if formula is not None and "modulus" in self.model_fields_set and formula.modulus != self.modulus:
            raise ValueError(f"modulus {self.modulus} contradicts key_expression, which uses % {formula.modulus}")
        return self

    @property
    def configured_formula(self) -> Formula | None:
        """The formula key_expression names, when it is an expression rather than auto/safe/legacy."""
        if self.key_expression in ("auto", "safe", "legacy"):
            return None
        return parse_expression(self.key_expression)

    @property
    def spec(self) -> KeySpec:
        """The key spec shared with the checks and migrations (auto is resolved against the catalog later)."""
        spec = KeySpec(
            table=self.table,
            schema=self.schema_,
            key_column=self.key_column,
            source_column=self.source_column,
            modulus=self.modulus,
            formula="legacy" if self.key_expression == "legacy" else "safe",
            auto=self.key_expression == "auto",
        )
        formula = self.configured_formula
        if formula is not None:
            # Rebuilt from the parse tree in its safe form: the text the user wrote never reaches the server.
            spec = spec.with_formula(formula)
        return spec

    @property
    def label(self) -> str:
        """schema.table, as in metric labels."""
        return self.spec.label


def command_line_table(args: argparse.Namespace) -> TableConfig:
    """The table --table, --schema, --key-column, --source-column, --key-expression and --modulus name."""
    return TableConfig(
        table=args.table,
        schema=args.schema,
        key_column=args.key_column,
        source_column=args.source_column,
        key_expression=args.key_expression,
        **({"modulus": args.modulus} if args.modulus is not None else {}),
    )


class AutoTables(TableConfig):
    """The `auto` entry of `tables:`: every keyed table found in the database (exporter/discovery.py)."""


AUTO = "auto"


def _table_entry(value: Any, handler: ValidatorFunctionWrapHandler) -> TableConfig:
    """One entry of `tables:`: a table mapping, or the word auto (discovered tables)."""
    if value == AUTO:
        return AutoTables(table=AUTO)
    if isinstance(value, str):
        raise ValueError(f"{value!r} is not a table: write `- table: {value}`, or `auto` for every keyed table")
    table: TableConfig = handler(value)
    return table


def _tables_list(value: Any) -> Any:
    """`tables: auto` is short for `tables: [auto]`."""
    if value == AUTO:
        return [AUTO]
    if isinstance(value, str):
        raise ValueError(f"should be auto or a list of tables, got {value!r}")
    return value


def _glob(value: str) -> str:
    """A shell glob (* ? [abc]) over names; refused when it cannot match as written."""
    if not value.strip() or value != value.strip():
        raise ValueError(f"glob {value!r} is empty or has spaces around it")
    depth = 0
    for char in value:
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
    if depth:
        raise ValueError(f"glob {value!r} has a [ without its closing ]")
    return value


Glob = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$"), AfterValidator(_glob)]


def _schema_glob(value: str) -> str:
    """A schema glob names schemas only: no dot."""
    if "." in value:
        raise ValueError(f"schemas: {value!r} has a dot; a schema glob matches schema names (put tables in exclude)")
    return value


def _exclude_glob(value: str) -> str:
    """schema.table, or a table name alone (any schema)."""
    if value.count(".") > 1:
        raise ValueError(f"exclude: {value!r} should be schema.table or table (one dot at most)")
    return value


class TargetConfig(Strict):
    """One PostgreSQL database and the tables watched in it."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
    """The `target` label of every series; unique."""
    dsn: str | None = None
    """libpq connection string or URI; ${VAR} is expanded. Give this or dsn_file."""
    dsn_file: Path | None = None
    """A file holding the whole DSN (a mounted secret). Give this or dsn."""
    scan_dsn: str | None = None
    """A hot standby for the heavy scans (full and sample verification, exact distribution); ${VAR} is expanded."""
    scan_dsn_file: Path | None = None
    """Or a file holding the standby's DSN (a mounted secret); at most one of scan_dsn and scan_dsn_file."""
    connect_timeout: Duration = 5.0
    """How long to wait for a connection."""
    lock_timeout: Duration = 1.0
    """How long any check may wait for a lock."""
    tables: Annotated[list[Annotated[TableConfig, WrapValidator(_table_entry)]], BeforeValidator(_tables_list)] = Field(
        min_length=1
    )
    """The tables watched in this database; `auto` (alone or as an entry) adds every keyed table found."""
    schemas: list[Annotated[Glob, AfterValidator(_schema_glob)]] | None = None
    """With `auto`: globs of the schemas searched (unset: every schema but pg_catalog and information_schema)."""
    exclude: list[Annotated[Glob, AfterValidator(_exclude_glob)]] = Field(default_factory=list)
    """With `auto`: globs of tables never watched, `schema.table` or `table` (any schema)."""
    checks: ChecksConfig = ChecksConfig()
    """With `auto`: the discovered tables' checks; discovery itself runs on `checks.implementation`'s schedule."""

    @model_validator(mode="after")
    def _one_dsn_source(self) -> TargetConfig:
        """Exactly one of dsn and dsn_file, and each table once."""
        if (self.dsn is None) == (self.dsn_file is None):
            raise ValueError("give exactly one of dsn or dsn_file")
        if self.dsn is not None:
            _check_dsn(self.dsn)
        if self.scan_dsn is not None and self.scan_dsn_file is not None:
            raise ValueError("give at most one of scan_dsn or scan_dsn_file")
        if self.scan_dsn is not None:
            _check_dsn(self.scan_dsn, "scan_dsn")
        labels = [table.label for table in self.configured_tables]
        if not self.auto:
            given = sorted(key for key in ("schemas", "exclude", "checks") if key in self.model_fields_set)
            if given:
                raise ValueError(f"{', '.join(given)} only apply to discovered tables: add `auto` to tables")
        elif sum(isinstance(table, AutoTables) for table in self.tables) > 1:
            raise ValueError("auto listed twice in tables")
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"table listed twice: {', '.join(duplicates)}")
        return self

    @property
    def auto(self) -> bool:
        """Does this target discover its keyed tables (`tables: auto`)?"""
        return any(isinstance(table, AutoTables) for table in self.tables)

    @property
    def configured_tables(self) -> list[TableConfig]:
        """The tables written in the config (a discovered table with the same name gives way to these)."""
        return [table for table in self.tables if not isinstance(table, AutoTables)]

    def resolve_dsn(self) -> str:
        """The DSN, read from dsn_file when given there."""
        if self.dsn is not None:
            return self.dsn
        assert self.dsn_file is not None
        try:
            text = self.dsn_file.read_text().strip()
        except OSError as error:
            problem = f"targets.{self.name}.dsn_file: cannot read {self.dsn_file}: {error.strerror}"
            raise ConfigError([problem]) from None
        _check_dsn(text)
        return text

    def resolve_scan_dsn(self) -> str | None:
        """The standby's DSN for heavy scans, read from scan_dsn_file when given there; None when unset."""
        if self.scan_dsn_file is None:
            return self.scan_dsn
        try:
            text = self.scan_dsn_file.read_text().strip()
        except OSError as error:
            problem = f"targets.{self.name}.scan_dsn_file: cannot read {self.scan_dsn_file}: {error.strerror}"
            raise ConfigError([problem]) from None
        try:
            _check_dsn(text, "scan_dsn_file")
        except ValueError as error:
            raise ConfigError([f"targets.{self.name}.scan_dsn_file: {error}"]) from None
        return text


def _check_dsn(dsn: str, field: str = "dsn") -> None:
    """Reject a DSN libpq cannot parse, without echoing it (it may hold a password)."""
    try:
        conninfo_to_dict(dsn)
    except Exception:
        raise ValueError(f"{field} is not a valid PostgreSQL connection string or URI") from None


class ListenConfig(Strict):
    """Where the HTTP server listens, and its TLS settings."""

    address: str = "127.0.0.1"
    """Address the HTTP server binds."""
    port: int = Field(default=19187, ge=0, le=65535)
    """Port the HTTP server binds (0: any free port)."""
    tls_cert_file: Path | None = None
    """PEM certificate: serve HTTPS (with tls_key_file)."""
    tls_key_file: Path | None = None
    """PEM private key of tls_cert_file."""
    tls_client_ca_file: Path | None = None
    """CA bundle: require client certificates signed by it (mTLS)."""

    @model_validator(mode="after")
    def _tls_pair(self) -> ListenConfig:
        """A certificate needs its key, and client CAs need TLS."""
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        return self


class ShardConfig(Strict):
    """One replica's share of the targets."""

    index: int = Field(ge=0)
    """This replica's shard, from 0 to total-1 (a StatefulSet's pod ordinal)."""
    total: int = Field(ge=1, le=1000)
    """How many replicas share the targets."""

    @model_validator(mode="after")
    def _index_below_total(self) -> ShardConfig:
        """index counts from 0."""
        if self.index >= self.total:
            raise ValueError(f"index must be below total ({self.total}), got {self.index}")
        return self


class Config(Strict):
    """The whole configuration file."""

    listen: ListenConfig = ListenConfig()
    """Where the HTTP server listens."""
    admin_token_env: str | None = None
    """Environment variable holding the bearer token that guards POST endpoints."""
    admin_token_file: Path | None = None
    """Or a file holding that token (at most one of the two)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Logging threshold."""
    max_workers: int = Field(default=4, ge=1, le=64)
    """Scheduler threads (the checks of one target still run one at a time)."""
    targets: list[TargetConfig] = Field(default_factory=list)
    """The databases watched (at least one here, unless targets_dir is given)."""
    targets_dir: Path | None = None
    """A directory of *.yaml files, one target each, re-read when a file changes (relative: to this file)."""
    max_connections: int | None = Field(default=None, ge=1, le=10000)
    """At most this many open connections over all targets; the others queue in turn (unset: one per target)."""
    shard: ShardConfig | None = None
    """Check only the targets this replica owns (rendezvous hashing of names); PARTKEY_SHARD=i/n overrides."""

    @model_validator(mode="after")
    def _unique_targets(self) -> Config:
        """Target names label every metric, so they must be unique."""
        if not self.targets and self.targets_dir is None:
            raise ValueError("give at least one target under targets:, or a targets_dir")
        names = [t.name for t in self.targets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"target name used twice: {', '.join(duplicates)}")
        if self.admin_token_env is not None and self.admin_token_file is not None:
            raise ValueError("give at most one of admin_token_env or admin_token_file")
        return self

    def sharding(self) -> tuple[int, int]:
        """(index, total) of this replica: PARTKEY_SHARD when set, else shard:, else (0, 1)."""
        text = os.environ.get(SHARD_ENV)
        if text:
            try:
                return parse_spec(text)
            except ValueError as error:
                raise ConfigError([str(error)]) from None
        return (self.shard.index, self.shard.total) if self.shard is not None else (0, 1)

    def owned_targets(self) -> list[TargetConfig]:
        """The targets this replica checks."""
        index, total = self.sharding()
        names = set(owned([t.name for t in self.targets], index, total))
        return [t for t in self.targets if t.name in names]

    def admin_token(self) -> str | None:
        """The bearer token for POST endpoints, from env or file; None when unset."""
        if self.admin_token_env is not None:
            token = os.environ.get(self.admin_token_env)
            if not token:
                raise ConfigError([f"admin_token_env: environment variable {self.admin_token_env} is not set"])
            return token
        if self.admin_token_file is not None:
            try:
                token = self.admin_token_file.read_text().strip()
            except OSError as error:
                problem = f"admin_token_file: cannot read {self.admin_token_file}: {error.strerror}"
                raise ConfigError([problem]) from None
            if not token:
                raise ConfigError([f"admin_token_file: {self.admin_token_file} is empty"])
            return token
        return None


class ConfigError(Exception):
    """Every problem found in a configuration, each with its location."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


Location = tuple[int | str, ...]
M = TypeVar("M", bound=BaseModel)


def _expand_env(node: Any, location: Location, problems: list[tuple[Location, str]], seen: dict[int, Any]) -> Any:
    """Replace ${NAME} in string values with the environment; a missing variable is a problem at its location."""
    if isinstance(node, dict | list) and id(node) in seen:
        # A YAML alias: expand the shared node once (a chain of aliases must not expand exponentially,
        # and a node that contains itself must not recurse forever).
        return seen[id(node)]
    if isinstance(node, dict):
        mapping: dict[Any, Any] = {}
        seen[id(node)] = mapping
        for key, value in node.items():
            mapping[key] = _expand_env(value, (*location, key), problems, seen)
        return mapping
    if isinstance(node, list):
        items: list[Any] = []
        seen[id(node)] = items
        items.extend(_expand_env(value, (*location, index), problems, seen) for index, value in enumerate(node))
        return items
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                problems.append((location, f"environment variable {name} is not set"))
                return ""
            return os.environ[name]

        return _ENV_REFERENCE.sub(substitute, node)
    return node


def _load(text: str) -> tuple[yaml.Node | None, Any]:
    """The YAML text's node tree (for line numbers) and the data built from that same tree: yaml.safe_load's steps."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return root, loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()


def _line_of(root: yaml.Node | None, location: Location) -> int | None:
    """The 1-based line in the YAML source where a pydantic error location points."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in location:
        if isinstance(node, yaml.MappingNode):
            # The last pair of a key is the one the built mapping kept: a repeated key's later value, and after
            # construction flattened a merge key (<<) into the mapping, a merged value where no key overrides it.
            pairs = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part]
            match = pairs[-1] if pairs else None
            if match is None:
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _dotted(location: Location) -> str:
    """targets[0].tables[1].modulus from ('targets', 0, 'tables', 1, 'modulus')."""
    text = ""
    for part in location:
        if isinstance(part, str) and not part.isprintable():
            part = repr(part)  # a key with a newline or control character must not break the one-line message
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def parse_config(text: str, source: str = "<config>") -> Config:
    """Validate YAML text; raise ConfigError listing every problem as 'source:line: where: what'."""
    return parse_model(text, source, Config, "the file must be a mapping with at least 'targets'")


def parse_model(text: str, source: str, model: type[M], not_a_mapping: str) -> M:
    """Validate YAML text as one model; raise ConfigError listing every problem as 'source:line: where: what'."""
    try:
        root, data = _load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        if isinstance(error, yaml.reader.ReaderError):  # a character YAML forbids: no mark, but a position
            before = text[: error.position]
            where = f"{source}:{before.count(chr(10)) + 1}:{len(before) - before.rfind(chr(10))}"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError([f"{where}: YAML syntax error: {problem}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: {not_a_mapping}"])
    problems: list[tuple[Location, str]] = []
    data = _expand_env(data, (), problems, {})
    if not problems:
        try:
            return model.model_validate(data)
        except ValidationError as error:
            for item in error.errors(include_url=False, include_input=False):
                location = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
                problems.append((location, item["msg"]))
    raise ConfigError([_located(source, root, location, message) for location, message in problems]) from None


def _located(source: str, root: yaml.Node | None, location: Location, message: str) -> str:
    """'source:line: where: what' (no line when the location is not in the YAML)."""
    line = _line_of(root, location)
    prefix = f"{source}:{line}" if line else source
    return f"{prefix}: {_dotted(location)}: {message}"


def load_config(path: str | Path) -> Config:
    """Read and validate a configuration file."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError([f"{path}: cannot read the file: {error.strerror}"]) from None
    config = parse_config(text, str(path))
    if config.targets_dir is None:
        return config
    from exporter.targets_dir import with_target_files  # it imports this module

    return with_target_files(config, Path(path).parent)
