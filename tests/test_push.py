"""Web Push in the app: Campfire's subscription routes and table, the VAPID key
pair (configured or generated and kept in storage), who gets a push for a new
message, and delivery to a push service played by an HTTPS receiver on
127.0.0.1 that checks the VAPID token and decrypts each push with `http_ece`
and with `cryptography` (independent of campfire.py)."""

import asyncio
import base64
import contextlib
import datetime
import http.server
import ipaddress
import json
import logging
import os
import shutil
import signal
import ssl
import stat
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

import http_ece
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from tests.helpers import Client, make_app, campfire
from tests.test_rooms import ChatTestCase
from tests.test_webpush import rfc8291_decrypt


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text):
    text = text.rstrip("=")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Browser:
    """A browser's push subscription: its own P-256 key and auth secret (as PushManager makes them)."""

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        self.p256dh = b64url(self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))

    def fields(self):
        return {"endpoint": self.endpoint, "p256dh_key": self.p256dh, "auth_key": b64url(self.auth)}

    def decrypt(self, body):
        """The push as http_ece reads it, checked against our own cryptography-based receiver."""
        plaintext = http_ece.decrypt(body, private_key=self.private_key, auth_secret=self.auth)
        assert plaintext == rfc8291_decrypt(body, self.private_key, self.auth)
        return plaintext


# An HTTPS push service on 127.0.0.1, its certificate issued by a CA made for the test ----

def make_test_ca(directory):
    """A CA certificate (the file SSL_CERT_FILE names) and a server certificate for 127.0.0.1."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Campfire test push CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {name: os.path.join(directory, name) for name in ("ca.pem", "cert.pem", "key.pem")}
    with open(paths["ca.pem"], "wb") as file:
        file.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert.pem"], "wb") as file:
        file.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key.pem"], "wb") as file:
        file.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return paths


def verify_vapid(authorization, endpoint):
    """RFC 8292 as a push service checks it: the JWT's ES256 signature under k, its aud
    (the endpoint's origin), exp (in the future, at most 24 h away) and sub. Returns k."""
    scheme, _, parameters = authorization.partition(" ")
    assert scheme == "vapid", authorization
    values = dict(part.strip().split("=", 1) for part in parameters.split(","))
    token, public = values["t"], unb64url(values["k"])
    header, claims, signature = token.split(".")
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public)
    raw = unb64url(signature)
    key.verify(encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")),
               (header + "." + claims).encode(), ec.ECDSA(hashes.SHA256()))
    assert json.loads(unb64url(header)) == {"typ": "JWT", "alg": "ES256"}
    claims = json.loads(unb64url(claims))
    split = endpoint.split("/")
    assert claims["aud"] == split[0] + "//" + split[2], (claims, endpoint)
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600
    assert claims["sub"] == "mailto:support@37signals.com"
    return values["k"]


class PushServiceServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen(2)'s backlog, set before the socket listens: a burst of pushes connects at once

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ssl.SSLError, OSError)):  # a client that gave up, or distrusts us
            super().handle_error(request, client_address)


class PushService:
    """A push service on https://127.0.0.1:<port>/push/<name>, keeping connections alive
    as HTTP/1.1 does. answer(name, attempt) gives (status, headers) or a number of
    seconds to stall; each request is recorded as (name, headers, body) once its VAPID
    token has been verified. connections counts the TLS connections accepted and open
    those not closed yet. With answers_per_connection=n, a connection's request after
    its n-th is read and then the connection closed unanswered, as a server does whose
    idle timeout ran out as the request arrived (RFC 9112 §9.3.1)."""

    def __init__(self, certificates, answer=None, answers_per_connection=None):
        self.requests = []
        self.attempts = {}
        self.connections = self.open = self.unanswered = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.answer = answer or (lambda name, attempt: (201, []))
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                self.answered = 0
                with service.lock:
                    service.connections += 1
                    service.open += 1

            def finish(self):
                with service.lock:
                    service.open -= 1
                super().finish()

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if answers_per_connection is not None and self.answered >= answers_per_connection:
                    self.close_connection = True
                    with service.lock:
                        service.unanswered += 1
                    return
                self.answered += 1
                name = self.path.rsplit("/", 1)[-1]
                endpoint = "https://127.0.0.1:%d%s" % (service.port, self.path)
                verify_vapid(self.headers["Authorization"], endpoint)
                with service.lock:
                    attempt = service.attempts[name] = service.attempts.get(name, 0) + 1
                    service.requests.append((name, dict(self.headers), body))
                answer = service.answer(name, attempt)
                if isinstance(answer, (int, float)) and not isinstance(answer, bool):
                    service.release.wait(answer)
                    answer = (201, [])
                status, headers = answer
                try:
                    self.send_response(status)
                    for header in headers:
                        self.send_header(*header)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass

            def log_message(self, *args):
                pass

        self.server = PushServiceServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificates["cert.pem"], certificates["key.pem"])
        # Each connection's handshake in its own thread (on its first read), as a real
        # service serves many at once: in accept() they would queue behind each other.
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def endpoint(self, name):
        return "https://127.0.0.1:%d/push/%s" % (self.port, name)

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


# Subscriptions: Campfire's routes and table ----------------------------------------------

