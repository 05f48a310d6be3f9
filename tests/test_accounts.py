"""First run, sign in and out, sessions, sign-up by join code, passwords."""

import html
import http.client
import re
import time
import unittest
import urllib.parse

from tests.browser import CampfireProcess
from tests.helpers import AppTestCase, Client, campfire

RAILS_BCRYPT_VECTOR = ("U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW")  # OpenBSD's test vector


class FirstRunTests(AppTestCase):
    def test_fresh_server_sends_everyone_to_first_run(self):
        self.assertEqual(self.client.get("/").header("Location"), "/first_run")
        self.assertEqual(self.client.get("/session/new").header("Location"), "/first_run")
        page = self.client.get("/first_run")
        self.assertEqual(page.status, 200)
        self.assertIn('name="user[email_address]"', page.text)

    def test_first_run_creates_account_admin_and_all_talk_then_signs_in(self):
        response = self.first_run()
        room = self.app.db.one("SELECT * FROM rooms")
        self.assertEqual(room["name"], "All Talk")
        self.assertEqual(room["type"], "Rooms::Open")
        self.assertEqual(response.header("Location"), "/rooms/%d" % room["id"])
        self.assertEqual(self.app.store.account()["name"], "Campfire")
        user = self.app.db.one("SELECT * FROM users")
        self.assertEqual(user["role"], campfire.ROLE_ADMINISTRATOR)
        # bcrypt as Rails writes it wherever crypt(3) makes bcrypt, so Rails can check it too.
        self.assertTrue(user["password_digest"].startswith("$2a$04$" if campfire.bcrypt_supported() else "$scrypt$"))
        self.assertEqual(self.app.db.value("SELECT count(*) FROM memberships WHERE room_id = ?", (room["id"],)), 1)
        page = self.client.get("/rooms/%d" % room["id"])
        self.assertEqual(page.status, 200)
        self.assertIn('class="messages"', page.text)
        self.assertIn("Ada Admin", page.text)
        self.assertIn("All Talk", page.text)

    def test_join_code_has_campfire_format(self):
        self.first_run()
        self.assertRegex(self.app.store.account()["join_code"], r"^[A-Za-z0-9]{4}-[A-Za-z0-9]{4}-[A-Za-z0-9]{4}$")

    def test_first_run_is_gone_once_an_account_exists(self):
        self.first_run()
        other = Client(self.app)
        self.assertEqual(other.get("/first_run").header("Location"), "/")
        response = other.post("/first_run", {"user[name]": "Mallory", "user[email_address]": "m@example.com",
                                             "user[password]": "x"})
        self.assertEqual(response.header("Location"), "/")
        self.assertEqual(self.app.db.value("SELECT count(*) FROM users"), 1)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM accounts"), 1)

    def test_invalid_first_run_form_shows_errors_and_keeps_values(self):
        response = self.client.post("/first_run", {"user[name]": "", "user[email_address]": "not-an-email",
                                                   "user[password]": ""})
        self.assertEqual(response.status, 422)
        self.assertIn("Enter your name.", response.text)
        self.assertIn("Enter a valid email address.", response.text)
        self.assertIn('value="not-an-email"', response.text)
        self.assertIsNone(self.app.store.account())


