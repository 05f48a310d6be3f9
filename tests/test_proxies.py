"""Behind a reverse proxy: TRUSTED_PROXIES decides whose X-Forwarded-For, -Proto
and -Host count, for the client's address (rate limits, bans, sessions), the
scheme (Secure cookies, HSTS) and the origin that writes must come from.

The proxy is always 127.0.0.1; every other address appears only as data, in
header values or in the bans table."""

import os
import sys
import unittest
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import AppTestCase, Client, LiveServer, campfire  # noqa: E402

PROXY = "127.0.0.1"
TRUST_LOOPBACK = campfire.parse_trusted_proxies("127.0.0.1, 10.0.0.0/8")
TRUST_OTHERS = campfire.parse_trusted_proxies("10.0.0.0/8, 192.0.2.1")  # the peer 127.0.0.1 is not among them


def forwarded(headers, proxies=TRUST_LOOPBACK, peer=PROXY, scheme="http"):
    request = campfire.Request("GET", "/", "HTTP/1.1", {"host": "127.0.0.1:3000", **headers})
    request.remote_addr, request.scheme = peer, scheme
    campfire.apply_forwarded(request, proxies)
    return request.remote_addr, request.scheme, request.headers["host"]


class ForwardedHeadersTests(unittest.TestCase):
    def test_a_trusted_proxy_gives_the_client_scheme_and_host(self):
        self.assertEqual(forwarded({"x-forwarded-for": "8.8.8.8", "x-forwarded-proto": "https",
                                    "x-forwarded-host": "chat.example.com"}),
                         ("8.8.8.8", "https", "chat.example.com"))

    def test_forged_headers_from_an_untrusted_peer_change_nothing(self):
        headers = {"x-forwarded-for": "8.8.8.8", "x-forwarded-proto": "https", "x-forwarded-host": "evil.example"}
        self.assertEqual(forwarded(headers, TRUST_OTHERS), (PROXY, "http", "127.0.0.1:3000"))
        self.assertEqual(forwarded(headers, ()), (PROXY, "http", "127.0.0.1:3000"))  # nobody trusted

    def test_what_the_client_wrote_left_of_its_own_address_is_never_read(self):
        # The client sent "X-Forwarded-For: 10.0.0.5, 8.8.4.4" itself; the proxy appended 8.8.8.8.
        self.assertEqual(forwarded({"x-forwarded-for": "10.0.0.5, 8.8.4.4, 8.8.8.8"})[0], "8.8.8.8")
        # A client that claims to be a trusted proxy's neighbour is still the first untrusted hop.
        self.assertEqual(forwarded({"x-forwarded-for": "127.0.0.1, 8.8.8.8"})[0], "8.8.8.8")

    def test_a_chain_of_trusted_proxies_is_walked_from_the_right(self):
        self.assertEqual(forwarded({"x-forwarded-for": "8.8.8.8, 10.1.2.3, 10.0.0.9"})[0], "8.8.8.8")
        # Every hop trusted: the farthest one is the client.
        self.assertEqual(forwarded({"x-forwarded-for": "10.0.0.7, 10.0.0.9"})[0], "10.0.0.7")

    def test_something_that_isnt_an_address_stops_the_walk(self):
        self.assertEqual(forwarded({"x-forwarded-for": "8.8.8.8, unknown, 10.0.0.9"})[0], "10.0.0.9")
        self.assertEqual(forwarded({"x-forwarded-for": "8.8.8.8, 8.8.4.4:443"})[0], PROXY)
        self.assertEqual(forwarded({"x-forwarded-for": " , "})[0], PROXY)
        self.assertEqual(forwarded({"x-forwarded-for": "::ffff:8.8.8.8"})[0], "8.8.8.8")  # as bans keep it

    def test_a_long_chain_is_read_only_so_far(self):
        hops = ", ".join(["10.0.0.1"] * (campfire.MAX_FORWARDED_HOPS + 5))
        self.assertEqual(forwarded({"x-forwarded-for": "8.8.8.8, " + hops})[0], "10.0.0.1")

    def test_only_http_or_https_and_a_well_formed_host_are_taken(self):
        for proto in ("javascript", "https://x", "ftp", ""):
            self.assertEqual(forwarded({"x-forwarded-proto": proto})[1], "http", proto)
        self.assertEqual(forwarded({"x-forwarded-proto": "HTTPS"})[1], "https")
        self.assertEqual(forwarded({"x-forwarded-proto": "http, https"})[1], "https")  # the peer's, last
        for host in ("evil.example/path", "a b", "chat.example.com@evil", "-x", "x" * 300, "[zz]"):
            self.assertEqual(forwarded({"x-forwarded-host": host})[2], "127.0.0.1:3000", host)
        for host in ("chat.example.com:8443", "[2001:db8::1]:443", "chat"):
            self.assertEqual(forwarded({"x-forwarded-host": host})[2], host)
        self.assertEqual(forwarded({"x-forwarded-host": "evil.example, chat.example.com"})[2], "chat.example.com")

    def test_trusted_proxies_from_the_environment(self):
        config = campfire.Config.from_environment({"TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8 ::1"})
        self.assertEqual([str(network) for network in config.trusted_proxies], ["127.0.0.1/32", "10.0.0.0/8", "::1/128"])
        self.assertEqual(campfire.Config.from_environment({}).trusted_proxies, ())
        for bad in ("nginx", "10.0.0.0/33", "127.0.0.1;"):
            with self.assertRaises(campfire.ConfigError) as caught:
                campfire.Config.from_environment({"TRUSTED_PROXIES": bad})
            self.assertIn("TRUSTED_PROXIES", str(caught.exception))


