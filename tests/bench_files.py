#!/usr/bin/env python3
"""Files through the real server: upload and download throughput beside a plain file copy.

`make bench` runs `python3 tests/bench_files.py`. Standard library only. It prints each
figure beside its ceiling measured in the same run, and exits 0 whatever they are,
except: 1 when campfire.py cannot be started or signed in to, 2 when a check failed
(an upload not answered 201, a stored checksum that is not the file's, a download
of the wrong length or bytes), 130 on Ctrl-C. Everything runs on 127.0.0.1, every
step is bounded in time, and the server is stopped at the end.

Setup
  A file of BENCH_FILE_MB MiB (default 256) of random bytes in a temporary folder,
  and `campfire.py serve --host 127.0.0.1` on a fresh storage beside it (the same
  file system) with CAMPFIRE_MAX_UPLOAD_BYTES raised to fit it; its first run makes
  the administrator, whose session cookie every request carries.

What it measures (each the median of ROUNDS)
  copy      the ceiling: the file copied into the storage folder by reading and
            writing COPY_CHUNK_BYTES at a time, then fsync (what an upload has to
            do at least: take the bytes and make them durable). Its fsync runs at
            the disk's speed of the moment, so each round's figure is printed too.
  MD5       the file's size hashed with hashlib's MD5 on one core, from memory:
            an upload must take its MD5 (Active Storage's checksum), and MD5
            can't be split across cores, so no upload can be faster than this.
  upload    POST /rooms/:id/messages, multipart with message[attachment] and a
            message[client_message_id], the body streamed from the file on one
            connection: from the first byte sent to the 201. The blob's stored MD5
            must be the file's.
  download  GET /messages/:id/attachment of that message: from the request to the
            last byte read. The length and the first and last MiB must be the file's.
  RSS       the server's VmRSS (/proc/<pid>/status) before the first round (after
            IDLE_SETTLE_SECONDS of quiet, so that the server has handed back what
            its start and the first sign-in's scrypt took),
            sampled every RSS_SAMPLE_SECONDS during each upload and download (the
            peak is printed), and VmHWM (the process's peak ever) at the end.
  Throughput is MB/s (10^6 bytes a second); "% copy" is the figure as a share of
  the copy's, and the target is at least half of it (the README's performance
  targets). RSS is in MB (kB / 1024)."""

import base64
import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"  # everything stays on the loopback interface
FILE_MB = int(os.environ.get("BENCH_FILE_MB", "256"))  # the file's size in MiB
ROUNDS = 3
COPY_CHUNK_BYTES = 1024 * 1024     # the plain copy's read and write size
SEND_CHUNK_BYTES = 1024 * 1024     # the client's writes of an upload body
RECV_CHUNK_BYTES = 1024 * 1024     # the client's reads of a download
CHECK_BYTES = 1024 * 1024          # the head and tail of a download compared with the file
RSS_SAMPLE_SECONDS = 0.02
IDLE_SETTLE_SECONDS = 6.0        # campfire.py gives memory back after IDLE_RELEASE_AFTER (5 s) of quiet
START_TIMEOUT_SECONDS = 20
TRANSFER_TIMEOUT_SECONDS = 600     # one upload or download, whatever the size
STOP_TIMEOUT_SECONDS = 15
TARGET_SHARE_OF_COPY = 0.5
PASSWORD = "bench-password"
EXIT_CAMPFIRE_DID_NOT_START, EXIT_CHECKS_FAILED = 1, 2


class CheckFailed(Exception):
    pass


def free_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def status_kb(pid, field):
    """A field of /proc/<pid>/status in kB (VmRSS, VmHWM), or None once the process is gone."""
    try:
        with open("/proc/%d/status" % pid) as file:
            for line in file:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler:
    """The peak VmRSS of a process while the with-block runs, sampled on a thread."""

    def __init__(self, pid):
        self.pid, self.peak_kb = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS") or 0)
            self._stop.wait(RSS_SAMPLE_SECONDS)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS") or 0)


def make_file(path, mib):
    """mib MiB of random bytes; its MD5 (base64, as Active Storage keeps it) and its head and tail."""
    digest = hashlib.md5()
    block = os.urandom(1024 * 1024)
    with open(path, "wb") as file:
        for number in range(mib):
            chunk = hashlib.sha256(b"%d" % number).digest() + block[32:]  # no two MiB alike
            digest.update(chunk)
            file.write(chunk)
    with open(path, "rb") as file:
        head = file.read(CHECK_BYTES)
        file.seek(-CHECK_BYTES, os.SEEK_END)
        tail = file.read(CHECK_BYTES)
    return base64.b64encode(digest.digest()).decode(), head, tail


def copy_seconds(source, target):
    """The ceiling: read and write the file COPY_CHUNK_BYTES at a time, then fsync."""
    started = time.perf_counter()
    with open(source, "rb", buffering=0) as reading, open(target, "wb", buffering=0) as writing:
        buffer = memoryview(bytearray(COPY_CHUNK_BYTES))
        while True:
            count = reading.readinto(buffer)
            if not count:
                break
            view = buffer[:count]
            while view:
                view = view[writing.write(view):]
        os.fsync(writing.fileno())
    elapsed = time.perf_counter() - started
    os.unlink(target)
    return elapsed


