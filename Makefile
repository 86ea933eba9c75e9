# Two commands do everything on a fresh clone (each installs what it needs first):
#   make demo   - train the embedded demo with mask none / global / multilayer, print the table
#   make test   - the fast test suite (pytest -m "not slow")
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install demo demo-seeds qvhighlights-proxy test test-all bench lint

$(INSTALLED): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,audio]"
	touch $(INSTALLED)

install: $(INSTALLED)

demo: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PY) train.py -m experiment=demo_masks logger=many \
		callbacks.progress_bar.refresh_rate=50

# the evidence of README "Does STAMP do anything?" (3 seeds each; tables via make_tables.py)
demo-seeds: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PY) train.py -m experiment=demo_seeds logger=many \
		callbacks.progress_bar.refresh_rate=0

QVH_PROXY_DATA := data/qvhighlights_synthetic
$(QVH_PROXY_DATA)/annotations: | $(INSTALLED)
	$(PY) scripts/make_qvhighlights_features.py --out $(QVH_PROXY_DATA) \
		--annotations data/qvhighlights/highlight_train_release.jsonl \
		data/qvhighlights/highlight_val_release.jsonl data/qvhighlights/highlight_test_release.jsonl \
		--video-dims 64 32 --text-dim 32 --limit 1024

qvhighlights-proxy: $(INSTALLED) $(QVH_PROXY_DATA)/annotations
	HF_HUB_OFFLINE=1 $(PY) train.py -m experiment=qvhighlights_proxy logger=many \
		callbacks.progress_bar.refresh_rate=0

test: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" -q

test-all: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PY) scripts/bench_attention.py --out bench_results

lint: $(INSTALLED)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
