# Two commands for a fresh machine: `make run` captions the example photos, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test clean

$(BIN)/captioner: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/captioner
	$(BIN)/captioner caption examples/

test: $(BIN)/captioner
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