def read_head(sock):
    """(status, {lower-case name: value}, bytes after the head) of one response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise CheckFailed("the server closed the connection before answering")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, rest


class Campfire:
    def __init__(self, scratch, max_upload_bytes):
        self.storage = os.path.join(scratch, "storage")
        self.port = free_port()
        self.log = open(os.path.join(scratch, "server.log"), "ab")
        env = dict(os.environ, CAMPFIRE_STORAGE_PATH=self.storage, CAMPFIRE_MAX_UPLOAD_BYTES=str(max_upload_bytes),
                   LOG_LEVEL="WARNING", BACKUP_INTERVAL="0")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.process = subprocess.Popen([sys.executable, os.path.join(ROOT, "campfire.py"), "serve", "--host", HOST,
                                         "--port", str(self.port)], env=env, stdout=self.log, stderr=self.log,
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            try:
                connection = http.client.HTTPConnection(HOST, self.port, timeout=5)
                connection.request("GET", "/up")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("campfire.py did not start")
            time.sleep(0.05)
        connection = http.client.HTTPConnection(HOST, self.port, timeout=30)
        connection.request("POST", "/first_run", urllib.parse.urlencode({
            "user[name]": "Ada", "user[email_address]": "ada@example.com", "user[password]": PASSWORD}),
            {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "same-origin"})
        response = connection.getresponse()
        response.read()
        cookie = response.getheader("Set-Cookie") or ""
        if response.status != 303 or "session_token=" not in cookie:
            raise RuntimeError("the first run answered %d" % response.status)
        self.cookie = cookie.split(";", 1)[0]
        with sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(os.path.join(self.storage, "db",
                                                                                     "production.sqlite3")),
                             uri=True) as db:
            self.room_id = db.execute("SELECT id FROM rooms ORDER BY id LIMIT 1").fetchone()[0]
        db.close()

    @property
    def pid(self):
        return self.process.pid

    def connect(self):
        sock = socket.create_connection((HOST, self.port), timeout=TRANSFER_TIMEOUT_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def upload(self, path, size, client_message_id):
        """(seconds, message id): the file posted as a message's attachment."""
        boundary = "----CampfireBench%s" % os.urandom(8).hex()
        head = ("--%s\r\nContent-Disposition: form-data; name=\"message[client_message_id]\"\r\n\r\n%s\r\n"
                "--%s\r\nContent-Disposition: form-data; name=\"message[attachment]\"; filename=\"bench.bin\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n" % (boundary, client_message_id, boundary)).encode()
        tail = ("\r\n--%s--\r\n" % boundary).encode()
        request = ("POST /rooms/%d/messages HTTP/1.1\r\nHost: %s:%d\r\nCookie: %s\r\nSec-Fetch-Site: same-origin\r\n"
                   "Content-Type: multipart/form-data; boundary=%s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                   % (self.room_id, HOST, self.port, self.cookie, boundary, len(head) + size + len(tail))).encode()
        with self.connect() as sock, open(path, "rb", buffering=0) as file:
            started = time.perf_counter()
            sock.sendall(request + head)
            buffer = memoryview(bytearray(SEND_CHUNK_BYTES))
            while True:
                count = file.readinto(buffer)
                if not count:
                    break
                sock.sendall(buffer[:count])
            sock.sendall(tail)
            status, headers, _ = read_head(sock)
            elapsed = time.perf_counter() - started
        if status != 201:
            raise CheckFailed("the upload answered %d" % status)
        found = re.search(r"(\d+)$", headers.get("location", ""))
        if found is None:
            raise CheckFailed("the upload's 201 named no message (Location: %r)" % headers.get("location"))
        return elapsed, int(found.group(1))

    def stored_checksum(self, message_id):
        with sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(os.path.join(self.storage, "db",
                                                                                     "production.sqlite3")),
                             uri=True) as db:
            row = db.execute("SELECT active_storage_blobs.checksum FROM active_storage_attachments JOIN "
                             "active_storage_blobs ON active_storage_blobs.id = active_storage_attachments.blob_id "
                             "WHERE record_type = 'Message' AND record_id = ? AND name = 'attachment'",
                             (message_id,)).fetchone()
        db.close()
        return row[0] if row else None

    def download(self, message_id, size, head_bytes, tail_bytes):
        """Seconds to GET the attachment, checked against the file's length, head and tail."""
        with self.connect() as sock:
            started = time.perf_counter()
            sock.sendall(("GET /messages/%d/attachment HTTP/1.1\r\nHost: %s:%d\r\nCookie: %s\r\nConnection: close"
                          "\r\n\r\n" % (message_id, HOST, self.port, self.cookie)).encode())
            status, headers, rest = read_head(sock)
            if status != 200 or int(headers.get("content-length", -1)) != size:
                raise CheckFailed("the download answered %d with Content-Length %s" % (
                    status, headers.get("content-length")))
            received, head, tail = len(rest), bytearray(rest[:CHECK_BYTES]), bytearray(rest[-CHECK_BYTES:])
            buffer = memoryview(bytearray(RECV_CHUNK_BYTES))
            while received < size:
                count = sock.recv_into(buffer)
                if not count:
                    break
                received += count
                if len(head) < CHECK_BYTES:
                    head += buffer[:min(count, CHECK_BYTES - len(head))]
                if received > size - CHECK_BYTES:
                    tail = (tail + buffer[:count])[-CHECK_BYTES:]
            elapsed = time.perf_counter() - started
        if received != size or bytes(head) != head_bytes or bytes(tail) != tail_bytes:
            raise CheckFailed("the download was not the file (%d of %d bytes)" % (received, size))
        return elapsed

    def delete_message(self, message_id):
        connection = http.client.HTTPConnection(HOST, self.port, timeout=30)
        connection.request("POST", "/rooms/%d/messages/%d" % (self.room_id, message_id),
                           urllib.parse.urlencode({"_method": "delete"}),
                           {"Content-Type": "application/x-www-form-urlencoded", "Cookie": self.cookie,
                            "Sec-Fetch-Site": "same-origin"})
        connection.getresponse().read()
        connection.close()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def md5_seconds(size):
    """Seconds to hash size bytes with MD5 on this core, a MiB at a time from memory."""
    block = os.urandom(1024 * 1024)
    digest = hashlib.md5()
    started = time.perf_counter()
    for _ in range(size // len(block)):
        digest.update(block)
    return time.perf_counter() - started


def mb_per_second(size, seconds):
    return size / seconds / 1e6


def verdict(share):
    return "ok" if share >= TARGET_SHARE_OF_COPY else "MISS"


def main():
    size = FILE_MB * 1024 * 1024
    print("Files (a %d MiB file, medians of %d)" % (FILE_MB, ROUNDS))
    scratch = tempfile.mkdtemp(prefix="campfire-bench-files-")
    server = None
    try:
        source = os.path.join(scratch, "bench.bin")
        checksum, head_bytes, tail_bytes = make_file(source, FILE_MB)
        try:
            server = Campfire(scratch, size + 1024 * 1024)
        except (RuntimeError, OSError) as error:
            print("  campfire.py could not be started: %s" % error)
            return EXIT_CAMPFIRE_DID_NOT_START
        copies, uploads, downloads, upload_peaks, download_peaks = [], [], [], [], []
        time.sleep(IDLE_SETTLE_SECONDS)
        rss_before = status_kb(server.pid, "VmRSS")
        for number in range(ROUNDS):
            copies.append(copy_seconds(source, os.path.join(server.storage, "copy.bin")))
            with RssSampler(server.pid) as sampler:
                seconds, message_id = server.upload(source, size, "bench-files-%d-%d" % (os.getpid(), number))
            uploads.append(seconds)
            upload_peaks.append(sampler.peak_kb)
            if server.stored_checksum(message_id) != checksum:
                raise CheckFailed("the stored blob's MD5 is not the file's")
            with RssSampler(server.pid) as sampler:
                downloads.append(server.download(message_id, size, head_bytes, tail_bytes))
            download_peaks.append(sampler.peak_kb)
            server.delete_message(message_id)  # its file goes: the disk holds one copy at a time
        hwm = status_kb(server.pid, "VmHWM")
        copy = mb_per_second(size, statistics.median(copies))
        md5 = mb_per_second(size, statistics.median(md5_seconds(size) for _ in range(ROUNDS)))
        print("  %-44s %8.1f MB/s  (the ceiling; rounds: %s)" % (
            "plain file copy (read, write, fsync)", copy,
            ", ".join("%.0f" % mb_per_second(size, seconds) for seconds in copies)))
        print("  %-44s %8.1f MB/s  (what no upload can pass)" % ("MD5 on one core", md5))
        for name, seconds in (("upload: POST message[attachment], 201", uploads),
                              ("download: GET /messages/:id/attachment", downloads)):
            rate = mb_per_second(size, statistics.median(seconds))
            print("  %-44s %8.1f MB/s  %4.0f%% copy  target >= %.0f%%  %s%s" % (
                name, rate, 100 * rate / copy, 100 * TARGET_SHARE_OF_COPY, verdict(rate / copy),
                "  (%.0f%% of MD5)" % (100 * rate / md5) if name.startswith("upload") else ""))
        print("  server RSS: %.1f MB before; peak %.1f MB during the uploads, %.1f MB during the downloads; "
              "VmHWM %.1f MB" % (rss_before / 1024, max(upload_peaks) / 1024, max(download_peaks) / 1024,
                                 hwm / 1024))
        return 0
    except CheckFailed as error:
        print("  FAILED checks: %s" % error)
        return EXIT_CHECKS_FAILED
    except KeyboardInterrupt:
        return 130
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
