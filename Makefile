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

.PHONY: demo test install lint clean-venv

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

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)
