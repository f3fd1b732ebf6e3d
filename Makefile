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
	# ruDALL-E's transformer and Gumbel VQGAN modules (and taming-transformers' Encoder/Decoder
	# they build on), test-only references for the VQGAN and ruDALL-E parity tests: their
	# metadata pins torchvision, an old transformers, OpenCV and PyWavelets, none of which the
	# modules the tests load import (tests/helpers/rudalle_ref.py), so no deps; einops they do use.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps einops==0.8.2 taming-transformers==0.0.1 rudalle==1.1.3
	# YouTokenToMe, ruDALL-E's BPE, for the vocabulary conversion test: an sdist whose setup.py
	# needs Cython at build time, so Cython first and no build isolation.
	$(PY) -m pip install -q --disable-pip-version-check cython==3.3.1
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation youtokentome==1.0.6
	# ruDALL-E's transformer and Gumbel VQGAN modules (and taming-transformers' Encoder/Decoder
	# they build on), test-only references for the VQGAN and ruDALL-E parity tests: their
	# metadata pins torchvision, an old transformers, OpenCV and PyWavelets, none of which the
	# modules the tests load import (tests/helpers/rudalle_ref.py), so no deps; einops they do use.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps einops==0.8.2 taming-transformers==0.0.1 rudalle==1.1.3
	# YouTokenToMe, ruDALL-E's BPE, for the vocabulary conversion test: an sdist whose setup.py
	# needs Cython at build time, so Cython first and no build isolation.
	$(PY) -m pip install -q --disable-pip-version-check cython==3.3.1
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation youtokentome==1.0.6
	# transformers' and open_clip's CLIP and diffusers' unCLIP (Karlo) pipeline: test-only references
	# for tessera.convert's parity tests. transformers asks for neither torch nor torchvision, only
	# for a CLI (typer) and a kernel-hub client the tests never load, so no deps but regex;
	# open_clip's metadata wants torchvision and timm, so no deps (the tests load only its
	# torchvision-free modules), plus ftfy for its tokenizer.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps transformers==5.25.0 regex==2026.11.15 open_clip_torch==3.3.0
	$(PY) -m pip install -q --disable-pip-version-check ftfy==6.3.1
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
