# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Dependencies are pinned through constraints.txt (torch 2.13.0, CPU build); pyproject.toml
# stays permissive so that clusters can bring their own CUDA torch and MPI.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[mpi,test]' mpich
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/harness run presets/demo.yaml --out runs/demo
	$(BIN)/harness report runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info
