# Two commands a newcomer runs on a fresh machine:
#   make demo   set up, then run the whole loop on this machine (local endpoint); it prints the
#               dashboard's address (make demo STAY=1: keep the controller up at the end)
#   make test   set up (Python deps and the Debian packages the tests need), lint, type-check, test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

.stamp-core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

.stamp-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch .stamp-core $@

demo: .stamp-core
	$(BIN)/cloudpilot demo $(if $(STAY),--stay)

lint: .stamp-dev
	$(BIN)/ruff check controller pilot stacks tests bench cloudpilot examples
	$(BIN)/mypy controller pilot stacks cloudpilot examples/squares.py

test: .stamp-dev lint
	bash tests/system-deps.sh cloud-init openssh-server openssh-client iproute2 python3 \
		bubblewrap chromium chromium-driver prometheus slurmctld slurmd slurm-client munge \
		util-linux postgresql
	$(BIN)/pytest -q

bench: .stamp-dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .stamp-core .stamp-dev
