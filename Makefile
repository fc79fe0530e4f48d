# echo_core: common tasks.  Override the interpreter with PYTHON=..., e.g. `make test PYTHON=python3`.
#
#   make sweep    the quick grid (~2-3 minutes) into $(DATA)/: CSV, metadata JSON, charts (PNG)
#   make seed     the seed study's full grid into $(DATA)/ (~30 minutes)
#   make latency  open-loop latency vs offered load (512 B, 16 KiB x 1, 64 connections) (~11 minutes)
#   make explain  the explain grid (streaming 16 KiB and 100 kB x 8 and 512 connections, 5 repeats) into
#                 $(DATA)/, and CPU profiles of its gap cells into $(DATA)/profiles/ (~6 minutes; needs perf)
#   make report   execute notebooks/report.ipynb on every result set in $(DATA)/ and render
#                 $(REPORTS)/report.html (standalone, code hidden)
#   make test     the test suite
#   make test-sanitize  C core built with ASan+UBSan into build/sanitize/; servers, load, chaos, variants (~4 min)
#   make test-liburing-current  C core built against the next Debian release's liburing (2.9) into
#                 build/liburing-current/ (nothing installed); the variants' tests and the long-lived regime

PYTHON ?= .venv/bin/python
DATA ?= data
REPORTS ?= reports

PROFILE_CELLS ?= 16384:8 100000:8 100000:512

.PHONY: help sweep seed latency explain report test test-sanitize test-liburing-current

help:
	@sed -n '3,13p' Makefile | sed 's/^# \{0,1\}//'

sweep:
	$(PYTHON) -m echo_core sweep --grid quick --output-dir $(DATA)

seed:
	$(PYTHON) -m echo_core sweep --grid seed --output-dir $(DATA)

latency:
	$(PYTHON) -m echo_core sweep --grid latency --output-dir $(DATA)

explain:
	$(PYTHON) -m echo_core sweep --grid explain --output-dir $(DATA)
	for cell in $(PROFILE_CELLS); do \
		payload=$${cell%%:*}; conns=$${cell##*:}; \
		$(PYTHON) -m echo_core profile --impls uring,epoll --mode stream --payload $$payload \
			--connections $$conns --duration 2 --warmup-max 10 --repeats 3 \
			--output-dir $(DATA)/profiles/stream-$${payload}x$$conns || exit 1; \
	done

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

test-liburing-current:
	PYTHON=$(PYTHON) bash scripts/test_liburing_current.sh
