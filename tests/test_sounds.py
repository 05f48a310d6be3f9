"""Browser tests for static/sounds.js: the 56 /play sounds synthesized with Web Audio.

Drives Debian's Chromium through Playwright against a throwaway static server on
127.0.0.1:0. Every sound is rendered offline and checked for length, loudness and
clipping, the sounds are checked to be pairwise distinct, and playSound is checked
to work after a click. Any console error or page error fails the test.
"""

import http.server
import itertools
import os
import threading
import unittest
from functools import partial
from pathlib import Path

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

from tests.browser import CHROMIUM  # noqa: E402  (Debian's Chromium, wherever it is)
from tests.browser import CHROMIUM_ARGS  # noqa: E402
HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE.parent / "static"
TEST_PAGE = "/__sounds_test__.html"
TEST_PAGE_HTML = b"""<!doctype html>
<meta charset="utf-8">
<title>sounds</title>
<link rel="icon" href="data:,">
<button id="play" type="button">Play tada</button>
<script type="module">
  import * as sounds from "/sounds.js";
  window.sounds = sounds;
  document.getElementById("play").addEventListener("click", async () => {
    await sounds.playSound("tada");
    window.played = true;
  });
  window.ready = true;
</script>
"""

CAMPFIRE_SOUNDS = sorted(
    "56k ballmer bell bezos bueller butts clowntown cottoneyejoe crickets curb dadgummit dangerzone danielsan "
    "deeper donotwant drama flawless glados gogogo greatjob greyjoy guarantee heygirl honk horn horror "
    "inconceivable letitgo live loggins makeitso noooo nyan ohmy ohyeah pushit rimshot rollout rumble sax "
    "secret sexyback story tada tmyk totes trololo trombone unix vuvuzela what whoomp wups yay yeah yodel".split()
)

FRAME_S = 0.05
FINGERPRINT_FRAMES = 90  # 4.5 s: the longest a sound may be, so every print has one length

# Renders every sound and reduces each to numbers: length, peak, and per 50 ms frame
# the RMS level and zero-crossing rate (a coarse spectral brightness).
RENDER_ALL_JS = """async ([frameS, frames]) => {
  const out = {};
  for (const name of window.sounds.SOUND_NAMES) {
    try {
      const buffer = await window.sounds.renderSound(name);
      const data = buffer.getChannelData(0), step = Math.round(frameS * buffer.sampleRate);
      let peak = 0;
      for (const x of data) peak = Math.max(peak, Math.abs(x));
      const rms = [], zcr = [];
      for (let f = 0; f < frames; f++) {
        let sum = 0, crossings = 0;
        for (let i = f * step; i < (f + 1) * step && i < data.length; i++) {
          sum += data[i] * data[i];
          if (i && (data[i] >= 0) != (data[i - 1] >= 0)) crossings++;
        }
        rms.push(Math.sqrt(sum / step));
        zcr.push(crossings / step);
      }
      out[name] = { duration: buffer.duration, peak, rms, zcr };
    } catch (error) {
      out[name] = { error: String(error) };
    }
  }
  return out;
}"""


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path == TEST_PAGE:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(TEST_PAGE_HTML)))
            self.end_headers()
            self.wfile.write(TEST_PAGE_HTML)
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


def _distance(a, b):
    """Mean difference of two fingerprints: RMS normalised to each sound's loudest frame."""
    top_a, top_b = max(a["rms"]) or 1, max(b["rms"]) or 1
    level = sum(abs(x / top_a - y / top_b) for x, y in zip(a["rms"], b["rms"])) / FINGERPRINT_FRAMES
    brightness = sum(abs(x - y) for x, y in zip(a["zcr"], b["zcr"])) / FINGERPRINT_FRAMES
    return level + 10 * brightness


class SoundsBrowserTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if sync_playwright is None or not Path(CHROMIUM).exists():
            if os.environ.get("CI"):
                raise AssertionError("Chromium or Playwright is missing; CI must install them")
            raise unittest.SkipTest("Chromium or Playwright is missing")
        handler = partial(_Handler, directory=str(STATIC_DIR))
        cls.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        cls.url = f"http://127.0.0.1:{cls.server.server_address[1]}{TEST_PAGE}"
        cls.playwright = sync_playwright().start()
        cls.browser = cls.playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        cls._rendered = None

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.playwright.stop()
        cls.server.shutdown()
        cls.server.server_close()

    def setUp(self):
        self.errors = []
        self.page = self.browser.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.goto(self.url)
        self.page.wait_for_function("window.ready === true")

    def tearDown(self):
        self.page.close()
        self.assertEqual(self.errors, [])

    def rendered(self):
        if SoundsBrowserTest._rendered is None:
            SoundsBrowserTest._rendered = self.page.evaluate(RENDER_ALL_JS, [FRAME_S, FINGERPRINT_FRAMES])
        return SoundsBrowserTest._rendered

    def test_sound_names_are_campfires_56_names_sorted(self):
        self.assertEqual(self.page.evaluate("window.sounds.SOUND_NAMES"), CAMPFIRE_SOUNDS)

    def test_every_sound_renders_audibly_between_a_third_of_a_second_and_five(self):
        for name, sound in self.rendered().items():
            with self.subTest(name):
                self.assertNotIn("error", sound)
                self.assertTrue(0.3 <= sound["duration"] <= 5, sound["duration"])
                self.assertTrue(0.05 <= sound["peak"] < 1.0, sound["peak"])

    def test_every_sound_is_different_from_every_other(self):
        rendered = self.rendered()
        for a, b in itertools.combinations(CAMPFIRE_SOUNDS, 2):
            with self.subTest(f"{a} vs {b}"):
                self.assertGreater(_distance(rendered[a], rendered[b]), 0.05)

    def test_rendering_is_repeatable(self):
        first = self.page.evaluate("async () => Array.from((await window.sounds.renderSound('rimshot')).getChannelData(0).slice(0, 4000))")
        second = self.page.evaluate("async () => Array.from((await window.sounds.renderSound('rimshot')).getChannelData(0).slice(0, 4000))")
        self.assertEqual(len(first), len(second))
        self.assertLess(max(abs(x - y) for x, y in zip(first, second)), 1e-4)

    def test_render_rejects_an_unknown_name(self):
        message = self.page.evaluate("window.sounds.renderSound('incoming').then(() => 'rendered', (e) => e.message)")
        self.assertIn("unknown sound", message)

    def test_play_before_any_gesture_resolves_silently(self):
        self.assertIsNone(self.page.evaluate("window.sounds.playSound('tada')"))
        self.assertIsNone(self.page.evaluate("window.sounds.playSound('mario_coin')"))

    def test_play_after_a_click_schedules_the_sound(self):
        self.page.get_by_role("button", name="Play tada").click()
        self.page.wait_for_function("window.played === true")
        self.assertIsNone(self.page.evaluate("window.sounds.playSound('rimshot')"))

    def test_mute_is_remembered_in_local_storage(self):
        self.assertFalse(self.page.evaluate("window.sounds.isMuted()"))
        self.page.evaluate("window.sounds.setMuted(true)")
        self.assertTrue(self.page.evaluate("window.sounds.isMuted()"))
        self.assertEqual(self.page.evaluate("localStorage.getItem('campfire:muted')"), "true")
        self.page.reload()
        self.page.wait_for_function("window.ready === true")
        self.assertTrue(self.page.evaluate("window.sounds.isMuted()"))
        self.page.get_by_role("button", name="Play tada").click()
        self.page.wait_for_function("window.played === true")
        self.page.evaluate("window.sounds.setMuted(false)")
        self.assertFalse(self.page.evaluate("window.sounds.isMuted()"))
        self.assertIsNone(self.page.evaluate("localStorage.getItem('campfire:muted')"))


if __name__ == "__main__":
    unittest.main()
