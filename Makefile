# Lamina: `make serve` to run, `make test` to check. Everything else is named below.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Prepared models live outside the clone so every checkout reuses them.
LAMINA_HOME ?= $(HOME)/.cache/lamina
LAMINA_MODEL_REPOSITORY ?= $(LAMINA_HOME)/models
REFERENCE ?= .venv-reference
PORT ?= 50051
METRICS_PORT ?= 9090
HTTP_PORT ?= 8080
export LAMINA_HOME LAMINA_MODEL_REPOSITORY
# Container images: lamina:<version>-cpu and -gpu; MODELS=baked converts the models into them.
IMAGE ?= lamina
IMAGE_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
MODELS ?= none
CONTAINER_ENGINE ?= $(shell command -v docker || command -v podman)

.PHONY: serve test install models protos lint fixtures family-fixtures bench clean help image deploy-check mutate fuzz dashboard

help:
	@echo "make serve    create .venv, install, prepare the default models, serve gRPC on :$(PORT), HTTP on :$(HTTP_PORT)"
	@echo "make test     install test tools, lint, prepare models, run every test"
	@echo "make models   prepare the default models into $(LAMINA_MODEL_REPOSITORY)"
	@echo "make protos   regenerate the Python stubs from protos/"
	@echo "make lint     ruff + mypy"
	@echo "make bench    throughput, depth cost, priority, starvation, padding -> docs/bench.md"
	@echo "make dashboard draw deploy/grafana/lamina.json's panels from a real run -> docs/dashboard.png"
	@echo "make fixtures regenerate the transformers parity fixtures (in $(REFERENCE), with torch)"
	@echo "make family-fixtures regenerate the tiny checkpoints of every family [FAMILIES=names]"
	@echo "make image    build $(IMAGE):$(IMAGE_VERSION)-cpu and -gpu (MODELS=baked puts the models inside)"
	@echo "make deploy-check  lint the Dockerfiles, render and validate the Kubernetes overlays"
	@echo "make fuzz     the fuzz suite of tests/fuzz, long (FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) per test; make test runs it short)"
	@echo "make mutate   mutation testing of the core rules by their unit tests (slow; docs/testing.md)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --progress-bar off -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Reduced-precision graphs made beside fp32 (each measured against it; docs/precision.md).
PRECISIONS ?= int8 bf16
models: install
	$(BIN)/lamina prepare --model-repository "$(LAMINA_MODEL_REPOSITORY)" \
		$(foreach p,$(PRECISIONS),--precision $(p))

serve: models
	$(BIN)/lamina serve --model-repository "$(LAMINA_MODEL_REPOSITORY)" --port $(PORT) --metrics-port $(METRICS_PORT) \
		--http-port $(HTTP_PORT)

