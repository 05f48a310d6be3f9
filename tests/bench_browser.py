#!/usr/bin/env python3
"""The room page in Chromium: requests and the time until the composer can be used.

`make bench` runs this when Chromium and Playwright are installed (tests/.venv). A
seeded `campfire.py serve` on 127.0.0.1 (SEED_USERS people, SEED_ROOMS rooms,
SEED_MESSAGES messages); one signed-in person opens room 1. For each of two
conditions, an unthrottled machine and DevTools' "Fast 3G" network with the CPU
slowed 4× (Network.emulateNetworkConditions, Emulation.setCPUThrottlingRate), it
prints, medians of RUNS:
  first load   a fresh browser profile: requests that reached the network, and the
               milliseconds from navigation start until the composer is a textbox
               a person can type in; and beside it, from when the page's plain
               textarea (there before the scripts run, and whose text the editor
               takes over) is laid out and takes typing, measured in loads of
               its own (TYPING_WATCH looks every frame);
  reload       the same page reloaded: the same two figures;
  ceiling      /static/offline.html (a static page with one stylesheet and no
               script) loaded the same way: the floor the network and the
               browser set for any page.
Every page load is bounded by LOAD_TIMEOUT_MS and the server is stopped at the end.
Exit status 2 when the composer never became usable."""

import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.browser import CHROMIUM, CHROMIUM_ARGS, ROOT, CampfireProcess, browser_available  # noqa: E402

SEED_USERS, SEED_ROOMS, SEED_MESSAGES = 10, 5, 400
RUNS = 3
LOAD_TIMEOUT_MS = 60_000
# Chrome DevTools' "Fast 3G" preset: 1.6 Mbit/s down and 750 kbit/s up at 90%, 562.5 ms latency.
FAST_3G = {"offline": False, "latency": 562.5, "downloadThroughput": 1.6e6 / 8 * 0.9,
           "uploadThroughput": 750e3 / 8 * 0.9}
CPU_SLOWDOWN = 4
CONDITIONS = (("unthrottled", None, 1), ("fast 3G, CPU 4x slower", FAST_3G, CPU_SLOWDOWN))
COMPOSER_USABLE = """() => {
  const box = document.querySelector('[role=textbox][aria-label="Write a message"]')
  if (!box || !box.isContentEditable || box.offsetParent === null) return false
  window.composerUsableAt = performance.now()
  return true
}"""
# Installed before any of the page's own script: the first animation frame in which the
# composer's textarea, or the editor that replaces it, is laid out and enabled.
TYPING_WATCH = """(() => {
  const look = () => {
    const box = document.querySelector('#composer textarea:not([hidden]), #composer [contenteditable="true"]')
    if (box && box.offsetParent !== null && !box.disabled) window.typingPossibleAt = performance.now()
    else requestAnimationFrame(look)
  }
  requestAnimationFrame(look)
})()"""
SEEDED_ADMIN = re.compile(r"Sign in as (\S+) \(an administrator\) with the password '([A-Za-z0-9]+)'")


def seeded_server():
    server = CampfireProcess()
    seeded = subprocess.run([sys.executable, os.path.join(ROOT, "campfire.py"), "seed", "--users", str(SEED_USERS),
                             "--rooms", str(SEED_ROOMS), "--messages", str(SEED_MESSAGES)],
                            env=server.env, check=True, capture_output=True, text=True, timeout=120)
    server.admin = SEEDED_ADMIN.search(seeded.stdout).groups()
    return server.start()


