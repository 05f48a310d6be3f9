"""Optional email, against aiosmtpd (an independent SMTP server) on 127.0.0.1: plain
SMTP, STARTTLS with a login and implicit TLS, each checking the server's certificate
against a test CA passed through SSL_CERT_FILE; retries; "Forgot password?" (the same
answer for known and unknown addresses, rate limits, a link that signs in);
invitations; digests of missed mentions and direct messages on an injected clock;
the opt-out; a name that tries to add a header; and, without SMTP settings, nothing."""

import email
import email.policy
import os
import re
import shutil
import tempfile
import threading
import time
import unittest
from unittest import mock

from tests.browser import free_port
from tests.helpers import AppTestCase, Client, campfire
from tests.test_offsite import make_ca
from tests.test_rooms import ChatTestCase

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult
except ImportError:  # pragma: no cover - depends on the machine
    Controller = None

PUBLIC_URL = "https://chat.example.test"
MAIL_WAIT = 20.0  # seconds a test waits for the mail thread to finish


class Inbox:
    """aiosmtpd's handler: every accepted message, parsed; `refuse` answers the next n DATA with a 451."""

    def __init__(self, refuse=0):
        self.messages = []
        self.envelopes = []
        self.refuse = refuse
        self.attempts = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.attempts += 1
            if self.refuse:
                self.refuse -= 1
                return "451 4.3.0 try again later"
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.messages.append(email.message_from_bytes(envelope.original_content, policy=email.policy.default))
        return "250 OK"


def require_aiosmtpd(test):
    if Controller is None:
        if os.environ.get("CI"):
            test.fail("aiosmtpd is missing; CI installs it")
        test.skipTest("aiosmtpd is missing")


class SmtpServer:
    """aiosmtpd on a free loopback port: plain, STARTTLS (with a login) or implicit TLS."""

    def __init__(self, security="none", inbox=None, certificates=None, login=None):
        import ssl
        self.inbox = inbox or Inbox()
        self.port = free_port()
        self.logins = []
        kwargs = {}
        if security != "none":
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certificates["cert"], certificates["key"])
            if security == "tls":
                kwargs["ssl_context"] = context
                kwargs["server_hostname"] = "127.0.0.1"
            else:
                kwargs.update(tls_context=context, require_starttls=True)
        if login:
            def authenticator(server, session, envelope, mechanism, auth_data):
                self.logins.append((auth_data.login, auth_data.password))
                return AuthResult(success=(auth_data.login, auth_data.password) == login)
            kwargs.update(authenticator=authenticator, auth_require_tls=True, auth_required=True)
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    def stop(self):
        self.controller.stop()


def mail_config(port, security="none", **more):
    return dict(smtp_address="127.0.0.1", smtp_port=port, smtp_security=security,
                mail_from="Campfire <chat@example.test>", public_url=PUBLIC_URL, mail_retry_delay=0.01, **more)


class MailTestCase(ChatTestCase):
    SECURITY = "none"
    LOGIN = None

    def setUp(self):
        require_aiosmtpd(self)
        self.certificates_dir = tempfile.mkdtemp(prefix="campfire-mail-ca-")
        self.addCleanup(shutil.rmtree, self.certificates_dir, True)
        self.certificates = make_ca(self.certificates_dir, "smtp")
        self.smtp = SmtpServer(self.SECURITY, certificates=self.certificates, login=self.LOGIN)
        self.addCleanup(self.smtp.stop)
        environment = mock.patch.dict(os.environ, {"SSL_CERT_FILE": self.certificates["ca"]})
        environment.start()
        self.addCleanup(environment.stop)
        extra = {"smtp_username": self.LOGIN[0].decode(), "smtp_password": self.LOGIN[1].decode()} if self.LOGIN else {}
        self.CONFIG = mail_config(self.smtp.port, self.SECURITY, **extra)
        super().setUp()

    @property
    def inbox(self):
        return self.smtp.inbox

    def settle(self):
        self.assertTrue(self.app.mailer.wait_idle(MAIL_WAIT), "the mail thread never finished")

    def forgot(self, address, client=None):
        return (client or Client(self.app)).post("/password_resets", {"email_address": address})

    def link_in(self, message, path_start):
        text = message.get_content()
        found = re.search(re.escape(PUBLIC_URL) + re.escape(path_start) + r"\S+", text)
        self.assertIsNotNone(found, text)
        return found.group(0)


