# Everything the project needs is installed into .venv by these targets, from nothing
# but Python, pip and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest docs examples soak bench clean redis-server redis-soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade "pip>=25.1"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e . --group dev
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: lint typecheck pytest docs

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/pyright

# The Redis tests start their own server from this Debian package (root or sudo).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q redis-server; }

pytest: $(STAMP) redis-server
	$(BIN)/pytest --cov --cov-report=term-missing

# The crash test of the Redis queue, long: workers killed at random for minutes.
redis-soak: $(STAMP) redis-server
	KEYQ_CRASH_SECONDS=300 $(BIN)/pytest -q -p no:cacheprovider tests/test_redis_crash.py

docs: $(STAMP)
	$(BIN)/sphinx-build -q -E -n -W --keep-going -b html docs docs/_build/html

# The full benchmark run (minutes): results, table and plot go to docs/performance/.
bench: $(STAMP)
	$(BIN)/python -m benchmarks

# The whole suite 20 times in a row: a flaky test shows up here.
soak: $(STAMP) redis-server
	for i in $$(seq 20); do $(BIN)/pytest -q -x -p no:cacheprovider || exit 1; done

clean:
	rm -rf $(VENV) docs/_build .coverage .mypy_cache .pytest_cache .ruff_cache