class SubscriptionRouteTests(ChatTestCase):
    def subscribe(self, client, browser, user_agent="Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"):
        return client.request("POST", "/users/me/push_subscriptions", content_type="application/json",
                              body=json.dumps({"push_subscription": browser.fields()}).encode(),
                              headers={"User-Agent": user_agent})

    def rows(self, user_id=None):
        sql = "SELECT user_id, endpoint, p256dh_key, auth_key, user_agent FROM push_subscriptions"
        if user_id is None:
            return [tuple(row) for row in self.app.db.all(sql + " ORDER BY id")]
        return [tuple(row) for row in self.app.db.all(sql + " WHERE user_id = ? ORDER BY id", (user_id,))]

    def test_the_apps_json_is_stored_with_the_user_agent_and_answered_200(self):
        browser = Browser("https://fcm.googleapis.com/fcm/send/abc:def")
        response = self.subscribe(self.bob, browser)
        self.assertEqual((response.status, response.body), (200, b""))
        self.assertEqual(self.rows(), [(self.bob_id, browser.endpoint, browser.p256dh, b64url(browser.auth),
                                        "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0")])

    def test_a_form_with_campfires_field_names_works_too(self):
        browser = Browser("https://updates.push.services.mozilla.com/wpush/v2/gAAAA")
        form = {"push_subscription[%s]" % name: value for name, value in browser.fields().items()}
        self.assertEqual(self.bob.post("/users/me/push_subscriptions", form).status, 200)
        self.assertEqual(len(self.rows(self.bob_id)), 1)

    def test_the_same_endpoint_is_stored_once_and_takes_the_browsers_new_keys(self):
        browser = Browser("https://fcm.googleapis.com/fcm/send/same")
        self.assertEqual(self.subscribe(self.bob, browser).status, 200)
        self.assertEqual(self.subscribe(self.bob, browser).status, 200)
        renewed = Browser(browser.endpoint)
        self.assertEqual(self.subscribe(self.bob, renewed).status, 200)
        self.assertEqual([row[2] for row in self.rows()], [renewed.p256dh])

    def test_an_endpoint_another_person_had_is_moved_to_whoever_subscribes_it_now(self):
        browser = Browser("https://fcm.googleapis.com/fcm/send/shared-computer")
        self.subscribe(self.bob, browser)
        self.subscribe(self.carol, browser)
        self.assertEqual([row[0] for row in self.rows()], [self.carol_id])

    def test_only_https_endpoints_and_usable_keys_are_accepted_else_422(self):
        good = Browser("https://push.example.com/x")
        cases = {
            "http": dict(good.fields(), endpoint="http://push.example.com/x"),
            "no scheme": dict(good.fields(), endpoint="push.example.com/x"),
            "javascript": dict(good.fields(), endpoint="javascript:alert(1)"),
            "a space": dict(good.fields(), endpoint="https://push.example.com/a b"),
            "a header injected": dict(good.fields(), endpoint="https://push.example.com/a\r\nX-Evil: 1"),
            "empty": dict(good.fields(), endpoint=""),
            "too long": dict(good.fields(), endpoint="https://push.example.com/" + "a" * 3000),
            "p256dh off the curve": dict(good.fields(), p256dh_key=b64url(b"\x04" + b"\x01" * 64)),
            "p256dh not base64": dict(good.fields(), p256dh_key="not base64!"),
            "auth too short": dict(good.fields(), auth_key=b64url(b"short")),
            "auth missing": dict(good.fields(), auth_key=""),
        }
        for name, fields in cases.items():
            with self.subTest(name):
                response = self.bob.request("POST", "/users/me/push_subscriptions", content_type="application/json",
                                            body=json.dumps({"push_subscription": fields}).encode())
                self.assertEqual(response.status, 422, response.text[:200])
        for body in (b"{", b"[1]", b'{"push_subscription": "x"}', b"\xff"):
            with self.subTest(body=body):
                response = self.bob.request("POST", "/users/me/push_subscriptions",
                                            content_type="application/json", body=body)
                self.assertIn(response.status, (400, 422))
        self.assertEqual(self.rows(), [])

    def test_signed_out_requests_are_sent_to_sign_in(self):
        response = Client(self.app).request("POST", "/users/me/push_subscriptions", content_type="application/json",
                                            body=json.dumps({"push_subscription": Browser("https://a.b/c").fields()})
                                            .encode())
        self.assertIn(response.status, (302, 303))
        self.assertEqual(self.rows(), [])

    def test_the_page_lists_a_persons_subscriptions_and_deletes_only_their_own(self):
        mine, theirs = Browser("https://push.example.com/bob"), Browser("https://push.example.com/carol")
        self.subscribe(self.bob, mine, user_agent="Bob's Firefox")
        self.subscribe(self.carol, theirs)
        page = self.bob.get("/users/me/push_subscriptions")
        self.assertEqual(page.status, 200)
        self.assertIn("Bob&#x27;s Firefox", page.text)
        self.assertIn(mine.endpoint, page.text)
        self.assertNotIn(theirs.endpoint, page.text)
        bob_row, carol_row = [row[0] for row in self.app.db.all("SELECT id FROM push_subscriptions ORDER BY id")]
        self.assertIn('action="/users/me/push_subscriptions/%d/test_notifications"' % bob_row, page.text)
        response = self.bob.post("/users/me/push_subscriptions/%d" % carol_row, {"_method": "delete"},
                                 headers={"Sec-Fetch-Mode": "navigate"})
        self.assertEqual(len(self.rows()), 2, "another person's subscription stays")
        response = self.bob.post("/users/me/push_subscriptions/%d" % bob_row, {"_method": "delete"},
                                 headers={"Sec-Fetch-Mode": "navigate"})
        self.assertEqual((response.status, response.header("Location")), (303, "/users/me/push_subscriptions"))
        self.assertEqual([row[0] for row in self.rows()], [self.carol_id])

    def test_the_profile_links_to_the_subscriptions_page(self):
        self.assertIn('<a href="/users/me/push_subscriptions">Browsers that get notifications</a>',
                      self.bob.get("/users/me/profile").text)

    def test_a_test_notification_is_queued_for_ones_own_subscription_only(self):
        self.subscribe(self.bob, Browser("https://push.example.com/bob"))
        self.subscribe(self.carol, Browser("https://push.example.com/carol"))
        bob_row, carol_row = [row[0] for row in self.app.db.all("SELECT id FROM push_subscriptions ORDER BY id")]
        self.assertEqual(self.bob.post("/users/me/push_subscriptions/%d/test_notifications" % carol_row).status, 404)
        self.assertEqual(len(self.app.pushes.pending), 0)
        response = self.bob.post("/users/me/push_subscriptions/%d/test_notifications" % bob_row)
        self.assertEqual((response.status, response.header("Location")), (303, "/users/me/push_subscriptions"))
        [delivery] = self.app.pushes.pending
        self.assertEqual((delivery.subscription_id, delivery.title, delivery.path),
                         (bob_row, "Campfire Test", "/users/me/push_subscriptions"))
        self.assertRegex(delivery.body, r"\A[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")

    def test_signing_out_deletes_the_subscription_the_browser_names_and_no_other(self):
        phone, laptop = Browser("https://push.example.com/phone"), Browser("https://push.example.com/laptop")
        self.subscribe(self.bob, phone)
        self.subscribe(self.bob, laptop)
        self.subscribe(self.carol, Browser("https://push.example.com/carol"))
        response = self.bob.post("/session", {"_method": "delete", "push_subscription_endpoint": laptop.endpoint})
        self.assertEqual(response.status, 303)
        self.assertEqual([row[1] for row in self.rows(self.bob_id)], [phone.endpoint])
        self.assertEqual(len(self.rows(self.carol_id)), 1)

    def test_deactivation_deletes_every_subscription_of_the_person(self):
        self.subscribe(self.bob, Browser("https://push.example.com/phone"))
        self.subscribe(self.bob, Browser("https://push.example.com/laptop"))
        self.subscribe(self.carol, Browser("https://push.example.com/carol"))
        response = self.ada.post("/account/users/%d" % self.bob_id, {"_method": "delete"})
        self.assertIn(response.status, (200, 204, 302, 303))
        self.assertEqual(self.rows(self.bob_id), [])
        self.assertEqual(len(self.rows(self.carol_id)), 1)

    def test_a_person_keeps_at_most_the_newest_subscriptions(self):
        for number in range(campfire.MAX_PUSH_SUBSCRIPTIONS + 3):
            self.assertEqual(self.subscribe(self.bob, Browser("https://push.example.com/%d" % number)).status, 200)
        endpoints = [row[1] for row in self.rows(self.bob_id)]
        self.assertEqual(len(endpoints), campfire.MAX_PUSH_SUBSCRIPTIONS)
        self.assertNotIn("https://push.example.com/0", endpoints)
        self.assertIn("https://push.example.com/%d" % (campfire.MAX_PUSH_SUBSCRIPTIONS + 2), endpoints)

    def test_signed_in_pages_carry_the_public_key_and_the_notifications_control(self):
        page = self.bob.get("/rooms/1").text
        self.assertIn('<meta name="vapid-public-key" content="%s">' % self.app.vapid_key.public_key_base64, page)
        self.assertIn('id="notifications_toggle"', page)
        self.assertIn('name="push_subscription_endpoint"', page)
        signed_out = Client(self.app).get("/session/new").text
        self.assertNotIn("vapid-public-key", signed_out)