class SessionTests(AppTestCase):
    def setUp(self):
        super().setUp()
        self.first_run()
        self.client.cookies.clear()

    def sign_in(self, email="ada@example.com", password="secret-password", client=None):
        return (client or self.client).post("/session", {"email_address": email, "password": password})

    def test_sign_in_sets_http_only_lax_session_cookie(self):
        response = self.sign_in()
        self.assertEqual(response.status, 303)
        cookie = [value for name, value in response.headers if name == "Set-Cookie"][0]
        self.assertTrue(cookie.startswith("session_token="))
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=Lax", cookie)
        self.assertNotIn("Secure", cookie)  # plain HTTP here
        self.assertEqual(self.client.get("/").status, 302)
        self.assertEqual(self.client.get("/").header("Location"), "/rooms/1")

    def test_database_keeps_only_the_token_digest(self):
        self.sign_in()
        token = self.client.cookies["session_token"]
        stored = [row[0] for row in self.app.db.all("SELECT token FROM sessions")]
        self.assertNotIn(token, stored)
        self.assertIn(campfire.token_digest(token), stored)

    def test_session_tokens_are_256_random_bits_in_url_safe_base64(self):
        tokens = set()
        for _ in range(3):
            self.sign_in()
            tokens.add(self.client.cookies["session_token"])
            self.client.cookies.clear()
        self.assertEqual(len(tokens), 3, "every sign-in gets a token of its own")
        for token in tokens | {campfire.random_token() for _ in range(100)}:
            self.assertRegex(token, r"\A[A-Za-z0-9_-]{43}\Z")  # 32 bytes, unpadded
        self.assertRegex(campfire.random_hex(16), r"\A[0-9a-f]{32}\Z")
        self.assertEqual(len({campfire.random_hex(8) for _ in range(100)}), 100)

    def test_wrong_password_is_401_with_campfire_message(self):
        response = self.sign_in(password="wrong")
        self.assertEqual(response.status, 401)
        self.assertIn("Too many requests or unauthorized.", response.text)
        self.assertIn('value="ada@example.com"', response.text)
        self.assertNotIn("session_token", self.client.cookies)

    def test_sign_in_is_rate_limited_to_ten_per_three_minutes_per_ip(self):
        for _ in range(10):
            self.assertEqual(self.sign_in(password="wrong").status, 401)
        self.assertEqual(self.sign_in().status, 429)
        other_ip = Client(self.app, remote_addr="10.0.0.9")
        self.assertEqual(self.sign_in(client=other_ip).status, 303)

    def test_sign_out_deletes_session_and_cookie(self):
        self.sign_in()
        token = self.client.cookies["session_token"]
        response = self.client.post("/session", {"_method": "delete"})
        self.assertEqual(response.header("Location"), "/session/new")
        self.assertNotIn("session_token", self.client.cookies)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM sessions"), 1)  # first run's session remains
        replay = Client(self.app)
        replay.cookies["session_token"] = token
        self.assertEqual(replay.get("/rooms/1").header("Location"), "/session/new")

    def test_signed_out_visitor_is_sent_to_sign_in(self):
        self.assertEqual(self.client.get("/rooms/1").status, 302)
        self.assertEqual(self.client.get("/rooms/1").header("Location"), "/session/new")

    def test_last_active_at_is_refreshed_at_most_hourly(self):
        self.sign_in()
        token = self.client.cookies["session_token"]
        before = self.app.db.value("SELECT last_active_at FROM sessions WHERE token = ?", (campfire.token_digest(token),))
        self.client.get("/rooms/1")
        same = self.app.db.value("SELECT last_active_at FROM sessions WHERE token = ?", (campfire.token_digest(token),))
        self.assertEqual(before, same)
        self.app.store.session_for(token, time.time() + 2 * 3600)
        later = self.app.db.value("SELECT last_active_at FROM sessions WHERE token = ?", (campfire.token_digest(token),))
        self.assertGreater(later, before)

    def test_email_is_prefilled_from_query(self):
        page = self.client.get("/session/new?email_address=ada%40example.com")
        self.assertIn('value="ada@example.com"', page.text)

    def test_signed_in_user_visiting_sign_in_goes_home(self):
        self.sign_in()
        self.assertEqual(self.client.get("/session/new").header("Location"), "/")

    def test_last_room_cookie_picks_the_landing_room(self):
        self.sign_in()
        with self.app.db.atomic():
            second = self.app.store.create_room("Second", campfire.ROOM_OPEN, 1, [1])
        self.client.get("/rooms/%d" % second.id)
        self.assertEqual(self.client.get("/").header("Location"), "/rooms/%d" % second.id)


