# Every target sets up what it needs in .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint check clean

$(STAMP): setup.cfg setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n 2  # two workers: the suite waits on ranks, deadlines and launchers as much as it computes

demo: $(STAMP)
	$(PY) test/example_allreduce.py -v

bench: $(STAMP)
	$(PY) tools/bench.py

lint: $(STAMP)
	$(VENV)/bin/ruff check distributed_testing test tools
	$(VENV)/bin/mypy distributed_testing

check: lint test

clean:
	rm -rf $(VENV) build *.egg-info
