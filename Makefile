# The README's two commands: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Bytecode caches are written even where the environment says not to: with PYTHONDONTWRITEBYTECODE=1 each xdist
# worker rewrote the asserts of ~480 modules (test modules and pytest plugins) at every collection, 10 s of CPU instead
# of 4, and every CLI, daemon and demo the tests start compiled the project again. __pycache__/ is git-ignored.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test lint unit test-nodb docs docs-check package-check dashboards test-matrix test-reliability bench-insert bench-exporter bench-peers deploy bench-fleet bench-gil clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e . --group dev
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/partkey-exporter demo

lint: $(STAMP)
	$(VENV)/bin/ruff check exporter migrations tests bench dashboards examples deploy
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile

# Four xdist workers on 2 cores, each with its own embedded server: the tests mostly wait (on PostgreSQL, subprocesses,
# polls), and two workers kept the cores a third busy (docs/development.md has the side-by-side runs). worksteal
# evens out the long tests. make unit WORKERS=2 for fewer.
WORKERS ?= 4
unit: $(STAMP)
	$(PY) -m pytest -q -n $(WORKERS) --dist worksteal

# The tests that need no PostgreSQL at all (collector, report, admin and HTTP API from published snapshots, config,
# docs, dashboards, hashtext, ...). PARTKEY_TEST_DSN points where nothing listens, so no server is started and any
# test that reached for a database would fail; tests/conftest.py marks `nodb` every test without a database fixture.
NOWHERE_DSN := postgresql://nodb@127.0.0.1:1/nodb?connect_timeout=2
test-nodb: $(STAMP)
	PARTKEY_TEST_DSN="$(NOWHERE_DSN)" PARTKEY_NODB=1 $(PY) -m pytest -q -n 2 -m nodb

# Lint (mypy takes ~55 s of CPU on a fresh clone, without its cache) and docs-check run while the tests run: the
# tests mostly wait on PostgreSQL and subprocesses. Each stage's output is printed in one piece when it ends; any
# failing stage fails `make test`.
test: $(STAMP)
	$(MAKE) --no-print-directory -j3 --output-sync=target lint docs-check unit

# Regenerates every generated block in docs/ (configuration keys, metrics, HTTP API, the version matrix).
docs: $(STAMP)
	$(PY) -m exporter._docsgen

# The docs site builds with no broken link; the generated pages are fresh (tests/test_docs.py checks that too).
docs-check: $(STAMP)
	$(PY) -m exporter._docsgen --check
	site=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir $$site; rc=$$?; rm -rf $$site; exit $$rc

# Builds the sdist and wheel, checks their metadata, installs the wheel into a clean venv and runs it (CI runs this).
package-check: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist . >/dev/null
	$(VENV)/bin/twine check --strict dist/*
	venv=$$(mktemp -d) && $(PYTHON) -m venv $$venv && $$venv/bin/pip install --quiet --disable-pip-version-check dist/*.whl \
	  && $$venv/bin/partkey-exporter --version && $$venv/bin/partkey-migrate --help >/dev/null \
	  && $$venv/bin/python -c "from exporter import PartitionImplementationDetector; print('embedding API imports')"; \
	  rc=$$?; rm -rf $$venv; exit $$rc

# The `versioned` tests on PostgreSQL 11-18, one throwaway server each (fetched from npm, needs Node.js/npm).
# Writes tests/matrix/last-matrix.md. A subset: make test-matrix VERSIONS=11,12,18
test-matrix: $(STAMP)
	$(PY) -m tests.matrix.run_matrix $(if $(VERSIONS),--versions $(VERSIONS))
	$(PY) -m tests.matrix.readme

# Fault-injection tests, the slow ones included (30 s load, 10-minute soak: PARTKEY_SOAK_SECONDS=600, the plain
# table's downgrade killed before each step, ~40 s), then the tests marked slow elsewhere (the live dashboards test,
# the standby tests). The fast ones also run in `make test`.
test-reliability: $(STAMP)
	PARTKEY_SLOW=1 $(PY) -m pytest -q tests/reliability
	PARTKEY_SLOW=1 $(PY) -m pytest -q -m slow --ignore=tests/reliability tests

# Regenerates deploy/kubernetes/ from deploy/generate.py; tests/test_deploy.py fails when it is stale.
deploy: $(STAMP)
	$(PY) -m deploy.generate

# Regenerates the committed dashboard JSON; tests/dashboards fails when it is stale.
dashboards: $(STAMP)
	$(PY) -m dashboards.generate
	$(PY) -m deploy.generate  # the PrometheusRule carries dashboards/alerts.yaml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site dist

# Benchmarks (bench/): not tests, never gate CI. Each prints a table and writes bench/results/<name>.md.
# Extra options: make bench-insert BENCH_ARGS="--quick --all-versions"
bench-insert: $(STAMP)
	$(PY) -m bench.insert $(BENCH_ARGS)

bench-exporter: $(STAMP)
	$(PY) -m bench.exporter_cost $(BENCH_ARGS)

bench-peers: $(STAMP)
	$(PY) -m bench.peers $(BENCH_ARGS)

# 200 databases x 100 partitions on one server: one exporter, then 4 shards, with ratios against 10 targets.
bench-fleet: $(STAMP)
	$(PY) -m bench.fleet $(BENCH_ARGS)

bench-gil: $(STAMP)
	$(PY) -m bench.gil $(BENCH_ARGS)
