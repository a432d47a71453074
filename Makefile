# Two commands on a fresh machine: `make demo` (pretrain on Fashion-MNIST, then k-NN) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
MINUTES ?= 10
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test check bench clean
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) scripts/setup.sh

demo: setup
	rm -rf runs/demo
	$(BIN)/freelabel pretrain simclr --data fashion-mnist --minutes $(MINUTES) --eval-every 2.5 --out runs/demo
	$(BIN)/freelabel eval knn runs/demo --baselines

test: setup
	$(BIN)/ruff format --check -q src tests benchmarks
	$(BIN)/ruff check -q src tests benchmarks
	$(BIN)/python -m pytest -q

# The edit loop's tier: format, lint and the tests not marked slow (under 2 minutes on 2 cores).
check: setup
	$(BIN)/ruff format --check -q src tests benchmarks
	$(BIN)/ruff check -q src tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/simclr_throughput.py

clean:
	rm -rf runs .pytest_cache
