# The README's commands. Each target sets up what it needs (a local .venv) and runs.
# torch is pinned to the CPU wheel on disk; nothing here resolves an unpinned torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tessera-installed
DEV_STAMP := $(VENV)/.tessera-dev-installed
TORCH_PIN ?= torch==2.13.0
PYTEST_WORKERS ?= 2

.PHONY: install install-dev demo test lint format bench clean

# What the demo needs: CPU torch and tessera's light core, nothing test-only.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_PIN)"
	$(PY) -m pip install -q --disable-pip-version-check -e .
	touch $(STAMP)

# Tests, lint and the reference implementations the parity tests compare against.
$(DEV_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	# OpenAI's dVAE package, a test-only reference: its metadata asks for torchvision, so no deps.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps dall-e==0.1
	# FID references for the parity tests (both import torchvision at package level; the
	# tests load only their torchvision-free modules), so no deps either.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps pytorch-fid==0.3.0 torch-fidelity==0.4.0
	# diffusers' DDPM/DDIM schedulers, a test-only reference for tessera.diffusion's parity tests.
	# No deps: the schedulers import only what is already here (torch, numpy, huggingface_hub,
	# safetensors, ...); its metadata would add regex, importlib_metadata and a lazy loader.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps diffusers==0.42.1
	touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

## make demo: set up, then run the main job on the embedded default data set
demo: $(STAMP)
	$(VENV)/bin/tessera demo --out out/demo

## make test: set up with the test dependencies, lint, then run the whole suite
test: $(DEV_STAMP) lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	# the import layers of DESIGN.md (pyproject.toml [tool.importlinter]), function-level imports too
	$(VENV)/bin/lint-imports
	# the typed seams: pipelines, samplers and the diffusion core, strictly
	$(VENV)/bin/mypy --strict src/tessera/pipelines src/tessera/sampling src/tessera/diffusion

format: $(DEV_STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

## make bench: every benchmark prints one JSON line
bench: $(DEV_STAMP)
	@for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) out build dist src/*.egg-info .pytest_cache .ruff_cache
