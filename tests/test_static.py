"""The browser app's logic that needs no page (backoff, threading, typing, drafts,
autocomplete, link checks, filters), tested in Chromium: tests/static_units.js
imports the real modules from static/ and reports each test's outcome."""

import functools
import http.server
import threading
import unittest

from tests.browser import ROOT, BrowserTestCase

MIN_UNIT_TESTS = 24  # what static_units.js holds; fewer means some never ran


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class StaticUnitTests(BrowserTestCase):
    def setUp(self):
        super().setUp()
        # The repository as it is: /static/… and /tests/… on 127.0.0.1, nothing else.
        handler = functools.partial(_Quiet, directory=ROOT)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)

    def test_every_unit_test_of_static_passes_in_chromium(self):
        page = self.new_page()
        page.goto("http://127.0.0.1:%d/tests/static_units.html" % self.server.server_port)
        page.wait_for_function("window.unitResults !== undefined")
        results = page.evaluate("window.unitResults")
        self.assertGreaterEqual(len(results), MIN_UNIT_TESTS, [result["name"] for result in results])
        for result in results:
            with self.subTest(result["name"]):
                self.assertTrue(result["ok"], result.get("error"))


if __name__ == "__main__":
    unittest.main()