class SignInLinkTests(MailTestCase):
    def test_forgot_password_mails_a_link_that_signs_in_for_four_hours(self):
        page = Client(self.app).get("/session/new")
        self.assertIn('href="/password_resets/new">Forgot password?</a>', page.text)
        self.assertEqual(Client(self.app).get("/password_resets/new").status, 200)
        answer = self.forgot("Bob@Example.com")
        self.assertEqual(answer.status, 200)
        self.assertIn("Check your email", answer.text)
        self.settle()
        self.assertEqual(len(self.inbox.messages), 1)
        message = self.inbox.messages[0]
        self.assertEqual(self.inbox.envelopes[0], ("chat@example.test", ["bob@example.com"]))
        self.assertEqual(message["To"].addresses[0].addr_spec, "bob@example.com")
        self.assertEqual(message["To"].addresses[0].display_name, "Bob Builder")
        self.assertEqual(message["Subject"], "Sign in to Campfire")
        link = self.link_in(message, "/session/transfers/")
        stranger = Client(self.app)
        path = link[len(PUBLIC_URL):]
        self.assertEqual(stranger.get(path).status, 200)
        signed_in = stranger.request("PUT", path)
        self.assertEqual(signed_in.status, 303)
        self.assertIn("Bob Builder", stranger.get("/users/me/profile").text)
        # The token is the one the profile's sign-in link uses: it ends after 4 hours.
        token = path.rsplit("/", 1)[1]
        self.assertEqual(self.app.signer.unsign(token, "transfer"), self.bob_id)
        with mock.patch("time.time", return_value=time.time() + campfire.TRANSFER_TOKEN_SECONDS + 60):
            self.assertEqual(Client(self.app).request("PUT", path).status, 400)

    def test_the_answer_is_the_same_for_known_and_unknown_addresses(self):
        known = self.forgot("bob@example.com")
        unknown = self.forgot("nobody@example.com")
        self.assertEqual((known.status, known.text.replace("bob@", "X@")),
                         (unknown.status, unknown.text.replace("nobody@", "X@")))
        self.settle()
        self.assertEqual([envelope[1] for envelope in self.inbox.envelopes], [["bob@example.com"]])

    def test_requests_are_limited_per_address_and_per_client_address(self):
        limit, _ = campfire.FORGOT_PASSWORD_EMAIL_LIMIT
        for index in range(limit):
            self.assertEqual(self.forgot("bob@example.com", Client(self.app, "10.0.0.%d" % index)).status, 200)
        self.assertEqual(self.forgot("BOB@example.com", Client(self.app, "10.0.1.1")).status, 429)
        # Unknown addresses count the same way, so a 429 tells nothing about who has an account.
        for index in range(limit):
            self.forgot("ghost@example.com", Client(self.app, "10.0.2.%d" % index))
        self.assertEqual(self.forgot("ghost@example.com", Client(self.app, "10.0.3.1")).status, 429)
        one_client = Client(self.app, "10.9.9.9")
        per_client, _ = campfire.FORGOT_PASSWORD_LIMIT
        for index in range(per_client):
            self.assertEqual(self.forgot("person%d@example.com" % index, one_client).status, 200)
        self.assertEqual(self.forgot("carol@example.com", one_client).status, 429)
        self.settle()
        self.assertEqual(len(self.inbox.messages), limit)

    def test_a_bad_address_is_a_422_and_sends_nothing(self):
        self.assertEqual(self.forgot("not an address").status, 422)
        self.settle()
        self.assertEqual(self.inbox.attempts, 0)


class InvitationTests(MailTestCase):
    def test_an_administrator_mails_the_invitation_link(self):
        page = self.ada.get("/account/edit")
        self.assertIn("Email the invitation link", page.text)
        answer = self.ada.post("/account/invitations", {"invitation[email_address]": "newcomer@example.org"})
        self.assertEqual(answer.status, 200)
        self.assertIn('role="status">The invitation link is on its way to newcomer@example.org', answer.text)
        self.settle()
        message = self.inbox.messages[0]
        self.assertEqual(self.inbox.envelopes[0][1], ["newcomer@example.org"])
        self.assertEqual(message["Subject"], "Ada Admin invites you to Campfire")
        link = self.link_in(message, "/join/")
        self.assertEqual(link, PUBLIC_URL + "/join/" + self.app.store.account()["join_code"])
        self.assertEqual(Client(self.app).get(link[len(PUBLIC_URL):]).status, 200)

    def test_members_cannot_mail_invitations_and_bad_addresses_are_422(self):
        self.assertNotIn("Email the invitation link", self.bob.get("/account/edit").text)
        self.assertEqual(self.bob.post("/account/invitations", {"invitation[email_address]": "x@example.org"}).status,
                         403)
        self.assertEqual(self.ada.post("/account/invitations", {"invitation[email_address]": "nope"}).status, 422)
        self.settle()
        self.assertEqual(self.inbox.attempts, 0)

    def test_administrators_see_the_settings_but_never_the_password(self):
        self.app.config.smtp_username, self.app.config.smtp_password = "mailer", "hunter2-secret"
        page = self.ada.get("/account/edit").text
        self.assertIn('id="mail_settings"', page)
        self.assertIn("127.0.0.1:%d" % self.smtp.port, page)
        self.assertIn("mailer", page)
        self.assertIn(PUBLIC_URL, page)
        self.assertNotIn("hunter2-secret", page)
        self.assertNotIn('id="mail_settings"', self.bob.get("/account/edit").text)