BEHIND_TLS = {"Origin": "https://chat.example.com", "Host": "127.0.0.1:3000", "X-Forwarded-Proto": "https",
              "X-Forwarded-Host": "chat.example.com"}
FIRST_RUN = {"user[name]": "Ada", "user[email_address]": "ada@example.com", "user[password]": "secret-password"}


def header_values(response, name):
    return [value for key, value in response.headers if key.lower() == name.lower()]


class BehindProxyAppTests(AppTestCase):
    CONFIG = {"trusted_proxies": TRUST_LOOPBACK}

    def test_a_browser_write_through_a_proxy_ending_tls_is_same_origin(self):
        response = self.client.post("/first_run", FIRST_RUN, headers=BEHIND_TLS)
        self.assertEqual(response.status, 303)
        cookies = header_values(response, "Set-Cookie")
        self.assertTrue(cookies and all(cookie.endswith("; Secure") for cookie in cookies), cookies)
        self.assertEqual(header_values(response, "Strict-Transport-Security"),
                         ["max-age=%d" % campfire.HSTS_MAX_AGE_SECONDS])
        # Links that leave the page use the public origin.
        self.assertIn("https://chat.example.com/join/", self.client.get("/account/edit", headers=BEHIND_TLS).text)

    def test_another_origin_through_the_proxy_is_still_refused(self):
        headers = dict(BEHIND_TLS, Origin="https://evil.example")
        self.assertEqual(self.client.post("/first_run", FIRST_RUN, headers=headers).status, 403)
        headers = dict(BEHIND_TLS, Origin="http://chat.example.com")  # a page served over http
        self.assertEqual(self.client.post("/first_run", FIRST_RUN, headers=headers).status, 403)

    def test_plain_http_through_the_proxy_gets_no_hsts_and_no_secure_cookie(self):
        headers = dict(BEHIND_TLS, Origin="http://chat.example.com", **{"X-Forwarded-Proto": "http"})
        response = self.client.post("/first_run", FIRST_RUN, headers=headers)
        self.assertEqual(response.status, 303)
        self.assertFalse(any("Secure" in cookie for cookie in header_values(response, "Set-Cookie")))
        self.assertEqual(header_values(response, "Strict-Transport-Security"), [])

    def test_sessions_record_the_forwarded_client(self):
        self.client.post("/first_run", FIRST_RUN, headers=dict(BEHIND_TLS, **{"X-Forwarded-For": "8.8.4.4, 8.8.8.8"}))
        self.assertEqual(self.app.db.value("SELECT ip_address FROM sessions"), "8.8.8.8")

    def test_sign_in_rate_limit_counts_each_forwarded_client(self):
        self.first_run()
        limit = campfire.SIGN_IN_LIMIT[0]
        attacker = Client(self.app)
        for number in range(limit):
            # Changing what it writes itself doesn't make the attacker someone else.
            headers = {"X-Forwarded-For": "10.0.0.%d, 8.8.8.8" % number}
            self.assertEqual(attacker.post("/session", {"email_address": "ada@example.com", "password": "wrong"},
                                           headers=headers).status, 401)
        refused = attacker.post("/session", {"email_address": "ada@example.com", "password": "secret-password"},
                                headers={"X-Forwarded-For": "8.8.4.4, 8.8.8.8"})
        self.assertEqual(refused.status, 429)
        someone_else = Client(self.app).post("/session", {"email_address": "ada@example.com",
                                                          "password": "secret-password"},
                                             headers={"X-Forwarded-For": "8.8.4.4"})
        self.assertEqual(someone_else.status, 303)

    def test_a_banned_address_is_refused_through_the_proxy_whatever_it_claims(self):
        self.first_run()
        self.app.db.execute("INSERT INTO bans (user_id, ip_address, created_at, updated_at) "
                            "VALUES (1, '8.8.8.8', '2024-01-01', '2024-01-01')")
        self.app.forget_cached()  # the bans are read once per change
        post = "/rooms/1/messages"
        for chain in ("8.8.8.8", "8.8.4.4, 8.8.8.8", "::ffff:8.8.8.8"):
            self.assertEqual(self.client.post(post, {"message[body]": "hi"},
                                              headers={"X-Forwarded-For": chain}).status, 429, chain)
        self.assertEqual(self.client.post(post, {"message[body]": "hi"},
                                          headers={"X-Forwarded-For": "8.8.8.8, 8.8.4.4"}).status, 201)


