"""A storage low on free space: uploads refused with a 507 before their body is read,
administrators warned (the account page, /up?detail=1, /metrics), messages still
posted; and a file write the disk refuses (ENOSPC) answers 503 keeping everything
acknowledged before it. The threshold is raised past the real free space through
the configuration, so nothing fills a real disk."""

import errno
import json
import socket
import unittest
from unittest import mock

from tests.helpers import Client, LiveServer, campfire, config_value, first_run_cookie, recv_response, wait_until
from tests.test_attachments import AttachmentTestCase, image_bytes, multipart

BEYOND_ANY_DISK = 1 << 62  # bytes: more than any file system has free


class LowDiskTests(AttachmentTestCase):
    def low(self):
        return config_value(self.app.config, "min_free_disk_bytes", BEYOND_ANY_DISK)

    def post_text(self, body, client_id, client=None):
        return (client or self.client).post("/rooms/%d/messages" % self.room_id,
                                            {"message[body]": body, "message[client_message_id]": client_id})

    def test_an_upload_is_refused_with_507_and_a_clear_message_while_messages_still_post(self):
        with self.low():
            response = self.upload(image_bytes(40, 30))
            self.assertEqual(response.status, 507)
            self.assertIn("low on disk space", response.text)
            self.assert_nothing_kept()
            self.assertIsNone(self.app.db.value("SELECT id FROM messages WHERE client_message_id = 'upload-1'"))
            self.assertEqual(self.post_text("<div>words still fit</div>", "text-1").status, 201)
        response = self.upload(image_bytes(40, 30), client_id="upload-2")  # space again: accepted
        self.assertEqual(response.status, 201, response.text[:300])
        self.assertEqual(len(self.blobs()), 1)

    def test_a_bot_upload_is_refused_too(self):
        self.client.post("/account/bots", {"user[name]": "Helper", "user[webhook_url]": ""})
        row = self.app.db.one("SELECT id, bot_token FROM users WHERE role = 2")
        content_type, body = multipart([], [("attachment", "notes.txt", "text/plain", b"hello")])
        bot = Client(self.app)
        with self.low():
            response = bot.request("POST", "/rooms/%d/%d-%s/messages" % (self.room_id, row["id"], row["bot_token"]),
                                   body=body, content_type=content_type)
        self.assertEqual(response.status, 507)
        self.assert_nothing_kept()

    def test_administrators_are_warned_on_the_account_page_and_others_are_not(self):
        bea = self.join("Bea", "bea@example.com")
        self.assertNotIn('id="storage_low"', self.client.get("/account/edit").text)
        with self.low():
            page = self.client.get("/account/edit").text
            self.assertIn('id="storage_low"', page)
            self.assertIn("MIN_FREE_DISK_BYTES", page)
            self.assertNotIn('id="storage_low"', bea.get("/account/edit").text)

    def test_up_detail_and_metrics_report_it(self):
        detail = json.loads(self.client.get("/up?detail=1").text)
        self.assertFalse(detail["storage"]["low"])
        self.assertEqual(detail["storage"]["min_free_bytes"], campfire.MIN_FREE_DISK_BYTES)
        self.assertEqual(detail["status"], "ok")
        with self.low():
            detail = json.loads(self.client.get("/up?detail=1").text)
            self.assertTrue(detail["storage"]["low"])
            self.assertEqual(detail["status"], "failing")
            self.assertIn("campfire_storage_low 1\n", self.client.get("/metrics").text)
        self.assertEqual(self.client.get("/up").status, 200)  # the cheap check stays about the database

    def test_the_free_space_is_read_at_most_every_few_seconds(self):
        calls = []
        real = campfire.os.statvfs

        def counting(path):
            calls.append(path)
            return real(path)
        now = [1000.0]
        self.app.disk.clock = lambda: now[0]
        self.app.disk.checked_at = None
        with mock.patch.object(campfire.os, "statvfs", counting):
            for _ in range(5):
                self.app.storage_summary()
            self.assertEqual(len(calls), 1)
            now[0] += campfire.DISK_CHECK_SECONDS
            self.app.storage_summary()
            self.assertEqual(len(calls), 2)

    def test_a_file_write_the_disk_refuses_answers_503_and_keeps_what_was_acknowledged(self):
        self.assertEqual(self.post_text("<div>acknowledged before</div>", "before").status, 201)
        self.assertEqual(self.upload(image_bytes(20, 20), client_id="kept-upload").status, 201)

        def full(descriptor, data, digest):
            raise OSError(errno.ENOSPC, "No space left on device")
        with mock.patch.object(campfire.FileStore, "write", staticmethod(full)):
            response = self.upload(image_bytes(40, 30), client_id="refused")
        self.assertEqual(response.status, 503)
        self.assertIn("could not be saved", response.text)
        self.assertIsNone(self.app.db.value("SELECT id FROM messages WHERE client_message_id = 'refused'"))
        self.assertIsNotNone(self.app.db.value("SELECT id FROM messages WHERE client_message_id = 'before'"))
        self.assertEqual([blob["filename"] for blob in self.blobs()], ["photo.png"])
        self.assertEqual(self.temp_files(), [])
        self.assertEqual(self.upload(image_bytes(40, 30), client_id="after").status, 201)  # and it works again

    def test_min_free_disk_bytes_is_read_from_the_environment_and_checked(self):
        self.assertEqual(campfire.Config.from_environment({"MIN_FREE_DISK_BYTES": "1048576"}).min_free_disk_bytes,
                         1048576)
        self.assertEqual(campfire.Config.from_environment({}).min_free_disk_bytes, campfire.MIN_FREE_DISK_BYTES)
        with self.assertRaisesRegex(campfire.ConfigError, "MIN_FREE_DISK_BYTES must be a number of bytes"):
            campfire.Config.from_environment({"MIN_FREE_DISK_BYTES": "300MB"})


