# `make run` and `make test` create .venv when it is missing, so a fresh clone needs
# only Python 3.11 and access to the package registry.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/easel run $(if $(CONFIG),--config $(CONFIG),)

# Lint first: no unused code lands (vulture; framework entry points are listed in
# vulture_whitelist.py) and ruff's pyflakes, import and bugbear checks pass.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/vulture actors daemon bench tests vulture_whitelist.py --min-confidence 60

# Two workers, a test file each at a time (the files' fixtures stay together): the
# suite waits on fsync, subprocesses and loopback more than on the CPU, so it takes
# about half the time even on a busy 2-core machine.
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/python bench/submit.py
	$(BIN)/python bench/polling.py
	$(BIN)/python bench/inflight.py
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/queue_memory.py

clean:
	rm -rf $(VENV) .easel-state