class UntrustedPeerAppTests(AppTestCase):
    CONFIG = {"trusted_proxies": TRUST_OTHERS}

    def test_forged_forwarded_headers_change_nothing(self):
        # The peer isn't trusted: the https origin doesn't match the http://127.0.0.1:3000 it reached.
        self.assertEqual(self.client.post("/first_run", FIRST_RUN, headers=BEHIND_TLS).status, 403)
        response = self.client.post("/first_run", FIRST_RUN, headers={
            "Host": "127.0.0.1:3000", "X-Forwarded-For": "8.8.8.8", "X-Forwarded-Proto": "https"})
        self.assertEqual(response.status, 303)
        self.assertFalse(any("Secure" in cookie for cookie in header_values(response, "Set-Cookie")))
        self.assertEqual(header_values(response, "Strict-Transport-Security"), [])
        self.assertEqual(self.app.db.value("SELECT ip_address FROM sessions"), PROXY)

    def test_a_forged_address_neither_escapes_a_ban_nor_frames_another(self):
        self.first_run()
        self.app.db.execute("INSERT INTO bans (user_id, ip_address, created_at, updated_at) "
                            "VALUES (1, '8.8.8.8', '2024-01-01', '2024-01-01')")
        self.app.forget_cached()  # the bans are read once per change
        response = self.client.post("/rooms/1/messages", {"message[body]": "hi"},
                                    headers={"X-Forwarded-For": "8.8.8.8"})
        self.assertEqual(response.status, 201)
        self.assertTrue(self.app.store.address_banned("8.8.8.8"))  # the ban is there; the header didn't count


class BehindProxyServerTests(unittest.TestCase):
    """Over a real socket, as nginx or Caddy would send a browser's form after ending TLS."""

    def post_first_run(self, **config):
        server = LiveServer(**config)
        self.addCleanup(server.stop)
        request = urllib.request.Request("http://127.0.0.1:%d/first_run" % server.port,
                                         data=urllib.parse.urlencode(FIRST_RUN).encode(), headers={
                                             "Origin": "https://chat.example.com", "Sec-Fetch-Site": "same-origin",
                                             "X-Forwarded-For": "8.8.8.8", "X-Forwarded-Proto": "https",
                                             "X-Forwarded-Host": "chat.example.com"})

        class NoRedirects(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args):
                return None
        try:
            with urllib.request.build_opener(NoRedirects).open(request, timeout=10) as response:
                return response.status, response.headers
        except urllib.error.HTTPError as error:
            return error.code, error.headers

    def test_trusted_proxy_write_succeeds_with_secure_cookie_and_hsts(self):
        status, headers = self.post_first_run(trusted_proxies=campfire.parse_trusted_proxies(PROXY))
        self.assertEqual(status, 303)
        self.assertTrue(headers["Set-Cookie"].endswith("; Secure"))
        self.assertEqual(headers["Strict-Transport-Security"], "max-age=%d" % campfire.HSTS_MAX_AGE_SECONDS)

    def test_without_trusted_proxies_the_same_write_is_refused(self):
        status, headers = self.post_first_run()
        self.assertEqual(status, 403)
        self.assertIsNone(headers["Strict-Transport-Security"])


if __name__ == "__main__":
    unittest.main()
