# Two entry points for a fresh clone (see README.md): `make demo` and `make test`.
# Both create or reuse .venv/, install the pinned requirements and the package, then run.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= outputs/demo
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export MPLBACKEND ?= Agg
export SYNOOD_CACHE ?= $(CURDIR)/.cache/synood
CHROMIUM := /usr/bin/chromium

.PHONY: demo test test-fast install lint notebooks clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name python3 --display-name "Python 3 (synood-kit)" > /dev/null
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/synood demo --out $(OUT)

# tests/test_browser.py drives Debian's Chromium with Playwright (which never downloads a browser of its own);
# installed from Debian's registry only when missing, as root (CI) or through sudo.
$(CHROMIUM):
	$(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive sh -c \
	  'apt-get update -q && apt-get install -y -q --no-install-recommends chromium'

test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything but the slow (> ~20 s), browser and GPU tests: under 3 minutes on 2 cores, even with a cold cache.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not browser and not gpu" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# After editing a notebook in JupyterLab or its py:percent script: sync each pair (the newer file wins), then strip
# the notebooks' outputs. Commit both files of a pair.
notebooks: $(STAMP)
	$(BIN)/jupytext --sync notebooks/[0-9][0-9]_*.ipynb
	$(BIN)/nbstripout notebooks/[0-9][0-9]_*.ipynb

clean-venv:
	rm -rf $(VENV)
