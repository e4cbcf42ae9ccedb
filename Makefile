# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch==2.13.0: on this machine pip takes the CPU wheel from its local wheel folder (plain PyPI
# serves a CUDA build of it on Linux); on a CUDA machine set TORCH_SPEC="torch>=2.4". The default
# keeps any torch already in the venv (e.g. a CUDA build installed by hand); a TORCH_SPEC given on
# the command line or in the environment is enforced (pip does nothing when it is already met).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-deps test-fast lint bench bench-quick clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
ifeq ($(origin TORCH_SPEC),file)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
else
	$(PY) -m pip install -q "$(TORCH_SPEC)"
endif
	$(PY) -m pip install -q -e ".[dev]"

demo: install
	$(VENV)/bin/scalelab demo

# Test tools from Debian, installed when missing and apt is usable: pdflatex (the report's LaTeX
# test) and a SLURM controller + node daemon + munge (the sbatch/requeue test on a local cluster).
test-deps:
	@missing=""; \
	command -v pdflatex >/dev/null || missing="$$missing texlive-latex-recommended texlive-latex-extra"; \
	command -v slurmctld >/dev/null || missing="$$missing slurmctld"; \
	command -v slurmd >/dev/null || missing="$$missing slurmd"; \
	command -v sbatch >/dev/null || missing="$$missing slurm-client"; \
	command -v munged >/dev/null || missing="$$missing munge"; \
	if [ -n "$$missing" ]; then \
	  { command -v apt-get >/dev/null && apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } || \
	  echo "warning: could not install$$missing; the tests that need them will be skipped"; \
	fi

test: install test-deps
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

lint: install
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools

bench: install
	$(PY) benchmarks/run.py

bench-quick: install
	$(PY) benchmarks/run.py --quick

clean:
	rm -rf experiments .pytest_cache .ruff_cache
