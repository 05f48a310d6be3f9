"""axe-core over every page, at desktop and phone size, in the light and the dark theme:
no serious or critical violation (target sizes included), and a main landmark and a
level-one heading on each. axe-core is installed for the tests only (`.ci/run`
puts it in tests/.axe with npm); without it this test skips, except in CI."""

import collections
import json
import os
import re
import sqlite3
import unittest
import urllib.parse

from tests.browser import ROOT, SCREENSHOTS, browser_available
from tests.test_browser_app import ADA, PHONE, BrowserApp

AXE = os.path.join(ROOT, "tests", ".axe", "node_modules", "axe-core", "axe.min.js")
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
SIZES = {"desktop": DESKTOP, "phone": PHONE}
THEMES = ("light", "dark")
FAILING_IMPACTS = ("serious", "critical")
# Also failing, though axe calls them moderate: every page has its main landmark and a heading.
FAILING_RULES = ("landmark-one-main", "page-has-heading-one")


class AxeTests(BrowserApp):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not browser_available():
            return
        cls.pages = cls.every_page()

    @classmethod
    def every_page(cls):
        """(name, path, person or None) for every page a person opens."""
        import http.client
        connection = http.client.HTTPConnection("127.0.0.1", cls.server.port, timeout=10)
        cookie = "; ".join("%s=%s" % (item["name"], item["value"]) for item in cls.states[ADA]["cookies"])

        def get(path):
            connection.request("GET", path, headers={"Cookie": cookie})
            response = connection.getresponse()
            return response.status, response.read().decode()

        _, room = get("/rooms/1")
        message_id = re.findall(r'data-message-id="(\d+)"', room)[-1]
        _, account = get("/account/edit")
        join_path = urllib.parse.urlsplit(re.search(r'id="invite_url"[^>]*value="([^"]+)"', account).group(1)).path
        qr_path = re.search(r'href="(/qr_code/[^"]+)"', account).group(1)
        connection.close()
        database = sqlite3.connect(os.path.join(cls.server.storage, "db", "production.sqlite3"))
        people = "/users/%d" % database.execute("SELECT id FROM users WHERE email_address = 'person2@example.com'").fetchone()
        database.close()
        signed_in = [
            ("room", "/rooms/1"), ("closed room", "/rooms/2"), ("permalink", "/rooms/1/@%s" % message_id),
            ("rooms screen", "/users/me/sidebar"), ("search", "/searches?q=the"), ("profile", "/users/me/profile"),
            ("person", people), ("account", "/account/edit"), ("custom styles", "/account/custom_styles/edit"),
            ("bots", "/account/bots"), ("new bot", "/account/bots/new"), ("new room", "/rooms/opens/new"),
            ("new ping", "/rooms/directs/new"), ("room settings", "/rooms/opens/1/edit"),
            ("edit message", "/rooms/1/messages/%s/edit" % message_id),
            ("boost", "/messages/%s/boosts/new" % message_id), ("QR code", qr_path), ("not found", "/rooms/999999"),
        ]
        signed_out = [("sign in", "/session/new"), ("join", join_path)]
        return [(name, path, ADA) for name, path in signed_in] + [(name, path, None) for name, path in signed_out]

    def setUp(self):
        super().setUp()
        if not os.path.exists(AXE):
            message = "axe-core is missing (%s)" % AXE
            if os.environ.get("CI"):
                self.fail(message + "; .ci/run must install it")
            self.skipTest(message)
        self.allow_error("status of 404")

    def violations(self, page):
        page.add_script_tag(path=AXE)
        return page.evaluate("""async () => {
            // target-size (WCAG 2.2's 24 px) is off by default in axe: on here.
            const results = await axe.run(document, { resultTypes: ["violations"], rules: { "target-size": { enabled: true } } })
            return results.violations.map((rule) => ({ id: rule.id, impact: rule.impact,
              targets: rule.nodes.slice(0, 5).map((node) => node.target.join(" ")) }))
        }""")

    def test_no_serious_or_critical_violation_on_any_page_at_any_size_in_either_theme(self):
        failures, checked, seen = [], 0, collections.Counter()
        for size, options in SIZES.items():
            for theme in THEMES:
                for person in (ADA, None):
                    state = self.states[ADA] if person else {"cookies": [], "origins": []}
                    page = self.new_page(storage_state=state, color_scheme=theme, bypass_csp=True, **options)
                    for name, path, needs in self.pages:
                        if needs != person:
                            continue
                        page.goto(self.server.url + path)
                        if path.startswith("/rooms/1") and person:
                            page.wait_for_selector("body[data-cable=live]")
                        violations = self.violations(page)
                        seen.update("%s %s" % (rule["impact"], rule["id"]) for rule in violations)
                        found = [rule for rule in violations
                                 if rule["impact"] in FAILING_IMPACTS or rule["id"] in FAILING_RULES]
                        checked += 1
                        failures += ["%s (%s, %s, %s): %s %s %s" % (name, path, size, theme, rule["id"], rule["impact"],
                                                                 rule["targets"]) for rule in found]
                    page.context.close()
                    self.contexts.remove(page.context)
        os.makedirs(SCREENSHOTS, exist_ok=True)   # the run's summary, beside its screenshots
        with open(os.path.join(SCREENSHOTS, "axe-summary.json"), "w") as summary:
            json.dump({"pages checked": checked, "pages": [path for _, path, _ in self.pages],
                       "violations (impact rule: pages)": dict(seen), "failing": failures}, summary, indent=1)
        self.assertGreaterEqual(checked, 4 * len(self.pages))
        self.assertEqual(failures, [])


if __name__ == "__main__":
    unittest.main()