# Keys ------------------------------------------------------------------------------------

class VapidKeyTests(unittest.TestCase):
    def setUp(self):
        self.storage = tempfile.mkdtemp(prefix="campfire-test-")
        self.addCleanup(shutil.rmtree, self.storage, ignore_errors=True)

    def app(self, **overrides):
        app = make_app(self.storage, **overrides)
        self.addCleanup(app.close)
        return app

    def test_a_generated_pair_is_kept_in_storage_for_the_owner_only_and_reused(self):
        first = self.app().vapid_key
        path = os.path.join(self.storage, "vapid_key")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as file:
            self.assertEqual(file.read().split(), [first.public_key_base64, first.private_key_base64])
        again = self.app().vapid_key
        self.assertEqual((again.public_key, again.private_key), (first.public_key, first.private_key))
        # and its public half is what OpenSSL derives from the private half
        derived = ec.derive_private_key(first.private_key, ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.assertEqual(derived, first.public_key)

    def test_the_private_key_is_never_in_the_database_nor_in_the_log(self):
        with self.assertLogs("campfire", logging.DEBUG) as logs:
            logging.getLogger("campfire").debug("start")
            app = self.app()
            key = app.vapid_key
            app.db.close()
        secrets = (key.private_key_base64.rstrip("="), key.private_key.to_bytes(32, "big"), str(key.private_key),
                   key.private_key_base64.rstrip("=").encode())
        for name in os.listdir(os.path.join(self.storage, "db")):
            with open(os.path.join(self.storage, "db", name), "rb") as file:
                data = file.read()
            for secret in secrets:
                self.assertNotIn(secret if isinstance(secret, bytes) else secret.encode(), data)
        for line in logs.output:
            for secret in secrets:
                self.assertNotIn(secret if isinstance(secret, str) else secret.hex(), line)
        self.assertNotIn(key.private_key_base64, repr(key))

    def test_the_environment_pair_is_used_as_campfire_reads_it(self):
        theirs = ec.generate_private_key(ec.SECP256R1())
        public = base64.urlsafe_b64encode(theirs.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)).decode()
        private = base64.urlsafe_b64encode(theirs.private_numbers().private_value.to_bytes(32, "big")).decode()
        config = campfire.Config.from_environment({"VAPID_PUBLIC_KEY": public, "VAPID_PRIVATE_KEY": private})
        app = self.app(vapid_public_key=config.vapid_public_key, vapid_private_key=config.vapid_private_key)
        self.assertEqual(app.vapid_key.private_key, theirs.private_numbers().private_value)
        self.assertEqual(app.vapid_key.public_key_base64, public)
        self.assertFalse(os.path.exists(os.path.join(self.storage, "vapid_key")), "nothing generated")

    def test_a_half_or_mismatched_pair_stops_the_start_with_a_clear_message(self):
        one, other = campfire.VapidKey.generate(), campfire.VapidKey.generate()
        cases = {"public only": (one.public_key_base64, None), "private only": (None, one.private_key_base64),
                 "mismatched": (one.public_key_base64, other.private_key_base64),
                 "not base64": ("!!", one.private_key_base64)}
        for name, (public, private) in cases.items():
            with self.subTest(name), self.assertRaises(campfire.ConfigError) as raised:
                make_app(self.storage, vapid_public_key=public, vapid_private_key=private)
            self.assertIn("VAPID", str(raised.exception))
            self.assertNotIn(one.private_key_base64.rstrip("="), str(raised.exception))


