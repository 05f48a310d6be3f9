"""HTTPS served directly: the certificate reloaded on SIGHUP without dropping a
connection (a real server process, real signals, certificates made by the
cryptography package), the HTTP_REDIRECT_PORT that sends http:// to https://,
and HSTS only over TLS."""

import asyncio
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

from tests.helpers import campfire, make_app, recv_response, wait_until
from tests.test_offsite import make_ca

STEP_TIMEOUT = 20.0  # seconds for a start, a reload or a stop
CAMPFIRE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOOT = "import sys; sys.path.insert(0, %r); import campfire; sys.exit(campfire.main())" % CAMPFIRE_DIR


def peer_certificate(context, port, keep=False):
    """(DER certificate, the TLS socket or None) of a new handshake with 127.0.0.1:port."""
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                               server_hostname="127.0.0.1")
    der = sock.getpeercert(binary_form=True)
    if keep:
        return der, sock
    sock.close()
    return der, None


def trusting(*cas):
    context = ssl.create_default_context()
    for ca in cas:
        context.load_verify_locations(ca)
    return context


def der_of(pem_path):
    with open(pem_path) as file:
        return ssl.PEM_cert_to_DER_cert(file.read())


def get(sock, path="/up"):
    sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path).encode())
    return recv_response(sock, timeout=10)


class TlsServer:
    """`campfire.py serve` over TLS in a process of its own, its log read as it comes."""

    def __init__(self, storage, cert, key, redirect=False):
        env = dict(os.environ, CAMPFIRE_STORAGE_PATH=storage, BACKUP_INTERVAL="0", CAMPFIRE_AS_MODULE="1",
                   TLS_CERT_PATH=cert, TLS_KEY_PATH=key)
        if redirect:
            env["HTTP_REDIRECT_PORT"] = "0"
        self.process = subprocess.Popen([sys.executable, "-S", "-c", BOOT, "serve", "--host", "127.0.0.1",
                                         "--port", "0"], env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log, self.port, self.redirect_port = [], None, None
        started = threading.Event()

        def read_log():
            for line in self.process.stderr:
                self.log.append(line)
                if " listening on https://127.0.0.1:" in line:
                    self.port = int(line.rsplit(":", 1)[1])
                    if not redirect:
                        started.set()
                if " sending http://127.0.0.1:" in line:
                    self.redirect_port = int(line.split("http://127.0.0.1:")[1].split()[0])
                    started.set()
            started.set()
        self.reader = threading.Thread(target=read_log, daemon=True)
        self.reader.start()
        if not started.wait(STEP_TIMEOUT) or self.port is None:
            self.stop()
            raise AssertionError("the server did not start:\n" + "".join(self.log))

    def logged(self, text):
        return any(text in line for line in self.log)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STEP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STEP_TIMEOUT)
        self.reader.join(STEP_TIMEOUT)
        self.process.stderr.close()


class CertificateReloadTests(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="campfire-tls-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.first, self.second = make_ca(self.folder, "first"), make_ca(self.folder, "second")
        self.cert, self.key = os.path.join(self.folder, "cert.pem"), os.path.join(self.folder, "key.pem")
        self.install(self.first)
        self.server = TlsServer(os.path.join(self.folder, "storage"), self.cert, self.key)
        self.addCleanup(self.server.stop)

    def install(self, pair):
        """The pair at the configured paths, each file replaced whole (as certbot's renewal does)."""
        for source, target in ((pair["cert"], self.cert), (pair["key"], self.key)):
            shutil.copyfile(source, target + ".new")
            os.replace(target + ".new", target)

    def sighup(self, expected_log):
        count = sum(expected_log in line for line in self.server.log)
        self.server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: sum(expected_log in line for line in self.server.log) > count, timeout=STEP_TIMEOUT,
                   message="the server never logged %r" % expected_log)

    def test_new_handshakes_get_the_new_certificate_and_open_connections_keep_going(self):
        context = trusting(self.first["ca"], self.second["ca"])
        served, held = peer_certificate(context, self.server.port, keep=True)
        self.addCleanup(held.close)
        self.assertEqual(served, der_of(self.first["cert"]))
        self.assertEqual(get(held)[0], 200)

        self.install(self.second)
        self.sighup("reloaded the TLS certificate")
        self.assertEqual(peer_certificate(context, self.server.port)[0], der_of(self.second["cert"]))
        # A client that trusts only the first CA can no longer shake hands...
        with self.assertRaises(ssl.SSLCertVerificationError):
            peer_certificate(trusting(self.first["ca"]), self.server.port)
        # ...while the connection opened before the reload keeps working, on its own certificate.
        status, headers, _ = get(held)
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("strict-transport-security"), "max-age=%d" % campfire.HSTS_MAX_AGE_SECONDS)
        self.assertEqual(held.getpeercert(binary_form=True), der_of(self.first["cert"]))

    def test_a_certificate_that_cannot_be_loaded_is_logged_and_the_one_in_use_kept(self):
        context = trusting(self.first["ca"])
        # A key that doesn't match the certificate, as a half-finished renewal leaves it.
        shutil.copyfile(self.second["key"], self.key + ".new")
        os.replace(self.key + ".new", self.key)
        self.sighup("The certificate in use is kept.")
        self.assertEqual(peer_certificate(context, self.server.port)[0], der_of(self.first["cert"]))
        with open(self.cert, "w") as file:
            file.write("not a certificate\n")
        self.sighup("The certificate in use is kept.")
        served, sock = peer_certificate(context, self.server.port, keep=True)
        self.addCleanup(sock.close)
        self.assertEqual(served, der_of(self.first["cert"]))
        self.assertEqual(get(sock)[0], 200)
        self.assertIsNone(self.server.process.poll())
        # Once the pair is whole again, the next SIGHUP takes it.
        self.install(self.second)
        self.sighup("reloaded the TLS certificate")
        self.assertEqual(peer_certificate(trusting(self.second["ca"]), self.server.port)[0],
                         der_of(self.second["cert"]))