class HeaderInjectionTests(MailTestCase):
    def test_a_name_with_line_breaks_adds_no_header_or_recipient(self):
        with self.app.db.atomic():
            self.app.db.execute("UPDATE users SET name = ? WHERE id = ?",
                                ("Bob\r\nBcc: victim@example.org\r\nSubject: pwned", self.bob_id))
        self.app.store.forget_user(self.bob_id)
        self.assertEqual(self.forgot("bob@example.com").status, 200)
        self.settle()
        self.assertEqual(self.inbox.envelopes, [("chat@example.test", ["bob@example.com"])])
        message = self.inbox.messages[0]
        self.assertIsNone(message["Bcc"])
        self.assertEqual(message.get_all("Subject"), ["Sign in to Campfire"])
        self.assertEqual(message["To"].addresses[0].display_name, "Bob Bcc: victim@example.org Subject: pwned")

    def test_build_mail_refuses_an_address_with_a_line_break(self):
        with self.assertRaises(ValueError):
            campfire.build_mail("chat@example.test", "Eve", "eve@example.org\r\nBcc: x@example.org", "Hi", "text")


class StartTlsTests(MailTestCase):
    SECURITY = "starttls"
    LOGIN = (b"campfire", b"mail-password")

    def test_starttls_with_a_login_delivers_against_the_test_ca(self):
        self.ada.post("/account/invitations", {"invitation[email_address]": "newcomer@example.org"})
        self.settle()
        self.assertEqual(len(self.inbox.messages), 1)
        self.assertEqual(self.smtp.logins, [(b"campfire", b"mail-password")])
        self.assertEqual(self.app.mailer.sent, 1)


class ImplicitTlsTests(MailTestCase):
    SECURITY = "tls"

    def test_implicit_tls_delivers_against_the_test_ca(self):
        self.forgot("carol@example.com")
        self.settle()
        self.assertEqual([envelope[1] for envelope in self.inbox.envelopes], [["carol@example.com"]])

    def test_a_certificate_the_system_does_not_trust_is_refused_and_tries_are_bounded(self):
        with mock.patch.dict(os.environ, {"SSL_CERT_FILE": os.path.join(self.certificates_dir, "missing.pem")}):
            with self.assertLogs("campfire", "WARNING") as logs:
                self.forgot("carol@example.com")
                self.settle()
        self.assertEqual(self.inbox.messages, [])
        self.assertEqual((self.app.mailer.sent, self.app.mailer.failed), (0, 1))
        self.assertTrue(any("CERTIFICATE_VERIFY_FAILED" in line for line in logs.output), logs.output)
        self.assertTrue(any("failed %d times, given up" % campfire.MAIL_ATTEMPTS in line for line in logs.output))


class RetryTests(MailTestCase):
    def test_a_4xx_reply_is_tried_again_until_it_is_accepted(self):
        self.smtp.inbox.refuse = 2
        with self.assertLogs("campfire", "WARNING"):
            self.forgot("bob@example.com")
            self.settle()
        self.assertEqual(self.inbox.attempts, 3)
        self.assertEqual(len(self.inbox.messages), 1)

    def test_a_4xx_forever_gives_up_after_the_bounded_attempts(self):
        self.smtp.inbox.refuse = 100
        with self.assertLogs("campfire", "WARNING"):
            self.forgot("bob@example.com")
            self.settle()
        self.assertEqual(self.inbox.attempts, campfire.MAIL_ATTEMPTS)
        self.assertEqual(self.app.mailer.failed, 1)

    def test_a_full_queue_drops_new_mail(self):
        mailer = campfire.Mailer(campfire.Config(**mail_config(self.smtp.port, mail_queue_size=2)))
        self.addCleanup(mailer.close)
        message = campfire.build_mail("chat@example.test", "Bob", "bob@example.com", "Hi", "text")
        with mailer._condition:  # the thread can't take one while the queue fills
            results = [mailer.send(message) for _ in range(2)]
            with self.assertLogs("campfire", "WARNING"):
                results.append(mailer.send(message))
        self.assertEqual(results, [True, True, False])
        self.assertTrue(mailer.wait_idle(MAIL_WAIT))
        self.assertEqual(len(self.inbox.messages), 2)


