# The two commands a newcomer needs: `make run` and `make test`.
# Everything else is what they depend on.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(shell find proto -name '*.proto')
CLIENT_STUBS := client/src/model_registry_client/_generated/model_registry_pb2.py

.PHONY: run up down status test unit integration bench bench-small fuzz faults venv proto clean envoy-config

run: proto  ## the whole stack in the foreground; Ctrl-C stops everything
	$(PY) -m services.launcher run

up: proto  ## the same stack in the background; returns once it is healthy
	$(PY) -m services.launcher up

down: venv  ## stops the stack `make up` started (same environment)
	$(PY) -m services.launcher down

status: venv
	$(PY) -m services.launcher status

test: proto  ## every test: unit and full stack, then the full stack again in the replicated shape
	$(PY) -m pytest
	REGISTRY_TEST_SHAPE=replicated $(PY) -m pytest tests/integration

unit: proto
	$(PY) -m pytest services client/tests --ignore-glob='*_stack.py'

integration: proto
	$(PY) -m pytest tests/integration

bench: proto
	$(PY) -m bench

# The small calls and their floor (same run) on the default and the
# replicated shape: issue 14's acceptance figures, in ~2 minutes.
bench-small: proto
	$(PY) -m bench --small-calls --output bench/results-small-default.json
	$(PY) -m bench --small-calls --shape replicated --output bench/results-small-replicated.json

# At least 10,000 random call sequences against a stack, checked against a
# reference model (`make test` runs a short pass); prints how many ran.
FUZZ_EXAMPLES ?= 10000
fuzz: proto
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SEED=$${FUZZ_SEED:-random} $(PY) -m pytest -s -o timeout=0 tests/integration/test_fuzz.py

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	# The client SDK + `model-registry` CLI (its pins match requirements.txt).
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e ./client
	# Make the repository and its generated stubs importable from the venv.
	$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "model-registry-repo.pth").write_text("$(CURDIR)\n$(CURDIR)/gen\n")'
	touch $@

proto: gen/.stamp $(CLIENT_STUBS)

$(CLIENT_STUBS): $(VENV)/.installed proto/cogmentAPI/model_registry.proto proto/cogmentAPI/common.proto proto/registry/admin.proto client/generate.py
	$(PY) client/generate.py

gen/.stamp: $(VENV)/.installed $(PROTOS)
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -I proto --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	touch $@

clean:
	rm -rf gen $(VENV) .venv-cogment-sdk .pytest_cache client/src/model_registry_client/_generated

envoy-config: proto  ## regenerate envoy/envoy.yaml (docker compose) from services/launcher
	$(PY) -m services.launcher.compose

# Fault injection on real stacks (tests/integration/test_faults.py), both
# shapes; prints the fault table (README "Faults") from the recorded rows.
# Not part of `make test` (it takes minutes); CI runs it after.
# Every test marked `faults` under tests/integration (test_faults.py, the
# data-safety ones...); pytest.ini deselects the marker unless -m asks for it.
faults: proto
	rm -f .run/faults.json
	$(PY) -m pytest -m faults tests/integration
	REGISTRY_TEST_SHAPE=replicated $(PY) -m pytest -m faults tests/integration
	$(PY) tests/integration/fault_table.py