class LiveLowDiskTests(unittest.TestCase):
    """Over a real socket: the 507 comes before the body, so a client that waits for
    100 Continue sends none of it."""

    def setUp(self):
        self.live = LiveServer(min_free_disk_bytes=BEYOND_ANY_DISK)
        self.addCleanup(self.live.stop)
        self.token = first_run_cookie(self.live.port)
        self.room_id = self.live.call(lambda: self.live.app.db.value("SELECT id FROM rooms"))

    def test_the_refusal_comes_before_the_body_is_sent(self):
        sock = socket.create_connection(("127.0.0.1", self.live.port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(("POST /rooms/%d/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: session_token=%s\r\n"
                      "Sec-Fetch-Site: same-origin\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
                      "Expect: 100-continue\r\nContent-Length: %d\r\n\r\n"
                      % (self.room_id, self.token, 50 * 1024 * 1024)).encode())
        status, headers, body = recv_response(sock, timeout=10)
        self.assertEqual(status, 507)
        self.assertEqual(headers.get("connection"), "close")
        self.assertIn(b"low on disk space", body)
        self.assertEqual(self.live.call(lambda: self.live.app.db.value("SELECT count(*) FROM messages")), 0)

    def test_the_server_logs_when_space_runs_low_and_when_it_returns(self):
        with self.assertLogs("campfire", "INFO") as logged:
            wait_until(lambda: any("low on disk space" in line for line in logged.output),
                       timeout=campfire.DISK_CHECK_SECONDS * 4, message="no warning was logged")
            self.live.app.config.min_free_disk_bytes = 0
            wait_until(lambda: any("disk space again" in line for line in logged.output),
                       timeout=campfire.DISK_CHECK_SECONDS * 4, message="the return of space was not logged")
        self.assertTrue(any(line.startswith("WARNING:campfire:the storage is low") for line in logged.output))


if __name__ == "__main__":
    unittest.main()