class JoinTests(AppTestCase):
    def setUp(self):
        super().setUp()
        self.first_run()
        self.code = self.app.store.account()["join_code"]

    def test_bad_join_code_is_404(self):
        self.assertEqual(Client(self.app).get("/join/AAAA-BBBB-CCCC").status, 404)

    def test_new_user_joins_every_open_room_and_is_signed_in(self):
        with self.app.db.atomic():
            self.app.store.create_room("Closed", campfire.ROOM_CLOSED, 1, [1])
        client = self.join("Bob", "bob@example.com")
        bob = self.app.store.user_by_email("bob@example.com")
        self.assertEqual(bob.role, campfire.ROLE_MEMBER)
        rooms = {row["name"] for row in self.app.store.rooms_for(bob.id)}
        self.assertEqual(rooms, {"All Talk"})
        self.assertEqual(client.get("/rooms/1").status, 200)
        self.assertEqual(client.get("/rooms/2").status, 404)  # closed room: not a member

    def test_taken_email_goes_to_sign_in_with_email_filled_in(self):
        response = Client(self.app).post("/join/" + self.code, {
            "user[name]": "Ada Again", "user[email_address]": "ada@example.com", "user[password]": "pw"})
        self.assertEqual(response.header("Location"), "/session/new?email_address=ada%40example.com")

    def test_signed_in_user_is_sent_home_from_join(self):
        self.assertEqual(self.client.get("/join/" + self.code).header("Location"), "/")


class PasswordTests(unittest.TestCase):
    def test_scrypt_round_trip(self):
        digest = campfire.scrypt_password("correct horse")
        self.assertTrue(campfire.check_password("correct horse", digest))
        self.assertFalse(campfire.check_password("wrong horse", digest))
        self.assertNotEqual(digest, campfire.scrypt_password("correct horse"))

    def test_garbage_digest_is_never_valid(self):
        for digest in ("", None, "$scrypt$bad", "plain", "$scrypt$n=1,r=1,p=1$!!$!!"):
            self.assertFalse(campfire.check_password("x", digest))

    def test_rails_bcrypt_digest_checks_through_crypt3(self):
        password, digest = RAILS_BCRYPT_VECTOR
        try:
            self.assertTrue(campfire.check_password(password, digest))
            self.assertFalse(campfire.check_password("U*V", digest))
        except campfire.PasswordUnsupported:
            self.skipTest("this system's crypt(3) has no bcrypt")


class RailsPasswordSignInTests(AppTestCase):
    def test_bcrypt_user_signs_in_and_keeps_the_digest_rails_can_check(self):
        self.first_run()
        password, digest = RAILS_BCRYPT_VECTOR
        if not campfire.bcrypt_supported():
            self.skipTest("this system's crypt(3) has no bcrypt")
        self.app.db.execute("UPDATE users SET password_digest = ? WHERE id = 1", (digest,))
        self.app.store.forget_user(1)
        client = Client(self.app)
        response = client.post("/session", {"email_address": "ada@example.com", "password": password})
        self.assertEqual(response.status, 303)
        self.assertEqual(self.app.db.value("SELECT password_digest FROM users WHERE id = 1"), digest)

    def test_unsupported_digest_gets_a_clear_message(self):
        self.first_run()
        self.app.db.execute("UPDATE users SET password_digest = ? WHERE id = 1", ("$2b$05$" + "x" * 53,))
        self.app.store.forget_user(1)
        original = campfire.bcrypt_check
        campfire.bcrypt_check = lambda password, digest: None  # a crypt(3) without bcrypt
        try:
            response = Client(self.app).post("/session", {"email_address": "ada@example.com", "password": "pw"})
        finally:
            campfire.bcrypt_check = original
        self.assertEqual(response.status, 401)
        self.assertIn("Ask an administrator", response.text)


class RateLimiterTests(unittest.TestCase):
    def test_sliding_window(self):
        limiter = campfire.RateLimiter(3, 10.0)
        self.assertTrue(all(limiter.hit("a", now) for now in (0, 1, 2)))
        self.assertFalse(limiter.hit("a", 3))
        self.assertTrue(limiter.hit("b", 3))
        self.assertTrue(limiter.hit("a", 10.5))

    def test_memory_is_bounded(self):
        limiter = campfire.RateLimiter(1, 10.0, max_keys=100)
        for index in range(1000):
            limiter.hit("key%d" % index, 0)
        self.assertLessEqual(len(limiter._hits), 100)


