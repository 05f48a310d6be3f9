"""Link previews (Campfire's POST /unfurl_link): the address guard decides before any
connection, on every resolved address and again after each redirect. The live tests
serve pages on loopback only, and reach them through an explicit test override of the
guard that admits 127.0.0.1 and nothing else; every other address is tested as data."""

import http.server
import json
import socket
import threading
import unittest
from unittest import mock

from tests.helpers import AppTestCase, campfire

PAGE = (b'<html><head><title>Fallback</title><meta property="og:title" content="Launch notes">'
        b'<meta property="og:description" content="What shipped this week."><meta property="og:image" '
        b'content="/cover.png"></head><body>ignored</body></html>')


class CountingServer:
    """An HTTP server on a loopback address that counts the connections it accepts."""

    def __init__(self, host="127.0.0.1", routes=None):
        self.connections = 0
        routes = routes or {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def setup(self):
                outer.connections += 1
                super().setup()

            def do_GET(self):
                status, headers, body = routes.get(self.path, (404, {}, b""))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = "http://%s:%d" % (host, self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def loopback_only(address):
    """The tests' override of the guard: 127.0.0.1 alone, so nothing else is ever reached."""
    return address == "127.0.0.1"


class GuardDecisionTests(unittest.TestCase):
    def test_private_and_special_addresses_are_refused_before_any_connection(self):
        for address in ("127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "fd00::1", "192.168.1.10", "172.16.0.1",
                        "100.64.0.1", "0.0.0.0", "224.0.0.1", "::ffff:127.0.0.1", "fe80::1", "64:ff9b::a00:1"):
            with self.subTest(address), mock.patch("socket.create_connection") as connect:
                resolve = lambda host, port, **kwargs: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
                with self.assertRaises(campfire.UnfurlRefused):
                    campfire.fetch_link_preview("http://innocent.example/", resolve=resolve)
                connect.assert_not_called()

    def test_a_name_with_one_private_address_among_public_ones_is_refused(self):
        addresses = ["93.184.216.34", "10.0.0.7"]
        resolve = lambda host, port, **kwargs: [(2, 1, 6, "", (address, port)) for address in addresses]
        with mock.patch("socket.create_connection") as connect, self.assertRaises(campfire.UnfurlRefused):
            campfire.fetch_link_preview("https://mixed.example/", resolve=resolve)
        connect.assert_not_called()

    def test_only_http_and_https_are_fetched(self):
        for url in ("ftp://example.com/", "file:///etc/passwd", "javascript:alert(1)", "http:///nohost",
                    "gopher://127.0.0.1/"):
            with self.subTest(url), mock.patch("socket.getaddrinfo") as resolve:
                with self.assertRaises(campfire.UnfurlRefused):
                    campfire.fetch_link_preview(url)
                resolve.assert_not_called()


class UnfurlEndpointTests(AppTestCase):
    def setUp(self):
        super().setUp()
        self.first_run()

    def serve(self, routes, host="127.0.0.1"):
        server = CountingServer(host, routes)
        self.addCleanup(server.close)
        return server

    def unfurl(self, url):
        return self.client.post("/unfurl_link", body=json.dumps({"url": url}).encode(),
                                content_type="application/json")

    def test_a_page_on_an_allowed_address_gives_its_preview(self):
        self.app.config.unfurl_allowed = loopback_only
        server = self.serve({"/": (200, {"Content-Type": "text/html; charset=utf-8"}, PAGE)})
        response = self.unfurl(server.url + "/")
        self.assertEqual(response.status, 200, response.text)
        self.assertEqual(json.loads(response.body), {"title": "Launch notes", "url": server.url + "/",
                                                     "image": server.url + "/cover.png",
                                                     "description": "What shipped this week."})

    def test_the_real_guard_never_connects_to_loopback(self):
        server = self.serve({"/": (200, {"Content-Type": "text/html"}, PAGE)})
        self.assertEqual(self.unfurl(server.url + "/").status, 204)
        self.assertEqual(server.connections, 0)

    def test_a_redirect_to_a_refused_address_is_never_followed(self):
        self.app.config.unfurl_allowed = loopback_only
        inside = self.serve({"/": (200, {"Content-Type": "text/html"}, PAGE)}, host="127.0.0.2")
        outside = self.serve({"/": (302, {"Location": inside.url + "/"}, b"")})
        self.assertEqual(self.unfurl(outside.url + "/").status, 204)
        self.assertEqual((outside.connections, inside.connections), (1, 0))

    def test_redirects_are_followed_at_most_three_times(self):
        self.app.config.unfurl_allowed = loopback_only
        routes = {"/page": (200, {"Content-Type": "text/html"}, PAGE)}
        server = self.serve(routes)
        for step in range(4):
            routes["/r%d" % step] = (302, {"Location": "/r%d" % (step + 1)}, b"")
        routes["/r4"] = (302, {"Location": "/page"}, b"")
        self.assertEqual(self.unfurl(server.url + "/r2").status, 200)   # r2 → r3 → r4 → page
        self.assertEqual(self.unfurl(server.url + "/r1").status, 204)   # one redirect too many

    def test_previews_switched_off_connect_nowhere(self):
        self.app.config.unfurl_allowed = loopback_only
        self.app.config.link_previews = False
        server = self.serve({"/": (200, {"Content-Type": "text/html"}, PAGE)})
        self.assertEqual(self.unfurl(server.url + "/").status, 204)
        self.assertEqual(server.connections, 0)

    def test_a_page_without_title_or_description_or_not_html_is_204(self):
        self.app.config.unfurl_allowed = loopback_only
        server = self.serve({"/bare": (200, {"Content-Type": "text/html"}, b"<html><head></head></html>"),
                             "/image": (200, {"Content-Type": "image/png"}, b"\x89PNG")})
        self.assertEqual(self.unfurl(server.url + "/bare").status, 204)
        self.assertEqual(self.unfurl(server.url + "/image").status, 204)

    def test_a_missing_url_is_422(self):
        self.assertEqual(self.unfurl("").status, 422)
        self.assertEqual(self.client.post("/unfurl_link", body=b"{", content_type="application/json").status, 400)


if __name__ == "__main__":
    unittest.main()


class StoredPreviewTests(AppTestCase):
    """A preview the composer sends with a link (Campfire's opengraph embed) is kept and shown."""

    def setUp(self):
        super().setUp()
        self.first_run()

    def post(self, body):
        return self.client.post("/rooms/1/messages", {"message[body]": body, "message[client_message_id]": body[:40]})

    def test_a_link_with_its_preview_shows_a_card_and_searches_by_its_text(self):
        embed = ('<action-text-attachment content-type="application/vnd.actiontext.opengraph-embed" '
                 'href="https://example.com/launch" url="https://example.com/cover.png" filename="Launch &amp; notes" '
                 'caption="What shipped."></action-text-attachment>')
        response = self.post("<div>https://example.com/launch</div>" + embed)
        self.assertEqual(response.status, 201)
        self.assertIn('<a class="og-embed" href="https://example.com/launch" target="_blank" rel="noopener noreferrer">'
                      '<span class="og-embed__title">Launch &amp; notes</span>'
                      '<span class="og-embed__description">What shipped.</span>'
                      '<span class="og-embed__site">example.com</span></a>', response.text)
        self.assertNotIn("cover.png", response.text)  # another site's picture: not loaded by our pages
        message = self.app.store.message(1)
        self.assertEqual(self.app.store.plain_text(message["body"]), "https://example.com/launch")

    def test_a_preview_of_a_script_address_shows_nothing(self):
        embed = ('<action-text-attachment content-type="application/vnd.actiontext.opengraph-embed" '
                 'href="javascript:alert(1)" filename="Click" caption="me"></action-text-attachment>')
        response = self.post("<div>look</div>" + embed)
        self.assertEqual(response.status, 201)
        self.assertNotIn("javascript", response.text)
        self.assertNotIn("og-embed", response.text)
