# Two commands for a fresh machine: `make run` captions the example photos, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test clean

# Every extra and the test tools, at the exact versions of constraints.txt (pyproject.toml has the ranges).
$(BIN)/captioner: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

run: $(BIN)/captioner
	$(BIN)/captioner caption examples/

test: $(BIN)/captioner
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