# Who gets a push, and what it says ----------------------------------------------------

class RecipientTests(ChatTestCase):
    def setUp(self):
        super().setUp()
        self.browsers = {}
        for name, client in (("ada", self.ada), ("bob", self.bob), ("carol", self.carol), ("dave", self.dave)):
            browser = self.browsers[name] = Browser("https://push.example.com/" + name)
            response = client.request("POST", "/users/me/push_subscriptions", content_type="application/json",
                                      body=json.dumps({"push_subscription": browser.fields()}).encode())
            self.assertEqual(response.status, 200)
        self.endpoint_of = {browser.endpoint: name for name, browser in self.browsers.items()}
        self.app.pushes.pending.clear()

    def pushed(self):
        deliveries = list(self.app.pushes.pending)
        self.app.pushes.pending.clear()
        return {self.endpoint_of[delivery.endpoint]: delivery for delivery in deliveries}

    def test_mentions_involvement_gets_only_mentions_and_everything_gets_all_but_the_author_none(self):
        self.post_id(self.ada, self.all_talk, "Good morning")
        self.assertEqual(self.pushed(), {}, "everyone's involvement in All Talk is mentions")
        self.post_id(self.ada, self.all_talk, "Hey @Bob Builder, look")
        self.assertEqual(set(self.pushed()), {"bob"})
        self.app.store.set_involvement(self.all_talk, self.carol_id, "everything")
        self.post_id(self.ada, self.all_talk, "Lunch?")
        self.assertEqual(set(self.pushed()), {"carol"})
        self.post_id(self.carol, self.all_talk, "Yes")
        self.assertEqual(set(self.pushed()), set(), "the author never gets their own")

    def test_nothing_invisible_connected_and_deactivated_members_get_nothing(self):
        for user_id in (self.bob_id, self.carol_id, self.dave_id):
            self.app.store.set_involvement(self.all_talk, user_id, "everything")
        self.app.store.set_involvement(self.all_talk, self.bob_id, "nothing")
        self.connect(self.carol_id, self.all_talk)
        self.post_id(self.ada, self.all_talk, "Hello @Bob Builder and @Carol Creator")
        self.assertEqual(set(self.pushed()), {"dave"})
        self.app.store.set_involvement(self.all_talk, self.dave_id, "invisible")
        self.post_id(self.ada, self.all_talk, "Anyone?")
        self.assertEqual(set(self.pushed()), set())
        # presence older than 60 s is disconnected again
        self.app.db.execute("UPDATE memberships SET connected_at = ? WHERE user_id = ?",
                            (campfire.utc_now_text(time.time() - 61), self.carol_id))
        self.post_id(self.ada, self.all_talk, "Still there, @Carol Creator?")
        self.assertEqual(set(self.pushed()), {"carol"})

    def test_a_shared_room_is_the_title_and_the_author_leads_the_text(self):
        self.post_id(self.carol, self.closed, "Hey @Bob Builder, <b>bold</b> plan")
        delivery = self.pushed()["bob"]
        self.assertEqual((delivery.title, delivery.body, delivery.path),
                         ("Secret Plans", "Carol Creator: Hey @Bob Builder, bold plan", "/rooms/%d" % self.closed))

    def test_a_direct_room_pushes_every_message_titled_with_the_author(self):
        direct = self.create_direct_room(self.ada, [self.bob_id])
        self.pushed()
        self.post_id(self.ada, direct, "Psst")
        delivery = self.pushed()["bob"]
        self.assertEqual((delivery.title, delivery.body, delivery.path), ("Ada Admin", "Psst", "/rooms/%d" % direct))

    def test_the_badge_counts_the_recipients_unread_rooms(self):
        self.post_id(self.ada, self.closed, "one")  # Bob: Secret Plans unread
        self.pushed()
        self.post_id(self.ada, self.all_talk, "two, @Bob Builder")
        self.assertEqual(self.pushed()["bob"].badge, 2)
        self.app.db.execute("UPDATE memberships SET unread_at = NULL WHERE user_id = ?", (self.bob_id,))
        self.post_id(self.ada, self.all_talk, "three, @Bob Builder")
        self.assertEqual(self.pushed()["bob"].badge, 1)

    def test_a_full_queue_drops_the_oldest_push_and_says_so(self):
        self.app.config.push_queue_size = 2
        self.app.store.set_involvement(self.all_talk, self.bob_id, "everything")
        with self.assertLogs("campfire", logging.WARNING) as logs:
            for text in ("first", "second", "third"):
                self.post_id(self.ada, self.all_talk, text)
        self.assertEqual([delivery.body for delivery in self.app.pushes.pending],
                         ["Ada Admin: second", "Ada Admin: third"])
        self.assertTrue(any("push queue full" in line for line in logs.output), logs.output)


