PYTHON ?= python3

.PHONY: run test bench

run:
	$(PYTHON) campfire.py

test:
	$(PYTHON) tests/run.py

bench:
	$(PYTHON) tests/bench.py
	$(PYTHON) tests/bench_cable.py
	$(PYTHON) tests/bench_push.py