def sign_in(browser, server):
    """A storage state signed in as the seeded administrator, through the sign-in form."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.url + "/session/new")
    page.fill("input[name=email_address]", server.admin[0])
    page.fill("input[name=password]", server.admin[1])
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_url(re.compile(r".*/rooms/\d+"))
    state = context.storage_state()
    context.close()
    return state


class Load:
    """One page in a fresh profile, with the network and CPU conditions set and
    every response recorded with where it came from."""

    def __init__(self, browser, state, network, slowdown, watch=False):
        self.context = browser.new_context(storage_state=state)
        if watch:  # in loads of their own: the watch runs every frame on the page's main thread
            self.context.add_init_script(TYPING_WATCH)
        self.page = self.context.new_page()
        self.page.set_default_timeout(LOAD_TIMEOUT_MS)
        self.cdp = self.context.new_cdp_session(self.page)
        self.cdp.send("Network.enable")
        if network:
            self.cdp.send("Network.emulateNetworkConditions", network)
        if slowdown > 1:
            self.cdp.send("Emulation.setCPUThrottlingRate", {"rate": slowdown})
        self.network = 0
        self.cdp.on("Network.responseReceived", self._received)

    def _received(self, event):
        response = event["response"]
        if not response["url"].startswith("data:") and not response.get("fromDiskCache") \
                and not response.get("fromServiceWorker") and not response.get("fromPrefetchCache"):
            self.network += 1

    def timed(self, go, ready):
        self.network = 0
        go()
        self.page.wait_for_function(ready, polling="raf", timeout=LOAD_TIMEOUT_MS)
        at = self.page.evaluate("window.composerUsableAt || performance.now()")
        typing = self.page.evaluate("window.typingPossibleAt ?? null")
        self.page.wait_for_load_state("networkidle")
        return self.network, at, typing

    def close(self):
        self.context.close()


def measure(browser, server, state, network, slowdown):
    """(first loads, reloads, static page loads, watched first loads, watched reloads)."""
    room = server.url + "/rooms/1"
    first, reload, ceiling, watched_first, watched_reload = [], [], [], [], []
    for _ in range(RUNS):
        for watch, firsts, reloads in ((False, first, reload), (True, watched_first, watched_reload)):
            load = Load(browser, state, network, slowdown, watch)
            try:
                firsts.append(load.timed(lambda: load.page.goto(room), COMPOSER_USABLE))
                reloads.append(load.timed(load.page.reload, COMPOSER_USABLE))
            finally:
                load.close()
        load = Load(browser, state, network, slowdown)
        try:
            ceiling.append(load.timed(lambda: load.page.goto(server.url + "/static/offline.html"),
                                      "() => document.readyState === 'complete'"))
        finally:
            load.close()
    return first, reload, ceiling, watched_first, watched_reload


def medians(samples):
    """(requests, ms, ms until typing or None): the median of each."""
    typing = [ms for _, _, ms in samples if ms is not None]
    return (statistics.median(count for count, _, _ in samples), statistics.median(ms for _, ms, _ in samples),
            statistics.median(typing) if typing else None)


def main():
    if not browser_available():
        print("browser: skipped (Chromium or Playwright is not installed)")
        return 0
    from playwright.sync_api import sync_playwright
    server = seeded_server()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            state = sign_in(browser, server)
            print("browser: room 1 of a seeded server (%d people, %d rooms, %d messages), medians of %d"
                  % (SEED_USERS, SEED_ROOMS, SEED_MESSAGES, RUNS))
            for label, network, slowdown in CONDITIONS:
                started = time.monotonic()
                first, reload, ceiling, watched_first, watched_reload = measure(browser, server, state, network,
                                                                                slowdown)
                for name, samples, watched in (("first load", first, watched_first),
                                               ("reload", reload, watched_reload)):
                    requests, ms, _ = medians(samples)
                    typing = medians(watched)[2]
                    print("  %-24s %-10s %3d requests  composer usable %7.0f ms  (typing from %s)" % (
                        label, name, requests, ms, "%.0f ms" % typing if typing is not None else "-"))
                requests, ms, _ = medians(ceiling)
                print("  %-24s %-10s %3d requests  static page loaded %5.0f ms (ceiling)"
                      % (label, "ceiling", requests, ms))
                print("  (%s: %.0f s)" % (label, time.monotonic() - started))
            browser.close()
    except Exception as error:  # a composer that never became usable, or a page that failed
        print("browser: FAILED: %s" % str(error).splitlines()[0])
        return 2
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
