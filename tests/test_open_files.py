"""Under the open-file limit most shells and systemd give a process (1,024), the
server still holds hundreds of live WebSockets and serves a newcomer."""

import os
import resource
import socket
import subprocess
import sys
import tempfile
import shutil
import time
import unittest
import urllib.request

from tests.helpers import CableClient, first_run_cookie

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOCKETS = 500
BURST_HELD = 200        # sockets held open under a limit of 256 files: the cap is ~180
BURST_NEWCOMERS = 150   # then connected at once: more than the files left


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OpenFileLimitTests(unittest.TestCase):
    def start(self, soft, hard):
        storage = tempfile.mkdtemp(prefix="campfire-test-")
        self.addCleanup(shutil.rmtree, storage, True)
        port = free_port()
        log_path = os.path.join(storage, "server.log")
        log = open(log_path, "wb")
        self.addCleanup(log.close)

        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "campfire.py"), "--host", "127.0.0.1", "--port", str(port)],
            env=dict(os.environ, CAMPFIRE_STORAGE_PATH=storage), stdout=log, stderr=log, preexec_fn=limit)

        def stop():
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.addCleanup(stop)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/up" % port, timeout=1):
                    return port, log_path
            except OSError:
                time.sleep(0.05)
        self.fail("the server did not start: " + open(log_path, errors="replace").read()[-2000:])

    def test_500_live_websockets_and_a_newcomer_under_ulimit_1024(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        needed = SOCKETS + 100  # this test process holds the client side of every socket
        if hard != resource.RLIM_INFINITY and hard < needed:
            self.skipTest("this process may open only %d files" % hard)
        if soft != resource.RLIM_INFINITY and soft < needed:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        port, _ = self.start(1024, 1024)
        cookie = first_run_cookie(port)
        clients = []
        try:
            for _ in range(SOCKETS):
                client = CableClient(port, cookie, origin="http://127.0.0.1:%d" % port)
                clients.append(client)
                self.assertEqual(client.status, 101, client.head)
            for client in clients[::50]:
                self.assertEqual(client.recv_json(), {"type": "welcome"})
            with urllib.request.urlopen("http://127.0.0.1:%d/up" % port, timeout=5) as response:
                self.assertEqual(response.status, 200)
        finally:
            for client in clients:
                client.close()

    def test_a_burst_of_newcomers_at_the_file_limit_is_one_log_line_and_the_server_recovers(self):
        # asyncio accepts a listening socket's whole backlog in one turn; at the limit it
        # logged a traceback for every accept() refused (thousands in a burst).
        port, log_path = self.start(256, 256)
        held = []
        try:
            for _ in range(BURST_HELD):   # past the cap: the server answers the last ones 503
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            burst = []
            for _ in range(BURST_NEWCOMERS):   # connected at once, queued in the backlog together
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
                burst.append(sock)
            held += burst
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "open-file limit" not in open(log_path, errors="replace").read():
                time.sleep(0.05)
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 20
        while True:   # asyncio listens again a second after a refused accept()
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/up" % port, timeout=2) as response:
                    self.assertEqual(response.status, 200)
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        text = open(log_path, errors="replace").read()
        self.assertEqual(text.count("socket.accept() out of system resource"), 0)
        self.assertEqual(text.count("Traceback"), 0)
        warnings = [line for line in text.splitlines() if "at the open-file limit" in line]
        self.assertTrue(1 <= len(warnings) <= 2, warnings)

    def test_the_soft_limit_is_raised_to_the_hard_one_and_said_so(self):
        _, log_path = self.start(1024, 4096)
        with open(log_path, errors="replace") as file:
            self.assertIn("raised the open-file limit from 1024 to 4096", file.read())


if __name__ == "__main__":
    unittest.main()