class RedirectPortTests(unittest.TestCase):
    """HTTP_REDIRECT_PORT beside a TLS server process."""

    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.mkdtemp(prefix="campfire-tls-")
        cls.pair = make_ca(cls.folder, "site")
        cls.server = TlsServer(os.path.join(cls.folder, "storage"), cls.pair["cert"], cls.pair["key"], redirect=True)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.folder, True)

    def exchange(self, data):
        sock = socket.create_connection(("127.0.0.1", self.server.redirect_port), timeout=10)
        try:
            sock.sendall(data)
            response = recv_response(sock, timeout=10)
            sock.settimeout(10)
            self.assertEqual(sock.recv(1), b"")  # closed after the answer
            return response
        finally:
            sock.close()

    def test_get_is_sent_to_the_same_path_over_https_with_301_and_no_hsts(self):
        status, headers, body = self.exchange(b"GET /rooms/1/messages?before=5 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n")
        self.assertEqual(status, 301)
        self.assertEqual(headers["location"], "https://127.0.0.1:%d/rooms/1/messages?before=5" % self.server.port)
        self.assertEqual((headers["content-length"], body), ("0", b""))
        self.assertNotIn("strict-transport-security", headers)  # RFC 6797 §7.2: never over plain HTTP

    def test_other_methods_get_308_and_the_host_name_is_kept(self):
        status, headers, _ = self.exchange(b"POST /session HTTP/1.1\r\nHost: chat.example.com\r\n"
                                           b"Content-Length: 0\r\n\r\n")
        self.assertEqual(status, 308)
        self.assertEqual(headers["location"], "https://chat.example.com:%d/session" % self.server.port)
        status, headers, _ = self.exchange(b"HEAD / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
        self.assertEqual((status, headers["location"]), (301, "https://[::1]:%d/" % self.server.port))

    def test_a_browser_like_client_follows_it_to_the_https_page(self):
        context = trusting(self.pair["ca"])
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
        with opener.open("http://127.0.0.1:%d/up" % self.server.redirect_port, timeout=10) as response:
            self.assertEqual(response.status, 200)
            self.assertEqual(response.url, "https://127.0.0.1:%d/up" % self.server.port)
            self.assertEqual(response.headers["Strict-Transport-Security"],
                             "max-age=%d" % campfire.HSTS_MAX_AGE_SECONDS)

    def test_unreadable_and_oversized_heads_are_refused(self):
        self.assertEqual(self.exchange(b"GET /up HTTP/1.1\r\n\r\n")[0], 400)                      # no Host
        self.assertEqual(self.exchange(b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n")[0], 400)  # not a path
        self.assertEqual(self.exchange(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")[0], 400)
        self.assertEqual(self.exchange(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")[0], 400)
        long_head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"x" * campfire.REDIRECT_MAX_HEAD_BYTES + b"\r\n\r\n"
        self.assertEqual(self.exchange(long_head)[0], 431)

    def test_the_server_keeps_answering_https_meanwhile(self):
        connection = http.client.HTTPSConnection("127.0.0.1", self.server.port, timeout=10,
                                                 context=trusting(self.pair["ca"]))
        try:
            connection.request("GET", "/up")
            self.assertEqual(connection.getresponse().status, 200)
        finally:
            connection.close()


class RedirectUnitTests(unittest.TestCase):
    def test_locations_for_default_and_other_ports(self):
        answer = campfire.https_redirect(b"GET /a?b=c HTTP/1.1\r\nhost: Chat.Example.com:80\r\n\r\n", 443)
        self.assertIn(b"\r\nLocation: https://Chat.Example.com/a?b=c\r\n", answer)
        self.assertTrue(answer.startswith(b"HTTP/1.1 301 Moved Permanently\r\n"))
        answer = campfire.https_redirect(b"DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n", 8443)
        self.assertTrue(answer.startswith(b"HTTP/1.1 308 Permanent Redirect\r\n"))
        self.assertIn(b"\r\nLocation: https://h:8443/x\r\n", answer)
        self.assertIn(b"\r\nConnection: close\r\n", answer)

    def test_a_redirect_port_without_tls_stops_the_start(self):
        app = make_app(redirect_port=0)
        self.addCleanup(shutil.rmtree, app.config.storage_path, True)
        self.addCleanup(app.close)
        server = campfire.Server(app, "127.0.0.1", 0)
        with self.assertRaisesRegex(campfire.ConfigError, "HTTP_REDIRECT_PORT sends visitors to HTTPS"):
            asyncio.run(server.start())

    def test_the_variable_is_checked(self):
        self.assertEqual(campfire.Config.from_environment({"HTTP_REDIRECT_PORT": "80"}).redirect_port, 80)
        with self.assertRaisesRegex(campfire.ConfigError, "HTTP_REDIRECT_PORT must be a number"):
            campfire.Config.from_environment({"HTTP_REDIRECT_PORT": "http"})


if __name__ == "__main__":
    unittest.main()
