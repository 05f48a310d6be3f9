"""Password work off the event loop: sign-in, sign-up and password changes hash in
worker threads, bounded, and an unknown address costs as much as a known one."""

import http.client
import statistics
import threading
import time
import unittest
import urllib.parse

from tests.helpers import AppTestCase, Client, LiveServer, campfire, first_run_cookie


def timed_sign_in(app, email, password, remote_addr):
    client = Client(app, remote_addr=remote_addr)
    started = time.perf_counter()
    response = client.post("/session", {"email_address": email, "password": password})
    return response.status, time.perf_counter() - started


class SignInTimingTests(AppTestCase):
    # A cost at which the hash, not the page around it, is most of a sign-in's time
    # (about 15 ms here; cost 4, the tests' usual, is under a millisecond).
    CONFIG = {"bcrypt_cost": 8}

    def test_an_unknown_address_takes_as_long_as_a_known_one(self):
        self.first_run()
        known, unknown = [], []
        for attempt in range(12):  # interleaved, each from its own address (the limit is per address)
            status, seconds = timed_sign_in(self.app, "ada@example.com", "wrong", "10.0.1.%d" % attempt)
            self.assertEqual(status, 401)
            known.append(seconds)
            status, seconds = timed_sign_in(self.app, "nobody@example.com", "wrong", "10.0.2.%d" % attempt)
            self.assertEqual(status, 401)
            unknown.append(seconds)
        # Without a hash for unknown addresses they answer several times faster than known ones.
        self.assertGreater(statistics.median(unknown), 0.6 * statistics.median(known),
                           "unknown %.2f ms, known %.2f ms" % (1000 * statistics.median(unknown),
                                                               1000 * statistics.median(known)))

    def test_unknown_addresses_cost_one_check_each_and_no_hash_on_the_event_loop(self):
        self.first_run()
        hashed_on = []
        real_hash = campfire.hash_password

        def recording_hash(*args, **kwargs):
            hashed_on.append(threading.current_thread().name)
            return real_hash(*args, **kwargs)
        campfire.hash_password = recording_hash
        self.addCleanup(setattr, campfire, "hash_password", real_hash)
        for attempt in range(5):
            status, _ = timed_sign_in(self.app, "nobody%d@example.com" % attempt, "guess", "10.0.3.%d" % attempt)
            self.assertEqual(status, 401)
        # The digest nobody matches is made once, in a worker thread, never on the loop.
        self.assertEqual(len(hashed_on), 1, hashed_on)
        self.assertTrue(hashed_on[0].startswith("campfire-worker"), hashed_on)

    def test_a_deactivated_person_gets_the_same_answer_as_a_wrong_password(self):
        self.first_run()
        self.join("Bea", "bea@example.com", "bea-password")
        self.app.db.execute("UPDATE users SET status = 1 WHERE email_address = 'bea@example.com'")
        self.app.store.bump_everything()
        status, _ = timed_sign_in(self.app, "bea@example.com", "bea-password", "10.0.3.1")
        self.assertEqual(status, 401)


class PasswordChangeLimitTests(AppTestCase):
    def test_a_person_changing_their_password_again_and_again_is_slowed_down(self):
        self.first_run()
        statuses = []
        for attempt in range(campfire.PASSWORD_CHANGE_LIMIT[0] + 2):
            response = self.client.request("PATCH", "/users/me/profile", form={
                "user[password]": "new-password-%d" % attempt})
            statuses.append(response.status)
        allowed = campfire.PASSWORD_CHANGE_LIMIT[0]
        self.assertEqual(statuses[:allowed], [303] * allowed)
        self.assertEqual(statuses[allowed:], [429, 429])
        # Changing only the name still works while the password is limited.
        response = self.client.request("PATCH", "/users/me/profile", form={"user[name]": "Ada Lovelace"})
        self.assertEqual(response.status, 303)
        self.assertEqual(self.app.store.user(1).name, "Ada Lovelace")
        # The password that counts is the last one accepted.
        status, _ = timed_sign_in(self.app, "ada@example.com", "new-password-%d" % (allowed - 1), "10.0.4.1")
        self.assertEqual(status, 303)


