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

install: $(STAMP) playground

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

test: install chromium
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .cache .pytest_cache

# The playground's 3D viewer: three.js from the npm registry, copied into the package at build
# time (the page never loads anything from a CDN; the files are not committed). The tarball's
# hash is pinned, so a changed package fails the build instead of being served.
THREE_VERSION := 0.187.0
THREE_SHA256  := ff540832ded0cfe919764d24a3d88f3e2a05f23303f876423e4f893841e90728
THREE_DIR     := genserve/playground/vendor/three
THREE_FILES   := LICENSE build/three.module.js build/three.core.js \
                 examples/jsm/controls/OrbitControls.js examples/jsm/loaders/GLTFLoader.js \
                 examples/jsm/loaders/OBJLoader.js examples/jsm/loaders/PLYLoader.js \
                 examples/jsm/utils/BufferGeometryUtils.js examples/jsm/utils/SkeletonUtils.js

.PHONY: playground chromium

playground: $(THREE_DIR)/.version-$(THREE_VERSION)

$(THREE_DIR)/.version-$(THREE_VERSION):
	rm -rf build/npm $(THREE_DIR) && mkdir -p build/npm $(THREE_DIR)
	cd build/npm && npm pack --silent three@$(THREE_VERSION) >/dev/null
	echo "$(THREE_SHA256)  build/npm/three-$(THREE_VERSION).tgz" | sha256sum -c --quiet
	tar -xzf build/npm/three-$(THREE_VERSION).tgz -C $(THREE_DIR) --strip-components=1 \
	    $(addprefix package/,$(THREE_FILES))
	touch $@

# The playground's browser tests drive Debian's chromium (Playwright's own browser download
# needs more than the package registries).
chromium:
	command -v chromium >/dev/null || \
	    (apt-get update && apt-get install -y --no-install-recommends chromium)

# Every benchmark (R1–R6, R9 and the queue's) in one Ray cluster: bench/results/*.json and a
# markdown table; under 10 minutes on a 2-core box. BENCH_ARGS=--quick for a smoke run.
.PHONY: bench
BENCH_ARGS ?=

bench: install tiny
	$(BIN)/python -m bench.run_all $(BENCH_ARGS)
