"""Administrators and profiles in Chromium: a sign-in link opened in a second
browser, and the account's custom CSS applied on every page."""

import unittest

from tests.browser import BrowserTestCase, CampfireProcess

CSS = "body { outline: 3px solid rgb(1, 2, 3) }"


class AdminInBrowserTests(BrowserTestCase):
    def setUp(self):
        super().setUp()
        self.server = CampfireProcess().start()
        self.addCleanup(self.server.cleanup)

    def first_run(self, page):
        page.goto(self.server.url + "/first_run")
        page.get_by_label("Your name").fill("Ada Admin")
        page.get_by_label("Email address").fill("ada@example.com")
        page.get_by_label("Password").fill("a long secret")
        page.get_by_role("button", name="Create account").click()
        page.wait_for_url("**/rooms/*")

    def test_sign_in_link_opened_in_a_second_browser_signs_in_as_that_person(self):
        page = self.new_page()
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=self.server.url)
        self.first_run(page)
        page.get_by_role("link", name="Ada Admin", exact=True).click()
        page.wait_for_url("**/users/me/profile")
        page.get_by_role("button", name="Copy sign-in link").click()
        copied = page.evaluate("navigator.clipboard.readText()")
        self.assertEqual(copied, page.locator("#session_transfer_url").input_value())
        self.assertIn("/session/transfers/", copied)
        self.screenshot(page, "profile")

        other = self.new_page()  # a second context: its own cookies, like another device
        self.assertEqual(other.context.cookies(), [])
        other.goto(copied)
        other.wait_for_url("**/rooms/*")  # transfer.js submitted the form; / sent us to the room
        self.assertEqual(other.get_by_role("heading", level=1).inner_text(), "All Talk")
        self.assertIn("Ada Admin", other.locator(".topbar").inner_text())
        self.assertTrue(any(cookie["name"] == "session_token" for cookie in other.context.cookies()))

        # Fetched rather than opened: Chromium asks a bare SVG document for /favicon.ico.
        href = page.get_by_role("link", name="Show auto-login QR code").get_attribute("href")
        qr_code = page.request.get(self.server.url + href)
        self.assertEqual(qr_code.headers["content-type"], "image/svg+xml")
        self.assertIn(b'<path fill="#000" d="M', qr_code.body())

    def test_custom_css_shows_in_computed_styles_on_every_page(self):
        page = self.new_page()
        self.first_run(page)
        page.get_by_role("link", name="Account", exact=True).click()
        page.wait_for_url("**/account/edit")
        self.assertTrue(page.locator("#invite_url").input_value().startswith(self.server.url + "/join/"))
        page.get_by_role("link", name="Edit custom CSS").click()
        page.get_by_label("Custom CSS").fill(CSS)
        page.get_by_role("button", name="Save changes").click()
        page.wait_for_url("**/account/edit")
        outline = "[getComputedStyle(document.body).outlineColor, getComputedStyle(document.body).outlineWidth]"
        self.assertEqual(page.evaluate(outline), ["rgb(1, 2, 3)", "3px"])
        page.goto(self.server.url + "/")
        page.wait_for_url("**/rooms/*")
        self.assertEqual(page.evaluate(outline), ["rgb(1, 2, 3)", "3px"])
        signed_out = self.new_page()
        signed_out.goto(self.server.url + "/session/new")
        self.assertEqual(signed_out.evaluate(outline), ["rgb(1, 2, 3)", "3px"])


if __name__ == "__main__":
    unittest.main()