class RequestLogTests(unittest.TestCase):
    """The request log of a real campfire.py process never shows a credential that
    travels in a path: sign-in links, join codes, their QR codes and bot keys."""

    def setUp(self):
        self.server = CampfireProcess().start()
        self.addCleanup(self.server.cleanup)
        self.cookie = None

    def request(self, method, path, form=None, cookie=True):
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        headers = {"Sec-Fetch-Site": "same-origin"} if method != "GET" else {}
        if cookie and self.cookie:
            headers["Cookie"] = "session_token=" + self.cookie
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        text = response.read().decode()
        connection.close()
        for value in response.headers.get_all("Set-Cookie") or []:
            if value.startswith("session_token=") and cookie:
                self.cookie = value.split("=", 1)[1].split(";", 1)[0]
        return response.status, text

    def field(self, text, field_id):
        return html.unescape(re.search(r'id="%s" type="text" value="([^"]+)"' % field_id, text).group(1))

    def test_sign_in_links_join_codes_qr_codes_and_bot_keys_are_filtered_from_the_request_log(self):
        self.assertEqual(self.request("POST", "/first_run", {
            "user[name]": "Ada Admin", "user[email_address]": "ada@example.com", "user[password]": "a long secret"})[0], 303)
        profile = self.request("GET", "/users/me/profile")[1]
        transfer = urllib.parse.urlsplit(self.field(profile, "session_transfer_url")).path
        qr_code = html.unescape(re.search(r'href="(/qr_code/[^"]+)"', profile).group(1))
        join = urllib.parse.urlsplit(self.field(self.request("GET", "/account/edit")[1], "invite_url")).path
        self.assertEqual(self.request("POST", "/account/bots", {"user[name]": "Deploy Bot"})[0], 303)
        bot_path = re.search(r"/rooms/\d+/\d+-\w+/messages", self.request("GET", "/account/bots")[1]).group(0)
        secrets = {"sign-in link": transfer.rsplit("/", 1)[1], "join code": join.rsplit("/", 1)[1],
                   "QR code": qr_code.rsplit("/", 1)[1], "bot key": bot_path.split("/")[3]}

        self.assertEqual(self.request("GET", transfer, cookie=False)[0], 200)
        self.assertEqual(self.request("POST", transfer, {"_method": "put"}, cookie=False)[0], 303)
        self.assertEqual(self.request("DELETE", transfer, cookie=False)[0], 405)  # no such route: logged all the same
        self.assertEqual(self.request("GET", qr_code, cookie=False)[0], 200)
        self.assertEqual(self.request("GET", join, cookie=False)[0], 200)
        self.assertEqual(self.request("POST", join, {
            "user[name]": "Bob", "user[email_address]": "bob@example.com", "user[password]": "another secret"},
            cookie=False)[0], 303)
        self.assertEqual(self.request("POST", bot_path, {"message[body]": "deployed"}, cookie=False)[0], 201)
        self.server.stop()  # the batched request log is flushed on the way out

        with open(self.server.log_path, encoding="utf-8") as file:
            logged = file.read()
        for name, secret in secrets.items():
            with self.subTest(secret=name):
                self.assertFalse(secret in logged or urllib.parse.quote(secret, safe="") in logged,
                                 "the %s is in the log:\n%s" % (name, logged))
        for line in ("GET /session/transfers/[FILTERED] 200", "POST /session/transfers/[FILTERED] 303",
                     "DELETE /session/transfers/[FILTERED] 405", "GET /qr_code/[FILTERED] 200",
                     "GET /join/[FILTERED] 200", "POST /join/[FILTERED] 303",
                     "POST /rooms/1/[FILTERED]/messages 201"):
            with self.subTest(line=line):
                self.assertIn(" INFO " + line + " ", logged)
        self.assertIn(" INFO GET /users/me/profile 200 ", logged)  # other paths as they are


if __name__ == "__main__":
    unittest.main()
