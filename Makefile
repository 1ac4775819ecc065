# Two commands from a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= export,bench,test,sweep
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test venv clean bench

venv: $(STAMP)

# torch is installed first and pinned so that pip never resolves a multi-GB CUDA build on a
# CPU-only machine; override with `make TORCH_SPEC="torch==X.Y" ...` for another build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/smfp demo

# One pytest worker per core, at most four (pytest-xdist; each worker imports torch, some start Ray); a file's tests
# stay in one worker, so that a module's fixtures (a Ray instance, a trained run) are built once. TEST_WORKERS=0 runs
# them in this process. The 15 slowest tests are listed at the end (the suite should take under 15 minutes on 2 cores).
TEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile --durations=15

bench: $(STAMP)
	$(BIN)/smfp bench train --compare-sb3

clean:
	rm -rf $(VENV) runs