protos: install
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=client --pyi_out=client \
		--grpc_python_out=client protos/lamina/v1/*.proto

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# tests/deploy (Dockerfiles linted, overlays rendered and validated) runs with the rest.
test: lint models
	$(BIN)/pytest -q

deploy-check: install
	$(BIN)/pytest -q tests/deploy

# `make test` runs tests/fuzz at CI size (profile ci); this runs it long, with random examples and
# an example database under $(LAMINA_HOME)/fuzz so that failures replay. FUZZ_LOG=file.jsonl
# writes every failure there and keeps going, to collect all failure classes in one run.
FUZZ_EXAMPLES ?= 10000
fuzz: models
	LAMINA_FUZZ_PROFILE=long LAMINA_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) LAMINA_FUZZ_LOG=$(FUZZ_LOG) \
		$(BIN)/pytest -q tests/fuzz --hypothesis-show-statistics

# Mutation testing, outside `make test`: mutmut (the `mutate` extra) in a staging copy with the
# packages under src/lamina/, so service/ is never touched; [tool.mutmut] in pyproject.toml names
# the files and their unit tests, MUTANTS the functions. ~16 min on two cores; docs/testing.md.
MUTATE_DIR ?= build/mutate
MUTANTS ?= 'lamina.server.pooling.*' 'lamina.server.prompt.x__text_factors_*' \
	'lamina.server.prompt.x__token_factors_*' 'lamina.server.prompt.x__check_combined_*' \
	'lamina.server.prompt.xǁPromptEncoderǁ_spread_*' 'lamina.server.scheduling.queue.*' \
	'lamina.server.scheduling.pool.*' \
	'lamina.server.runtime.memory.*' 'lamina.server.security.*' \
	'lamina.server.api.servicer.xǁEmbedServicerǁ*' 'lamina.server.api.status.*' \
	'lamina.server.errors.x_path_parts_*' 'lamina.server.errors.x_dotted_*' \
	'lamina.server.errors.xǁInvalidArgumentǁmoved_*' 'lamina.server.gateway.errors.*'

$(VENV)/.mutate-installed: pyproject.toml | $(VENV)/.installed
	$(BIN)/pip install --quiet --progress-bar off -e '.[mutate]'
	touch $@

mutate: $(VENV)/.mutate-installed
	rm -rf $(MUTATE_DIR)
	mkdir -p $(MUTATE_DIR)/src/lamina
	cp -r service/lamina/server client/lamina/client client/lamina/v1 $(MUTATE_DIR)/src/lamina/
	cp -r tests pyproject.toml $(MUTATE_DIR)/
	find $(MUTATE_DIR) -name __pycache__ -prune -exec rm -rf {} +
	cd $(MUTATE_DIR) && $(abspath $(BIN))/mutmut run --max-children 2 $(MUTANTS)
	cd $(MUTATE_DIR) && $(abspath $(BIN))/python -m tests.mutation_score $(MUTANTS)

# Needs a running container engine; says so and fails when there is none (a docker client
# without its daemon included).
image:
	@if [ -z "$(CONTAINER_ENGINE)" ]; then \
		echo "make image: no container engine found (docker or podman); nothing built" >&2; exit 1; fi
	@if ! $(CONTAINER_ENGINE) info >/dev/null 2>&1; then \
		echo "make image: '$(CONTAINER_ENGINE) info' failed: the container engine is not running here; nothing built" >&2; exit 1; fi
	$(CONTAINER_ENGINE) build -f deploy/docker/Dockerfile.cpu --build-arg MODELS=$(MODELS) \
		-t $(IMAGE):$(IMAGE_VERSION)-cpu .
	$(CONTAINER_ENGINE) build -f deploy/docker/Dockerfile.gpu --build-arg MODELS=$(MODELS) \
		-t $(IMAGE):$(IMAGE_VERSION)-gpu .

# torch, transformers and sentence-transformers for reference figures only: never in .venv.
# Also the peers tests/bench/peers.py times (OpenVINO, fastembed, llama-cpp-python) and matplotlib.
# optimum-intel 2.1 caps transformers <5.6 and huggingface_hub <1.22, hence those pins; 2.2 would
# pull torchvision, whose index wheel is a CUDA build that breaks transformers beside torch+cpu.
# sentence-transformers[onnx] is left out: optimum-onnx needs transformers <4.58 (peers.py says so).
# llama-cpp-python is source only: a ~20 min C++ build on 2 cores, best effort on its own line.
$(REFERENCE)/bin/python:
	@echo "creating $(REFERENCE): torch (CPU), transformers, sentence-transformers (reference only)"
	$(PYTHON) -m venv $(REFERENCE)
	$(REFERENCE)/bin/pip install --progress-bar on torch==2.13.0 transformers==5.5.4 \
		huggingface_hub==1.21.0 sentence-transformers==6.2.0 gguf accelerate safetensors numpy onnx \
		'optimum-intel[openvino]==2.1.0' openvino==2026.4.1 fastembed==0.9.1 onnxruntime==1.32.0 \
		matplotlib==3.11.2
	$(REFERENCE)/bin/pip install --progress-bar off llama-cpp-python==0.3.36 \
		|| echo "llama-cpp-python did not build; the bench marks that peer skipped" >&2

# The Grafana dashboard's panels drawn from a real Prometheus scrape of a real run
# (docs/observability.md); Prometheus from the distribution's package when it is missing.
dashboard: models $(REFERENCE)/bin/python
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; } \
		|| { echo "make dashboard needs the prometheus binary (e.g. apt-get install prometheus)" >&2; exit 1; }
	$(BIN)/python -m tests.bench.dashboard --model-repository "$(LAMINA_MODEL_REPOSITORY)" \
		--reference-python $(REFERENCE)/bin/python --output docs/dashboard.png

fixtures: models $(REFERENCE)/bin/python
	PYTHONPATH=service:client:. $(REFERENCE)/bin/python -m tests.parity.make_fixtures
	PYTHONPATH=service:client:. $(REFERENCE)/bin/python -m tests.parity.make_real_fixtures

# Tiny random checkpoints of every family, with transformers' hidden states (tests/families).
family-fixtures: $(REFERENCE)/bin/python
	PYTHONPATH=service:client:. $(REFERENCE)/bin/python -m tests.families.make_fixtures $(FAMILIES)

clean:
	rm -rf $(VENV) $(REFERENCE) build *.egg-info .mypy_cache .pytest_cache .ruff_cache

bench: models $(REFERENCE)/bin/python
	$(BIN)/python -m tests.bench.run --model-repository "$(LAMINA_MODEL_REPOSITORY)" \
		--cache "$(LAMINA_HOME)/packages" --output docs/bench.md
