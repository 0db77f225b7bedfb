# Set-up and entry points. `make demo` and `make test` each build the virtual
# environment from nothing on first use (torch/torchvision pinned by
# constraints.txt for our machines; pyproject.toml keeps loose ranges).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs clean-venv

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,all]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m attnguide demo demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=15

# the documentation site on http://127.0.0.1:8000 (mkdocs.yml; tests/docs/test_docs_site.py
# builds it with --strict)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

lint: $(STAMP)
	$(VENV)/bin/ruff check attnguide tests benchmarks examples

clean-venv:
	rm -rf $(VENV)
