# Two commands a newcomer runs on a fresh machine:
#   make demo   set up, then run the whole loop on this machine (local endpoint); it prints the
#               dashboard's address (make demo STAY=1: keep the controller up at the end)
#   make test   set up (Python deps and the Debian packages the tests need), lint, type-check, test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint bench clean pulumi

# The Pulumi engine (the `pulumi` CLI), built from source once per machine (tools/pulumi pins
# it; cold build: see the README's "The Pulumi engine"). A `pulumi` already on PATH at this
# version is used instead. The controller finds it through settings.pulumi_root.
PULUMI_VERSION := v3.276.0
PULUMI_ROOT := .tools/pulumi-$(PULUMI_VERSION)
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)

pulumi: $(PULUMI_ROOT)/bin/pulumi

$(PULUMI_ROOT)/bin/pulumi: tools/pulumi/go.mod tools/pulumi/go.sum
	@mkdir -p $(@D)
	@if command -v pulumi >/dev/null && [ "$$(pulumi version)" = "$(PULUMI_VERSION)" ]; then \
		ln -sf "$$(command -v pulumi)" $@; \
	else \
		echo "building the Pulumi engine $(PULUMI_VERSION) (once per machine; ~15 min)"; \
		cd tools/pulumi && GOFLAGS=-buildvcs=false $(GO) build -trimpath \
			-ldflags="-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$(PULUMI_VERSION)" \
			-o $(abspath $@).tmp github.com/pulumi/pulumi/pkg/v3/cmd/pulumi && mv $(abspath $@).tmp $(abspath $@); \
	fi

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

# the engine builds while the Debian packages install and the code is checked (a cold build
# is CPU, the installs mostly wait on the network and dpkg)
test: .stamp-dev
	@mkdir -p .tools
	$(MAKE) pulumi >.tools/pulumi-build.log 2>&1 & build=$$!; \
	bash tests/system-deps.sh cloud-init openssh-server openssh-client iproute2 python3 \
		bubblewrap chromium chromium-driver prometheus slurmctld slurmd slurm-client munge \
		gridengine-master gridengine-exec gridengine-client util-linux postgresql \
		&& $(MAKE) lint; rc=$$?; \
	wait $$build || { cat .tools/pulumi-build.log; exit 1; }; exit $$rc
	$(BIN)/pytest -q -n 3 --dist loadfile  # three at once: most tests wait on processes

# the unit tests alone: no process, no server, no database server (under a minute)
test-fast: .stamp-dev
	$(BIN)/pytest -q tests/unit -m "not integration"

bench: .stamp-dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .stamp-core .stamp-dev  # .tools/ (the Pulumi engine) is kept
