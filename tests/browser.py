"""Browser tests' shared setup: Debian's Chromium driven by Playwright, a real
campfire.py process on 127.0.0.1, and a page that fails the test on any error.

Without Chromium or Playwright the browser tests skip, except in CI (the CI
variable set), where a missing browser is a failure."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = os.path.join(ROOT, "tests", "screenshots")

# How long a browser test waits for what a person would see before it fails: Playwright's
# actions and its expect() both wait this long (expect's own default, 5 s, is too short for a
# page, its server and Chromium sharing two busy cores with the rest of the suite).
WAIT_MS = 15_000

try:
    from playwright.sync_api import expect, sync_playwright
    expect.set_options(timeout=WAIT_MS)
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None


def browser_available():
    return sync_playwright is not None and os.path.exists(CHROMIUM)


def require_browser(test_case):
    if browser_available():
        return
    message = "Chromium (%s) or Playwright is missing" % CHROMIUM
    if os.environ.get("CI"):
        test_case.fail(message + "; CI must install them")
    test_case.skipTest(message)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CampfireProcess:
    """python3 campfire.py serve on a free port with its own storage."""

    def __init__(self, storage=None, port=None, env=None):
        self.storage = storage or tempfile.mkdtemp(prefix="campfire-browser-")
        self.port = port or free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.env = dict(os.environ, CAMPFIRE_STORAGE_PATH=self.storage, **(env or {}))
        self.process = None
        self.log_path = os.path.join(self.storage, "server.log")

    def start(self):
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "campfire.py"), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env, stdout=self.log, stderr=self.log)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/up", timeout=1):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError("campfire.py did not start: " + open(self.log_path, errors="replace").read()[-2000:])

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log", None):
            self.log.close()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.storage, ignore_errors=True)


class BrowserTestCase(unittest.TestCase):
    """One Chromium for the class; pages record console and page errors."""

    @classmethod
    def setUpClass(cls):
        cls.playwright = cls.browser = None
        if not browser_available():
            return
        cls.playwright = sync_playwright().start()
        cls.browser = cls.playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

    @classmethod
    def tearDownClass(cls):
        if cls.browser:
            cls.browser.close()
        if cls.playwright:
            cls.playwright.stop()

    def setUp(self):
        require_browser(self)
        self.errors = []
        self.allowed_errors = []
        self.contexts = []

    def tearDown(self):
        for context in self.contexts:
            context.close()
        unexpected = [error for error in self.errors
                      if not any(allowed in error for allowed in self.allowed_errors)]
        self.assertEqual(unexpected, [], "the page reported errors")

    def allow_error(self, text):
        """A console error the test causes on purpose (e.g. a 401 from a wrong password)."""
        self.allowed_errors.append(text)

    def new_page(self, **context_options):
        context = self.browser.new_context(**context_options)
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append("pageerror: %s" % error))
        page.on("console", lambda message: message.type == "error" and self.errors.append(
            "console: %s" % message.text))
        page.set_default_timeout(WAIT_MS)
        return page

    def screenshot(self, page, name):
        os.makedirs(SCREENSHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SCREENSHOTS, name + ".png"), full_page=True)
