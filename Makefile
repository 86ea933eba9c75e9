# Two commands do everything on a fresh clone (each installs what it needs first):
#   make demo   - train the embedded demo with mask none / global / multilayer, print the table
#   make test   - the fast test suite (pytest -m "not slow")
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install demo test test-all bench lint

$(INSTALLED): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,audio]"
	touch $(INSTALLED)

install: $(INSTALLED)

demo: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PY) train.py -m experiment=demo_masks logger=many \
		callbacks.progress_bar.refresh_rate=50

test: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" -q

test-all: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PY) scripts/bench_attention.py --out bench_results

lint: $(INSTALLED)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
