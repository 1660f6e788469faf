# genserve: `make demo` serves the graph with tiny models on 127.0.0.1:8000;
# `make test` runs the suite. Both set up .venv from scratch when needed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU machines: this pin takes the local CPU wheel; any looser spec may pull GBs of CUDA
# packages. GPU hosts: `make install TORCH_SPEC=torch` (or preinstall your CUDA build).
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo test tiny clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

tiny: install
	$(BIN)/genserve build-tiny

demo: install
	$(BIN)/genserve serve --tiny --host 127.0.0.1 --port 8000

test: install
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .cache .pytest_cache
