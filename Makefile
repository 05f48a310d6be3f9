PYTHON ?= python3
# The tests run in the virtual environment .ci/run makes (Playwright and the other
# test-only packages) when it is there, else on $(PYTHON).
TEST_PYTHON ?= $(if $(wildcard tests/.venv/bin/python),tests/.venv/bin/python,$(PYTHON))

.PHONY: run test bench

run:
	$(PYTHON) campfire.py

test:
	$(TEST_PYTHON) tests/run.py

bench:
	$(PYTHON) tests/bench.py
	$(PYTHON) tests/bench_cable.py
	$(TEST_PYTHON) tests/bench_push.py  # its HTTPS push service checks pushes with cryptography and http_ece
	$(TEST_PYTHON) tests/bench_browser.py  # the room in Chromium (Playwright), when both are installed
	$(PYTHON) tests/bench_day.py  # a day of Campfire: 1,000 sockets, 200 readers, 200 posts/s, 10 searchers