class NoSubscriberTests(ChatTestCase):
    """A room where nobody has a push subscription costs a post no push query; the
    first subscription, and a subscription undone with its request, are seen at once."""

    def statements_of_post(self, client, room_id, body):
        statements = []
        self.app.db.connection.set_trace_callback(statements.append)
        try:
            self.post_id(client, room_id, body)
        finally:
            self.app.db.connection.set_trace_callback(None)
        return statements

    def subscribe(self, client, name):
        browser = Browser("https://push.example.com/" + name)
        response = client.request("POST", "/users/me/push_subscriptions", content_type="application/json",
                                  body=json.dumps({"push_subscription": browser.fields()}).encode())
        self.assertEqual(response.status, 200)
        return browser

    def test_a_post_where_nobody_subscribed_reads_no_subscriptions(self):
        self.app.store.set_involvement(self.all_talk, self.bob_id, "everything")
        self.post_id(self.ada, self.all_talk, "Good morning")  # who has a subscription is read once
        statements = self.statements_of_post(self.ada, self.all_talk, "Still morning, @Bob Builder")
        self.assertTrue(any("INSERT INTO messages" in sql for sql in statements), statements)
        self.assertFalse([sql for sql in statements if "push_subscriptions" in sql])
        self.assertEqual(list(self.app.pushes.pending), [])

    def test_the_first_subscription_gets_the_next_post(self):
        self.post_id(self.ada, self.all_talk, "Hello @Bob Builder")  # nobody subscribed: remembered
        browser = self.subscribe(self.bob, "bob")
        self.post_id(self.ada, self.all_talk, "Again, @Bob Builder")
        self.assertEqual([(delivery.endpoint, delivery.body) for delivery in self.app.pushes.pending],
                         [(browser.endpoint, "Ada Admin: Again, @Bob Builder")])

    def test_a_subscriber_in_another_room_costs_this_room_no_query(self):
        self.subscribe(self.dave, "dave")  # Dave is not in Secret Plans
        self.post_id(self.carol, self.closed, "Plans")  # who has a subscription is read once
        statements = self.statements_of_post(self.carol, self.closed, "Plans, @Bob Builder")
        self.assertFalse([sql for sql in statements if "push_subscriptions" in sql])
        statements = self.statements_of_post(self.ada, self.all_talk, "Hello @Dave Outsider")
        self.assertTrue([sql for sql in statements if "push_subscriptions" in sql])
        self.assertEqual(len(self.app.pushes.pending), 1)

    def test_a_subscription_whose_write_was_undone_is_forgotten(self):
        self.post_id(self.ada, self.all_talk, "Hello @Bob Builder")
        with self.assertRaises(RuntimeError):
            with self.app.db.atomic():
                self.app.store.subscribe_push(self.bob_id, "https://push.example.com/gone", "k", "a", "test")
                self.assertIn(self.bob_id, self.app.store.push_user_ids())
                raise RuntimeError("the request failed after the subscription was written")
        self.assertNotIn(self.bob_id, self.app.store.push_user_ids())
        self.post_id(self.ada, self.all_talk, "Again, @Bob Builder")
        self.assertEqual(list(self.app.pushes.pending), [])


# Delivery to a push service --------------------------------------------------------

def sockets_connected_to(port, pid):
    """How many of process pid's TCP sockets are connected to port (Linux: /proc/<pid>/fd and /proc/net/tcp)."""
    inodes = set()
    for descriptor in os.listdir("/proc/%d/fd" % pid):
        with contextlib.suppress(OSError):
            target = os.readlink("/proc/%d/fd/%s" % (pid, descriptor))
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1  # 01: ESTABLISHED
    return count


