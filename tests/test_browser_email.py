"""Forgot password in Chromium: from the sign-in page, a link mailed (through aiosmtpd
on 127.0.0.1) that signs the browser in when opened."""

import re
import time
import unittest

from tests.browser import BrowserTestCase, CampfireProcess
from tests.test_email import MAIL_WAIT, SmtpServer, require_aiosmtpd


class ForgotPasswordInBrowserTests(BrowserTestCase):
    def setUp(self):
        super().setUp()
        require_aiosmtpd(self)
        self.smtp = SmtpServer()
        self.addCleanup(self.smtp.stop)
        self.server = CampfireProcess()
        self.server.env.update(SMTP_ADDRESS="127.0.0.1", SMTP_PORT=str(self.smtp.port), SMTP_SECURITY="none",
                               MAIL_FROM="Campfire <chat@example.test>", CAMPFIRE_URL=self.server.url)
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def test_forgot_password_from_the_sign_in_page_mails_a_link_that_signs_in(self):
        page = self.new_page()
        page.goto(self.server.url + "/first_run")
        page.get_by_label("Your name").fill("Ada Admin")
        page.get_by_label("Email address").fill("ada@example.com")
        page.get_by_label("Password").fill("a long secret")
        page.get_by_role("button", name="Create account").click()
        page.wait_for_url("**/rooms/*")

        other = self.new_page()  # someone signed out, on another device
        other.goto(self.server.url + "/session/new")
        other.get_by_role("link", name="Forgot password?").click()
        other.wait_for_url("**/password_resets/new")
        other.get_by_label("Email address").fill("ada@example.com")
        other.get_by_role("button", name="Email me a sign-in link").click()
        other.get_by_role("heading", name="Check your email").wait_for()
        self.assertIn("ada@example.com", other.get_by_role("status").inner_text())

        deadline = time.monotonic() + MAIL_WAIT
        while not self.smtp.inbox.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(len(self.smtp.inbox.messages), 1, "no mail arrived")
        text = self.smtp.inbox.messages[0].get_content()
        link = re.search(re.escape(self.server.url) + r"/session/transfers/\S+", text).group(0)
        other.goto(link)
        other.wait_for_url("**/rooms/*")  # transfer.js submitted the form
        self.assertIn("Ada Admin", other.locator(".topbar").inner_text())
        self.assertTrue(any(cookie["name"] == "session_token" for cookie in other.context.cookies()))


if __name__ == "__main__":
    unittest.main()
