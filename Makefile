# echo_core: common tasks.  Override the interpreter with PYTHON=..., e.g. `make test PYTHON=python3`.
#
#   make sweep    the quick grid (~2-3 minutes) into $(DATA)/: CSV, metadata JSON, charts (PNG)
#   make seed     the seed study's full grid into $(DATA)/ (~30 minutes)
#   make latency  open-loop latency vs offered load (512 B, 16 KiB x 1, 64 connections) (~11 minutes)
#   make report   execute notebooks/report.ipynb on every result set in $(DATA)/ and render
#                 $(REPORTS)/report.html (standalone, code hidden)
#   make test     the test suite
#   make test-sanitize  C core built with ASan+UBSan into build/sanitize/; server and load tests (~1.5 min)

PYTHON ?= .venv/bin/python
DATA ?= data
REPORTS ?= reports

.PHONY: help sweep seed latency report test test-sanitize

help:
	@sed -n '3,9p' Makefile | sed 's/^# \{0,1\}//'

sweep:
	$(PYTHON) -m echo_core sweep --grid quick --output-dir $(DATA)

seed:
	$(PYTHON) -m echo_core sweep --grid seed --output-dir $(DATA)

latency:
	$(PYTHON) -m echo_core sweep --grid latency --output-dir $(DATA)

report:
	@mkdir -p $(REPORTS)
	$(PYTHON) -m papermill --kernel python3 notebooks/report.ipynb $(REPORTS)/report.ipynb \
		-p results_dir "$(abspath $(DATA))" -p output_dir "$(abspath $(REPORTS))"
	$(PYTHON) -m nbconvert --to html --no-input --output report $(REPORTS)/report.ipynb
	@echo "report: $(REPORTS)/report.html"

test:
	$(PYTHON) -m pytest -q

test-sanitize:
	PYTHON=$(PYTHON) bash scripts/test_sanitize.sh