class DeliveryTests(ChatTestCase):
    # A step timeout a loaded machine can't run out of by accident: the worker process
    # runs at a lower priority, and a connection's handshake waits for the CPU.
    CONFIG = {"push_timeout": 3.0, "push_retry_delay": 0.05}

    @classmethod
    def setUpClass(cls):
        cls.certificates_dir = tempfile.mkdtemp(prefix="campfire-push-ca-")
        cls.certificates = make_test_ca(cls.certificates_dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certificates_dir, ignore_errors=True)

    def setUp(self):
        super().setUp()
        environment = mock.patch.dict(os.environ, {"SSL_CERT_FILE": self.certificates["ca.pem"]})
        environment.start()
        self.addCleanup(environment.stop)

    def service(self, answer=None):
        service = PushService(self.certificates, answer)
        self.addCleanup(service.close)
        return service

    def subscribe(self, user_id, browser):
        self.app.store.subscribe_push(user_id, browser.endpoint, browser.p256dh, b64url(browser.auth), "test")

    def everyone_in_all_talk(self, count, service):
        """count people in All Talk, involved in everything, each with a browser subscribed."""
        browsers = {}
        stamp = campfire.utc_now_text()
        with self.app.db.atomic():
            first = self.app.db.value("SELECT max(id) FROM users") + 1
            for number in range(count):
                user_id = self.app.db.execute(
                    "INSERT INTO users (name, email_address, role, status, created_at, updated_at) "
                    "VALUES (?, ?, 0, 0, ?, ?)", ("Person %d" % number, "p%d@example.com" % number, stamp, stamp)
                ).lastrowid
                self.app.db.execute("INSERT INTO memberships (room_id, user_id, involvement, created_at, updated_at) "
                                    "VALUES (?, ?, 'everything', ?, ?)", (self.all_talk, user_id, stamp, stamp))
                browsers[user_id] = Browser(service.endpoint("p%d" % (user_id - first)))
        for user_id, browser in browsers.items():
            self.subscribe(user_id, browser)
        return browsers

    def test_each_push_is_encrypted_for_its_browser_signed_and_sent_as_rfc_8030_asks(self):
        service = self.service()
        browser = Browser(service.endpoint("bob"))
        self.subscribe(self.bob_id, browser)
        self.post_id(self.carol, self.closed, "Hey @Bob Builder, ship it 🚀")
        self.app.pushes.run_pending()
        [(name, headers, body)] = service.requests
        self.assertEqual(headers["Content-Encoding"], "aes128gcm")
        self.assertEqual(headers["Content-Type"], "application/octet-stream")
        self.assertEqual(headers["Urgency"], "high")
        self.assertEqual(headers["TTL"], str(campfire.PUSH_TTL))
        self.assertEqual(unb64url(verify_vapid(headers["Authorization"], browser.endpoint)),
                         self.app.vapid_key.public_key)
        self.assertLessEqual(len(body), 4096)
        payload = json.loads(browser.decrypt(body))
        self.assertEqual(payload, {"title": "Secret Plans", "options": {
            "body": "Carol Creator: Hey @Bob Builder, ship it 🚀", "icon": "/account/logo",
            "data": {"path": "/rooms/%d" % self.closed, "badge": 1}}})

    def send_from_worker(self, *request):
        """The push worker process's answer to one push: (status, Retry-After, text)."""
        async def send():
            try:
                return await asyncio.wait_for(self.app.pushes.push_worker().send(*request), 60)
            finally:
                self.app.pushes.push_worker().detach()
        return asyncio.run(send())

    def test_encryption_signing_and_sending_run_in_a_process_of_their_own_at_a_lower_priority(self):
        service = self.service(lambda name, attempt: (201, []))
        browser = Browser(service.endpoint("bob"))
        answer = self.send_from_worker("T", "B", "/rooms/1", 0, browser.endpoint, browser.p256dh,
                                       b64url(browser.auth))
        self.assertEqual(answer[0], 201)
        [(_, headers, body)] = service.requests
        self.assertEqual(json.loads(browser.decrypt(body))["title"], "T")
        self.assertEqual(unb64url(verify_vapid(headers["Authorization"], browser.endpoint)),
                         self.app.vapid_key.public_key)
        worker = self.app.pushes.push_worker().process
        self.assertNotEqual(worker.pid, os.getpid())
        self.assertGreaterEqual(os.getpriority(os.PRIO_PROCESS, worker.pid),
                                min(19, os.nice(0) + campfire.PUSH_WORKER_NICENESS))
        if sys.platform.startswith("linux"):  # and it runs only on a CPU nothing else wants
            self.assertEqual(os.sched_getscheduler(worker.pid), os.SCHED_IDLE)

    def test_a_push_that_fails_to_encrypt_is_reported_and_the_worker_goes_on(self):
        service = self.service()
        browser = Browser(service.endpoint("bob"))
        status, _, text = self.send_from_worker("T", "B", "/rooms/1", 0, browser.endpoint,
                                                b64url(b"\x04" + b"\x00" * 64), b64url(browser.auth))
        self.assertIsNone(status)
        self.assertRegex(text, "^not sent: .*p256dh")
        self.assertEqual(service.requests, [])
        first = self.app.pushes.push_worker().process.pid
        status, _, _ = self.send_from_worker("T", "B", "/rooms/1", 0, browser.endpoint, browser.p256dh,
                                             b64url(browser.auth))
        self.assertEqual(status, 201)
        [(_, _, body)] = service.requests
        self.assertEqual(json.loads(browser.decrypt(body))["title"], "T")
        self.assertEqual(self.app.pushes.push_worker().process.pid, first, "the same process answered")

    def push_a_post(self, service, count, watch=None, last=None):
        """Post to All Talk with the push senders running as a running server's do, until
        service has count pushes (watch() called between looks); last()'s value, taken
        before the senders stop."""
        async def run():
            self.app.pushes.start(asyncio.get_running_loop())
            try:
                self.post_id(self.ada, self.all_talk, "Fire drill at noon")
                deadline = time.monotonic() + 60
                while len(service.requests) < count and time.monotonic() < deadline:
                    if watch is not None:
                        watch()
                    await asyncio.sleep(0.001)
                return last() if last is not None else None
            finally:
                self.app.pushes.stop()
        return asyncio.run(run())

    def test_the_server_starts_no_thread_of_its_own_to_push(self):
        # A thread of the server's would take the interpreter lock from the event loop for every push.
        service = self.service()
        browsers = self.everyone_in_all_talk(20, service)
        threads = set(threading.enumerate())
        seen = set()
        self.push_a_post(service, len(browsers), watch=lambda: seen.update(threading.enumerate()))
        self.assertEqual(len(service.requests), len(browsers))
        ours = {thread for thread in seen - threads if "process_request_thread" not in thread.name}  # the service's
        self.assertEqual(ours, set(), "threads of the server that ran while pushes were encrypted")

    def test_the_connections_to_the_push_service_are_the_worker_processes_not_the_servers(self):
        # The HTTPS exchange on the server's loop cost it a few TLS records per push.
        service = self.service()
        browsers = self.everyone_in_all_talk(10, service)

        def look():  # while the pushes' connections are kept for the next one
            worker = self.app.pushes.push_worker().process.pid
            return sockets_connected_to(service.port, os.getpid()), sockets_connected_to(service.port, worker)
        ours, workers = self.push_a_post(service, len(browsers), last=look)
        self.assertEqual(len(service.requests), len(browsers))
        self.assertEqual(ours, 0, "connections the server's process holds to the push service")
        self.assertGreaterEqual(workers, 1, "the worker process keeps its connections for the next push")

    def test_a_worker_process_that_dies_is_replaced_and_its_pushes_sent_by_the_next(self):
        service = self.service()
        browsers = self.everyone_in_all_talk(8, service)
        worker = self.app.pushes.push_worker()
        os.kill(worker.process.pid, signal.SIGSTOP)  # it takes the pushes but never answers
        self.addCleanup(lambda: worker.process.poll() is None and worker.process.kill())

        async def push_kill_and_wait():
            self.app.pushes.start(asyncio.get_running_loop())
            await asyncio.sleep(0)  # the senders wait for work, as a running server's do
            try:
                self.post_id(self.ada, self.all_talk, "Fire drill at noon")
                deadline = time.monotonic() + 60
                while len(worker._jobs) < len(browsers) and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                in_flight = len(worker._jobs)
                os.kill(worker.process.pid, signal.SIGKILL)
                while len(service.requests) < len(browsers) and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                return in_flight
            finally:
                self.app.pushes.stop()

        with self.assertLogs("campfire", logging.ERROR) as logs:
            in_flight = asyncio.run(push_kill_and_wait())
        self.assertEqual(in_flight, len(browsers), "every push was waiting on the stopped process")
        self.assertEqual(sorted(name for name, _, _ in service.requests),
                         sorted("p%d" % (user_id - min(browsers)) for user_id in browsers))
        self.assertTrue(any("push worker process stopped" in line for line in logs.output), logs.output)
        self.assertIsNotNone(worker.process.returncode, "the dead process was reaped")
        self.assertNotEqual(self.app.pushes.push_worker().process.pid, worker.process.pid)

    def test_messages_to_the_worker_arrive_whole_however_the_socket_splits_them(self):
        frames = campfire.PushFrames()
        data = b"".join(campfire.PushFrames.encode(message) for message in ((1, b"\x00" * 5000, "a"), (2, None, "é")))
        received = []
        for start in range(0, len(data), 7):
            received += frames.feed(data[start:start + 7])
        self.assertEqual(received, [(1, b"\x00" * 5000, "a"), (2, None, "é")])
        self.assertEqual(frames.feed(b""), [])

    def test_a_long_message_is_cut_to_fit_one_push(self):
        service = self.service()
        browser = Browser(service.endpoint("bob"))
        self.subscribe(self.bob_id, browser)
        self.post_id(self.ada, self.all_talk, "@Bob Builder " + "é" * 5000)
        self.app.pushes.run_pending()
        [(_, _, body)] = service.requests
        self.assertLessEqual(len(body), 4096)
        text = json.loads(browser.decrypt(body))["options"]["body"]
        self.assertTrue(text.startswith("Ada Admin: @Bob Builder éé") and text.endswith("é…"), text[-20:])

    def test_fifty_subscribers_each_get_their_own_push(self):
        service = self.service()
        browsers = self.everyone_in_all_talk(50, service)
        self.post_id(self.ada, self.all_talk, "Fire drill at noon")
        self.app.pushes.run_pending()
        self.assertEqual(len(service.requests), 50)
        by_name = {name: body for name, _, body in service.requests}
        first = min(browsers)
        for user_id, browser in browsers.items():
            payload = json.loads(browser.decrypt(by_name["p%d" % (user_id - first)]))
            self.assertEqual(payload["options"]["body"], "Ada Admin: Fire drill at noon")

    def test_five_hundred_subscribers_are_all_reached(self):
        service = self.service()
        browsers = self.everyone_in_all_talk(500, service)
        self.post_id(self.ada, self.all_talk, "Everyone: the office is closed tomorrow")
        self.app.pushes.run_pending(timeout=180)
        self.assertEqual(sorted(name for name, _, _ in service.requests),
                         sorted("p%d" % (user_id - min(browsers)) for user_id in browsers))
        sample = dict((name, body) for name, _, body in service.requests)
        for user_id in list(browsers)[::97]:
            text = json.loads(browsers[user_id].decrypt(sample["p%d" % (user_id - min(browsers))]))
            self.assertEqual(text["options"]["body"], "Ada Admin: Everyone: the office is closed tomorrow")

    def test_404_and_410_delete_the_subscription_and_other_refusals_keep_it(self):
        answers = {"gone": (410, []), "missing": (404, []), "bad": (400, []), "forbidden": (403, [])}
        service = self.service(lambda name, attempt: answers.get(name, (201, [])))
        for name, user_id in (("gone", self.bob_id), ("missing", self.carol_id), ("bad", self.dave_id),
                              ("forbidden", self.dave_id)):
            self.subscribe(user_id, Browser(service.endpoint(name)))
        for user_id in (self.bob_id, self.carol_id, self.dave_id):
            self.app.store.set_involvement(self.all_talk, user_id, "everything")
        self.post_id(self.ada, self.all_talk, "ping")
        self.app.pushes.run_pending()
        self.assertEqual(sorted(name for name, _, _ in service.requests), ["bad", "forbidden", "gone", "missing"])
        left = [row[0] for row in self.app.db.all("SELECT endpoint FROM push_subscriptions ORDER BY endpoint")]
        self.assertEqual(left, [service.endpoint("bad"), service.endpoint("forbidden")])

    def test_429_and_5xx_are_tried_again_honouring_retry_after_then_given_up(self):
        def answer(name, attempt):
            if name == "busy":
                return (429, [("Retry-After", "1")]) if attempt == 1 else (201, [])
            if name == "flaky":
                return (503, []) if attempt <= 2 else (201, [])
            return (500, [])  # "down": every time
        service = self.service(answer)
        for name, user_id in (("busy", self.bob_id), ("flaky", self.carol_id), ("down", self.dave_id)):
            self.subscribe(user_id, Browser(service.endpoint(name)))
            self.app.store.set_involvement(self.all_talk, user_id, "everything")
        self.post_id(self.ada, self.all_talk, "ping")
        started = time.monotonic()
        with self.assertLogs("campfire", logging.INFO) as logs:
            self.app.pushes.run_pending()
        times = {}
        for name, _, _ in service.requests:
            times[name] = times.get(name, 0) + 1
        self.assertEqual(times, {"busy": 2, "flaky": 3, "down": 1 + campfire.PUSH_RETRIES})
        self.assertGreaterEqual(time.monotonic() - started, 1.0, "Retry-After: 1 was waited for")
        self.assertTrue(any("dropped" in line for line in logs.output), logs.output)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM push_subscriptions"), 3, "none deleted")

    def test_a_slow_push_service_times_out_without_holding_up_the_others(self):
        service = self.service(lambda name, attempt: 30 if name == "slow" else (201, []))
        self.subscribe(self.bob_id, Browser(service.endpoint("slow")))
        self.subscribe(self.carol_id, Browser(service.endpoint("quick")))
        for user_id in (self.bob_id, self.carol_id):
            self.app.store.set_involvement(self.all_talk, user_id, "everything")
        self.post_id(self.ada, self.all_talk, "ping")
        started = time.monotonic()
        with self.assertLogs("campfire", logging.WARNING) as logs:
            self.app.pushes.run_pending()
        self.assertLess(time.monotonic() - started, 15, "the 3 s step timeout ended the slow push, not its 30 s stall")
        self.assertEqual(sorted(name for name, _, _ in service.requests), ["quick", "slow"])
        self.assertTrue(any("push to subscription" in line and "reading" in line for line in logs.output),
                        logs.output)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM push_subscriptions"), 2)

    def test_pushes_to_one_service_share_kept_alive_connections(self):
        service = self.service()
        self.everyone_in_all_talk(50, service)
        self.post_id(self.ada, self.all_talk, "Fire drill at noon")
        self.app.pushes.run_pending()
        self.assertEqual(len(service.requests), 50)
        self.assertLessEqual(service.connections, campfire.PUSH_WORKERS, "at most one connection per push in flight")
        self.app.pushes.workers = 1
        self.post_id(self.ada, self.all_talk, "One at a time")
        connections = service.connections
        self.app.pushes.run_pending()
        self.assertEqual(len(service.requests), 100)
        self.assertEqual(service.connections - connections, 1, "fifty pushes one after another, one connection")
        for _, headers, _ in service.requests:
            self.assertNotIn("close", headers.get("Connection", "").lower())

    def test_a_connection_the_service_closed_between_pushes_loses_no_push(self):
        service = self.service()
        service_closing = PushService(self.certificates, answers_per_connection=1)
        self.addCleanup(service_closing.close)
        browsers = self.everyone_in_all_talk(5, service_closing)
        self.app.pushes.workers = 1  # each push after the first goes out on the connection the one before used
        self.post_id(self.ada, self.all_talk, "Still there?")
        with self.assertNoLogs("campfire", logging.WARNING):
            self.app.pushes.run_pending()
        self.assertEqual(service_closing.unanswered, 4, "the service closed four kept connections unanswered")
        self.assertEqual(service_closing.connections, 5)
        answered = {}
        for name, _, body in service_closing.requests:
            answered[name] = body
        first = min(browsers)
        self.assertEqual(sorted(answered), sorted("p%d" % (user_id - first) for user_id in browsers))
        for user_id, browser in browsers.items():
            payload = json.loads(browser.decrypt(answered["p%d" % (user_id - first)]))
            self.assertEqual(payload["options"]["body"], "Ada Admin: Still there?")
        self.assertEqual(service.requests, [])

    def test_a_new_connection_closed_unanswered_is_not_tried_again(self):
        service = PushService(self.certificates, answers_per_connection=0)
        self.addCleanup(service.close)
        self.subscribe(self.bob_id, Browser(service.endpoint("bob")))
        self.post_id(self.ada, self.all_talk, "@Bob Builder hi")
        with self.assertLogs("campfire", logging.WARNING) as logs:
            self.app.pushes.run_pending()
        self.assertEqual((service.connections, service.unanswered), (1, 1), "sent once: it may have been delivered")
        self.assertTrue(any("without answering" in line for line in logs.output), logs.output)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM push_subscriptions"), 1)

    def test_a_kept_connection_is_closed_once_unused_for_the_keep_alive_time(self):
        self.app.config.push_keep_alive = 0.3
        service = self.service()
        self.subscribe(self.bob_id, Browser(service.endpoint("bob")))

        async def push_and_wait():
            self.app.pushes.start(asyncio.get_running_loop())
            try:
                self.post_id(self.ada, self.all_talk, "@Bob Builder hi")
                deadline = time.monotonic() + 30
                while not service.requests and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                answered = time.monotonic()
                while service.open and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                return answered, time.monotonic(), service.open
            finally:
                self.app.pushes.stop()

        answered, closed, still_open = asyncio.run(push_and_wait())
        self.assertEqual((len(service.requests), service.connections, still_open), (1, 1, 0))
        self.assertGreaterEqual(closed - answered, 0.2, "kept open while it might be used again")

    def test_a_push_service_without_a_certificate_we_trust_gets_nothing(self):
        service = self.service()
        self.subscribe(self.bob_id, Browser(service.endpoint("bob")))
        self.post_id(self.ada, self.all_talk, "@Bob Builder hi")
        with mock.patch.dict(os.environ, {"SSL_CERT_FILE": os.devnull}), \
                self.assertLogs("campfire", logging.WARNING) as logs:
            self.app.pushes.run_pending()
        self.assertEqual(service.requests, [])
        self.assertTrue(any("CERTIFICATE_VERIFY_FAILED" in line for line in logs.output), logs.output)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM push_subscriptions"), 1)

    def test_a_test_notification_reaches_the_browser(self):
        service = self.service()
        browser = Browser(service.endpoint("bob"))
        self.subscribe(self.bob_id, browser)
        subscription_id = self.app.db.value("SELECT id FROM push_subscriptions")
        self.assertEqual(self.bob.post("/users/me/push_subscriptions/%d/test_notifications" % subscription_id).status,
                         303)
        self.app.pushes.run_pending()
        [(_, _, body)] = service.requests
        payload = json.loads(browser.decrypt(body))
        self.assertEqual(payload["title"], "Campfire Test")
        self.assertEqual(payload["options"]["data"]["path"], "/users/me/push_subscriptions")


class RetryAfterTests(unittest.TestCase):
    def test_seconds_and_http_dates(self):
        now = 1_700_000_000
        self.assertEqual(campfire.retry_after_seconds("120", now), 120)
        self.assertEqual(campfire.retry_after_seconds("Tue, 14 Nov 2023 22:15:00 GMT", now), 100)
        self.assertEqual(campfire.retry_after_seconds("Tue, 14 Nov 2023 22:00:00 GMT", now), 0)
        for bad in ("", "soon", "-5", "1.5e3"):
            self.assertIsNone(campfire.retry_after_seconds(bad, now), bad)


if __name__ == "__main__":
    unittest.main()
