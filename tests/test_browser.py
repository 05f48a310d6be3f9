"""A person in Chromium: first run, the room, sign out, sign in again."""

import unittest

from tests.browser import BrowserTestCase, CampfireProcess


class FirstRunInBrowserTests(BrowserTestCase):
    def setUp(self):
        super().setUp()
        self.server = CampfireProcess().start()
        self.addCleanup(self.server.cleanup)

    def test_first_run_lands_in_all_talk_then_sign_out_and_back_in(self):
        page = self.new_page()
        page.goto(self.server.url + "/")
        self.assertTrue(page.url.endswith("/first_run"))
        page.get_by_label("Your name").fill("Ada Admin")
        page.get_by_label("Email address").fill("ada@example.com")
        page.get_by_label("Password").fill("a long secret")
        page.get_by_role("button", name="Create account").click()
        page.wait_for_url("**/rooms/*")
        self.assertEqual(page.get_by_role("heading", level=1).inner_text(), "All Talk")
        self.assertEqual(page.locator(".messages").count(), 1)
        self.assertIn("Ada Admin", page.locator(".topbar").inner_text())
        self.screenshot(page, "room-empty")

        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url("**/session/new")
        page.get_by_label("Email address").fill("ada@example.com")
        self.allow_error("status of 401")
        page.get_by_label("Password").fill("wrong password")
        page.get_by_role("button", name="Sign in").click()
        self.assertIn("Too many requests or unauthorized.", page.locator("[role=alert]").inner_text())

        page.get_by_label("Password").fill("a long secret")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/rooms/*")
        self.assertEqual(page.get_by_role("heading", level=1).inner_text(), "All Talk")
        self.screenshot(page, "room-after-sign-in")

    def test_first_run_form_shows_errors_next_to_fields(self):
        page = self.new_page()
        page.goto(self.server.url + "/first_run")
        page.get_by_label("Your name").fill("Ada")
        page.get_by_label("Email address").fill("ada@example.com")
        page.get_by_label("Password").fill("x" * 80)
        page.evaluate("document.querySelector('#user_password').removeAttribute('maxlength')")
        page.get_by_label("Password").fill("x" * 80)
        self.allow_error("status of 422")
        page.get_by_role("button", name="Create account").click()
        self.assertIn("at most 72", page.locator("#user_password_error").inner_text())
        self.screenshot(page, "first-run-error")


if __name__ == "__main__":
    unittest.main()
