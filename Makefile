# The two set-up commands of the README: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# This machine class has a CPU wheel of torch on disk; pyproject keeps a range so GPU users keep theirs
# (e.g. `make test TORCH_SPEC="torch"` with your CUDA index configured, or install torch into .venv first).
TORCH_SPEC ?= torch==2.13.0
# torchvision is built for one torch release: installed with torch, so the extras never pull another torch.
TORCHVISION_SPEC ?= torchvision==0.28.*
STAMP  := $(VENV)/.installed
# One intra-op thread: on 2 cores small models train ~10x faster than with torch's default.
export OMP_NUM_THREADS ?= 1
# pytest-xdist workers for `make test` (one torch thread each): two workers halve the suite's time on a
# 2-core machine. 0 runs it in one process.
# loadfile: a test module runs on one worker, so its module-scoped fixtures (a trained run) are built once.
# --no-loadscope-reorder: pytest-xdist >= 3.7 otherwise schedules modules by test count, largest first,
# which sent the minutes-long modules (tests/conftest.py's LONG_FIRST, few tests each) last, one worker.
TEST_WORKERS ?= 2

.PHONY: demo test test-long check typecheck docs install browser clean

demo: $(STAMP)
	$(BIN)/phasescope demo --out runs/demo.zarr --overwrite

test: $(STAMP) browser check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# make test plus the tests too long for it: the 12,000-step three-phase run live (tests/test_phases_three.py).
test-long: $(STAMP) browser check
	PHASESCOPE_LONG_TESTS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The documentation site on http://127.0.0.1:8000 (rebuilt on every edit of docs/ or a docstring).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

# Lint, format and type checks (configured in pyproject.toml; .pre-commit-config.yaml runs the same).
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory typecheck

# mypy cannot read setuptools' package-dir mapping (probes/ -> phasescope.probes, ...) nor follow the
# editable install's import hook, so the installed layout is rebuilt as symlinks in build/typecheck
# (from pyproject's package-dir, so the two cannot disagree) and mypy reads the package there.
typecheck:
	rm -rf build/typecheck
	$(BIN)/python -c "$$TYPECHECK_TREE"
	$(BIN)/mypy

define TYPECHECK_TREE
import os, tomllib
dirs = tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"]
top = os.path.join("build", "typecheck")
os.makedirs(os.path.join(top, "phasescope"))
for name in os.listdir(dirs["phasescope"]):
    os.symlink(os.path.abspath(os.path.join(dirs["phasescope"], name)), os.path.join(top, "phasescope", name))
for pkg, src in dirs.items():
    if pkg != "phasescope":
        os.symlink(os.path.abspath(src), os.path.join(top, *pkg.split(".")))
endef
export TYPECHECK_TREE

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip show -q torch >/dev/null 2>&1 && $(BIN)/python -m pip show -q torchvision >/dev/null 2>&1 || \
	  $(BIN)/python -m pip install "$(TORCH_SPEC)" "$(TORCHVISION_SPEC)"
	$(BIN)/python -m pip install -e ".[all,test]"
	$(BIN)/python -c "from phasescope.compat import write_startup_guard as w; print(w())"  # see phasescope/compat.py
	touch $@

# Headless Chromium for the dashboard's browser tests (Debian packages; never a downloaded browser).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; }

clean:
	rm -rf $(VENV) build dist *.egg-info