class DigestTests(MailTestCase):
    def run_digests(self, minutes_later):
        queued = self.app.digests.run(now=time.time() + minutes_later * 60)
        self.settle()
        return queued

    def test_a_mention_unseen_for_30_minutes_is_mailed_once_with_its_link(self):
        message_id = self.post_id(self.carol, self.all_talk, "@Bob Builder can you review the plan?")
        self.assertEqual(self.run_digests(29), 0)
        self.assertEqual(self.run_digests(31), 1)
        self.assertEqual([envelope[1] for envelope in self.inbox.envelopes], [["bob@example.com"]])
        message = self.inbox.messages[0]
        self.assertEqual(message["Subject"], "You missed 1 message in Campfire")
        text = message.get_content()
        self.assertIn("Carol Creator, in All Talk", text)
        self.assertIn("can you review the plan?", text)
        self.assertIn("%s/rooms/%d/@%d" % (PUBLIC_URL, self.all_talk, message_id), text)
        self.assertIn(PUBLIC_URL + "/users/me/profile", text)
        self.assertEqual(self.run_digests(120), 0)  # never the same message twice

    def test_at_most_one_digest_an_hour(self):
        self.post_id(self.carol, self.all_talk, "@Bob Builder first")
        self.assertEqual(self.run_digests(31), 1)
        with mock.patch("time.time", return_value=time.time() + 35 * 60):
            self.post_id(self.carol, self.all_talk, "@Bob Builder second")
        self.assertEqual(self.run_digests(70), 0)   # unseen 35 minutes, but the last digest is 39 minutes old
        self.assertEqual(self.run_digests(92), 1)   # an hour after the first
        self.assertEqual(len(self.inbox.messages), 2)
        self.assertIn("second", self.inbox.messages[1].get_content())
        self.assertNotIn("first", self.inbox.messages[1].get_content())

    def test_a_direct_message_unseen_is_mailed_and_a_seen_one_is_not(self):
        direct = self.create_direct_room(self.carol, [self.dave_id])
        self.post_id(self.carol, direct, "Are you coming tomorrow?")
        self.assertEqual(self.run_digests(31), 1)
        self.assertEqual(self.inbox.envelopes[0][1], ["dave@example.com"])
        self.assertIn("Carol Creator, in Carol Creator", self.inbox.messages[0].get_content())
        # Read within 30 minutes: no mail.
        self.post_id(self.carol, self.all_talk, "@Bob Builder quick one")
        self.assertEqual(self.bob.get("/rooms/%d" % self.all_talk).status, 200)
        self.assertEqual(self.run_digests(31 + 61), 0)

    def test_messages_older_than_the_lookback_are_not_mailed(self):
        with mock.patch("time.time", return_value=time.time() - campfire.DIGEST_LOOKBACK - 60):
            self.post_id(self.carol, self.all_talk, "@Bob Builder an old question")
        self.assertEqual(self.run_digests(31), 0)
        self.post_id(self.carol, self.all_talk, "@Bob Builder a new question")
        self.assertEqual(self.run_digests(31), 1)
        self.assertNotIn("old question", self.inbox.messages[0].get_content())

    def test_turning_digests_off_on_the_profile_stops_them(self):
        profile = self.bob.get("/users/me/profile").text
        self.assertIn('id="user_email_digest" name="digest" value="1" checked', profile)
        self.assertEqual(self.bob.request("PUT", "/users/me/email_digest", form={"digest": "0"}).status, 303)
        self.assertNotIn('value="1" checked', self.bob.get("/users/me/profile").text.split('id="email_digest"')[1])
        self.post_id(self.carol, self.all_talk, "@Bob Builder hello?")
        self.assertEqual(self.run_digests(31), 0)
        self.bob.request("PUT", "/users/me/email_digest", form={"digest": ["0", "1"]})
        self.assertEqual(self.run_digests(32), 1)

    def test_the_digest_table_is_ours_and_rails_tables_are_unchanged(self):
        tables = {row[0] for row in self.app.db.all("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self.assertIn("campfire_py_email_digests", tables)
        columns = {row[1] for row in self.app.db.all("PRAGMA table_info(users)")}
        self.assertEqual(columns, {"id", "bio", "bot_token", "created_at", "email_address", "name",
                                   "password_digest", "role", "status", "updated_at"})


class ServerDigestTimerTests(unittest.TestCase):
    def test_the_server_timer_mails_a_digest(self):
        require_aiosmtpd(self)
        from tests.helpers import LiveServer
        smtp = SmtpServer()
        self.addCleanup(smtp.stop)
        server = LiveServer(**mail_config(smtp.port, digest_delay=0.0, digest_check_interval=0.05))
        self.addCleanup(server.stop)
        app = server.app

        def setup():
            ada = app.store.first_run("Ada", "ada@example.com", campfire.hash_password("secret", 2 ** 10))[0]
            bob = app.store.create_user("Bob", "bob@example.com", "secret-password")
            room = app.store.room(1)
            app.store.post_message(room, ada, "@Bob hello", "m1")
            return bob
        server.call(setup)
        deadline = time.monotonic() + MAIL_WAIT
        while not smtp.inbox.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual([envelope[1] for envelope in smtp.inbox.envelopes], [["bob@example.com"]])


class NoSmtpTests(AppTestCase):
    def test_without_smtp_settings_nothing_appears_and_nothing_is_sent(self):
        self.first_run()
        self.assertFalse(self.app.mailer.enabled)
        signed_out = Client(self.app)
        self.assertNotIn("Forgot password", signed_out.get("/session/new").text)
        self.assertEqual(signed_out.get("/password_resets/new").status, 404)
        self.assertEqual(signed_out.post("/password_resets", {"email_address": "ada@example.com"}).status, 404)
        account = self.client.get("/account/edit").text
        self.assertNotIn("mail_settings", account)
        self.assertNotIn("Email the invitation link", account)
        self.assertEqual(self.client.post("/account/invitations",
                                          {"invitation[email_address]": "x@example.org"}).status, 404)
        self.assertNotIn("email_digest", self.client.get("/users/me/profile").text)
        self.assertEqual(self.client.request("PUT", "/users/me/email_digest", form={"digest": "0"}).status, 404)
        self.assertEqual(self.app.digests.run(now=time.time() + 86400), 0)
        self.assertIsNone(self.app.mailer._thread)
        self.assertFalse(any(thread.name == "campfire-mail" for thread in threading.enumerate()))


class MailSettingsTests(unittest.TestCase):
    BASE = {"SMTP_ADDRESS": "smtp.example.test", "MAIL_FROM": "Campfire <chat@example.test>",
            "CAMPFIRE_URL": "https://chat.example.test/"}

    def test_settings_come_from_the_environment(self):
        config = campfire.Config.from_environment(dict(self.BASE, SMTP_USERNAME="u", SMTP_PASSWORD="p"))
        self.assertTrue(config.mail_enabled)
        self.assertEqual((config.smtp_address, config.resolved_smtp_port, config.smtp_security),
                         ("smtp.example.test", 587, "starttls"))
        self.assertEqual((config.smtp_username, config.smtp_password, config.public_url),
                         ("u", "p", "https://chat.example.test"))
        tls = campfire.Config.from_environment(dict(self.BASE, SMTP_SECURITY="TLS"))
        self.assertEqual(tls.resolved_smtp_port, 465)
        self.assertEqual(campfire.Config.from_environment(dict(self.BASE, SMTP_PORT="2525")).resolved_smtp_port, 2525)
        self.assertFalse(campfire.Config.from_environment({}).mail_enabled)
        alone = campfire.Config.from_environment({"CAMPFIRE_URL": "https://chat.example.test"})
        self.assertEqual((alone.mail_enabled, alone.public_url), (False, "https://chat.example.test"))

    def test_bad_settings_are_refused_with_a_clear_message(self):
        for change, words in (({"SMTP_SECURITY": "ssl"}, "SMTP_SECURITY"), ({"SMTP_PORT": "99999"}, "SMTP_PORT"),
                              ({"MAIL_FROM": ""}, "MAIL_FROM"), ({"MAIL_FROM": "a\nb@example.test"}, "MAIL_FROM"),
                              ({"CAMPFIRE_URL": ""}, "CAMPFIRE_URL"),
                              ({"CAMPFIRE_URL": "chat.example.test"}, "CAMPFIRE_URL")):
            with self.subTest(change=change):
                with self.assertRaises(campfire.ConfigError) as caught:
                    campfire.Config.from_environment(dict(self.BASE, **change))
                self.assertIn(words, str(caught.exception))


if __name__ == "__main__":
    unittest.main()