def post_sign_in(port, source, email, password):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    body = urllib.parse.urlencode({"email_address": email, "password": password})
    connection.request("POST", "/session", body, {"Content-Type": "application/x-www-form-urlencoded",
                                                   "Sec-Fetch-Site": "same-origin"})
    status = connection.getresponse().status
    connection.close()
    return status


class LivePasswordTests(unittest.TestCase):
    """Over real sockets, with hashes of real cost (bcrypt of cost 10, about 70 ms of CPU
    a hash, or the full scrypt cost, about 50 ms, where there is no bcrypt)."""

    def setUp(self):
        self.live = LiveServer(scrypt_n=campfire.SCRYPT_N, bcrypt_cost=10)
        self.addCleanup(self.live.stop)
        first_run_cookie(self.live.port)

    def up_latency_during(self, work):
        """Run work() in threads while timing /up on a keep-alive connection; (statuses, latencies)."""
        statuses, latencies = [], []

        def run(index, job):
            statuses.append(job())

        threads = [threading.Thread(target=run, args=(index, job)) for index, job in enumerate(work)]
        connection = http.client.HTTPConnection("127.0.0.1", self.live.port, timeout=10)
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while any(thread.is_alive() for thread in threads) and time.monotonic() < deadline:
            started = time.perf_counter()
            connection.request("GET", "/up")
            response = connection.getresponse()
            response.read()
            latencies.append(time.perf_counter() - started)
            self.assertEqual(response.status, 200)
            time.sleep(0.005)
        for thread in threads:
            thread.join(60)
        connection.close()
        return statuses, latencies

    def test_sign_ins_from_many_addresses_never_stall_the_server(self):
        # Every password check is held at a gate the test opens: the server must keep
        # answering /up meanwhile (on the event loop, the first check would stop it).
        gate, checking = threading.Event(), threading.Semaphore(0)
        real_check = campfire.check_password

        def held_check(password, digest):  # the real check, once the gate opens
            checking.release()
            gate.wait(30)
            return real_check(password, digest)
        campfire.check_password = held_check
        self.addCleanup(setattr, campfire, "check_password", real_check)
        self.addCleanup(gate.set)
        statuses = []
        threads = [threading.Thread(target=lambda source="127.0.0.%d" % (2 + index % 8): statuses.append(
            post_sign_in(self.live.port, source, "ada@example.com", "wrong-password"))) for index in range(24)]
        for thread in threads:
            thread.start()
        self.assertTrue(checking.acquire(timeout=10), "no password check started")
        connection = http.client.HTTPConnection("127.0.0.1", self.live.port, timeout=10)
        for _ in range(5):
            connection.request("GET", "/up")
            response = connection.getresponse()
            response.read()
            self.assertEqual(response.status, 200)
        connection.close()
        self.assertFalse(gate.is_set())
        gate.set()
        for thread in threads:
            thread.join(60)
        self.assertEqual(sorted(statuses), [401] * 24)

    def test_too_many_hashes_waiting_answer_503_not_an_ever_longer_wait(self):
        self.live.app.config.password_queue_limit = 2
        work = [lambda source="127.0.0.%d" % (2 + index): post_sign_in(
            self.live.port, source, "ada@example.com", "wrong-password") for index in range(8)]
        statuses, _ = self.up_latency_during(work)
        self.assertIn(503, statuses)
        self.assertIn(401, statuses)
        self.assertEqual(set(statuses), {401, 503})


class QrCodeTests(AppTestCase):
    def test_codes_drawn_afresh_are_limited_per_address_and_shown_again_for_free(self):
        limit = campfire.QR_CODE_LIMIT[0]
        client = Client(self.app, remote_addr="10.0.5.1")
        paths = ["/qr_code/" + campfire.b64url_encode(("http://localhost/join/%d" % n).encode())
                 for n in range(limit + 1)]
        for path in paths[:limit]:
            self.assertEqual(client.get(path).status, 200)
        refused = client.get(paths[limit])
        self.assertEqual(refused.status, 429)
        self.assertEqual(refused.header("Retry-After"), "%d" % campfire.QR_CODE_LIMIT[1])
        self.assertEqual(client.get(paths[0]).status, 200)  # drawn before: remembered, not limited
        self.assertEqual(Client(self.app, remote_addr="10.0.5.2").get(paths[limit]).status, 200)


if __name__ == "__main__":
    unittest.main()
