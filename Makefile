# Two commands on a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/tabad: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	@touch $@

install: $(BIN)/tabad

demo: install
	$(BIN)/tabad demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf demo_out .pytest_cache
