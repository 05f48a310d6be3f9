"""Attachments: a file posted to a room (the composer's message[attachment]) or by a
bot (attachment) becomes a message holding an Active Storage blob; its bytes are
served to the room's members with ETag, byte ranges and a sandbox, and go when the
message goes. Bodies are encoded by werkzeug (an independent multipart writer);
images are written by Pillow."""

import base64
import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import types
import unittest
import urllib.parse
from unittest import mock

from PIL import Image
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from tests.helpers import (AppTestCase, CableClient, Client, LiveServer, _session_cookie, avatar_initials, campfire,
                           first_run_cookie, make_app, recv_response)


def image_bytes(width, height, kind="PNG"):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 40)).save(buffer, kind)
    return buffer.getvalue()


def multipart(fields=(), files=()):
    """(content type, body): fields [(name, value)], files [(name, filename, content type, bytes)]."""
    if any(not data for _, _, _, data in files) or any(not value for _, value in fields):
        return hand_written_multipart(fields, files)
    values = MultiDict(list(fields))
    for name, filename, content_type, data in files:
        values.add(name, FileStorage(io.BytesIO(data), filename=filename, content_type=content_type))
    boundary, body = encode_multipart(values, boundary="----WerkzeugFormPart_%s" % os.urandom(8).hex())
    return "multipart/form-data; boundary=%s" % boundary, body


def hand_written_multipart(fields, files, boundary="----formdata-campfire-test"):
    """RFC 7578 by hand, for what werkzeug writes wrongly: an empty field or file (it leaves out
    the CRLF before the next delimiter, which RFC 2046 §5.1.1 requires)."""
    parts = [b'Content-Disposition: form-data; name="%s"\r\n\r\n%s' % (name.encode(), value.encode())
             for name, value in fields]
    parts += [b'Content-Disposition: form-data; name="%s"; filename="%s"\r\nContent-Type: %s\r\n\r\n%s'
              % (name.encode(), filename.encode(), content_type.encode(), data)
              for name, filename, content_type, data in files]
    delimiter = b"--" + boundary.encode()
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts) + delimiter + b"--\r\n"
    return "multipart/form-data; boundary=%s" % boundary, body


def body_of(response):
    """A response's bytes: a file response's read from its file (and the file closed)."""
    if response.file is None:
        return response.body
    try:
        return response.file.read_all()
    finally:
        response.file.file.close()


class AttachmentTestCase(AppTestCase):
    def setUp(self):
        super().setUp()
        self.first_run()
        self.room_id = self.app.store.rooms_for(1)[0]["id"]

    def upload(self, data, filename="photo.png", content_type="image/png", client_id="upload-1", client=None,
               room_id=None, field="message[attachment]"):
        content_type_header, body = multipart([("message[client_message_id]", client_id)],
                                              [(field, filename, content_type, data)])
        return (client or self.client).post("/rooms/%d/messages" % (room_id or self.room_id), body=body,
                                            content_type=content_type_header)

    def blobs(self):
        self.app.settle_file_work()
        return self.app.db.all("SELECT * FROM active_storage_blobs ORDER BY id")

    def temp_files(self):
        return os.listdir(self.app.files.temp_root) if os.path.isdir(self.app.files.temp_root) else []

    def assert_nothing_kept(self):
        self.assertEqual([dict(row) for row in self.blobs()], [])
        self.assertEqual(self.app.db.value("SELECT count(*) FROM active_storage_attachments"), 0)
        self.assertEqual(self.temp_files(), [])


class UploadTests(AttachmentTestCase):
    def test_an_uploaded_image_is_a_blob_in_active_storage_layout_and_shows_with_its_size(self):
        data = image_bytes(300, 200)
        response = self.upload(data)
        self.assertEqual(response.status, 201, response.text[:300])
        [blob] = self.blobs()
        self.assertRegex(blob["key"], r"\A[0-9a-z]{28}\Z")
        self.assertEqual(blob["filename"], "photo.png")
        self.assertEqual(blob["content_type"], "image/png")
        self.assertEqual(blob["service_name"], "local")
        self.assertEqual(blob["byte_size"], len(data))
        self.assertEqual(blob["checksum"], base64.b64encode(hashlib.md5(data).digest()).decode())
        self.assertEqual(json.loads(blob["metadata"]),
                         {"identified": True, "width": 300, "height": 200, "analyzed": True})
        attachment = self.app.db.one("SELECT * FROM active_storage_attachments")
        self.assertEqual((attachment["name"], attachment["record_type"], attachment["blob_id"]),
                         ("attachment", "Message", blob["id"]))
        key = blob["key"]
        path = os.path.join(self.storage, "files", key[:2], key[2:4], key)
        with open(path, "rb") as file:
            self.assertEqual(file.read(), data)
        self.assertEqual(self.temp_files(), [])
        message_id = attachment["record_id"]
        self.assertIn('<img class="attachment__image" src="/messages/%d/attachment" alt="photo.png" width="300" '
                      'height="200"' % message_id, response.text)
        room = self.client.get("/rooms/%d" % self.room_id).text
        self.assertIn('src="/messages/%d/attachment"' % message_id, room)

    def test_a_large_image_shows_at_most_1200_by_800_with_its_proportions(self):
        response = self.upload(image_bytes(2400, 1000))
        self.assertIn('width="1200" height="500"', response.text)
        response = self.upload(image_bytes(1000, 2000), client_id="tall")
        self.assertIn('width="400" height="800"', response.text)

    def test_the_browsers_preview_is_shown_in_place_of_a_large_image_and_goes_with_it(self):
        original, preview = image_bytes(2400, 1600, "JPEG"), image_bytes(1200, 800, "WEBP")
        content_type, body = multipart([("message[client_message_id]", "p")], [
            ("message[attachment]", "big.jpg", "image/jpeg", original),
            ("message[preview]", "preview.webp", "image/webp", preview)])
        response = self.client.post("/rooms/%d/messages" % self.room_id, body=body, content_type=content_type)
        self.assertEqual(response.status, 201)
        message_id = self.app.db.value("SELECT record_id FROM active_storage_attachments WHERE name = 'attachment'")
        self.assertIn('<img class="attachment__image" src="/messages/%d/attachment/preview" alt="big.jpg" width="1200" '
                      'height="800"' % message_id, response.text)
        self.assertIn('href="/messages/%d/attachment"' % message_id, response.text)  # the viewer opens the original
        self.assertEqual(body_of(self.client.get("/messages/%d/attachment/preview" % message_id)), preview)
        self.assertEqual(body_of(self.client.get("/messages/%d/attachment" % message_id)), original)
        self.assertEqual(len(self.blobs()), 2)
        self.client.post("/rooms/%d/messages/%d" % (self.room_id, message_id), {"_method": "delete"})
        self.assert_nothing_kept()

    def test_a_preview_that_is_too_large_or_not_an_image_is_dropped(self):
        for index, (name, data) in enumerate((("huge.png", image_bytes(1300, 100)), ("text.png", b"not an image"))):
            content_type, body = multipart([("message[client_message_id]", "drop%d" % index)], [
                ("message[attachment]", "photo.png", "image/png", image_bytes(1500, 1000)),
                ("message[preview]", name, "image/png", data)])
            response = self.client.post("/rooms/%d/messages" % self.room_id, body=body, content_type=content_type)
            self.assertEqual(response.status, 201)
            self.assertNotIn("/attachment/preview", response.text)
            self.assertIn('width="1200" height="800"', response.text)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM active_storage_attachments WHERE name = 'preview'"), 0)
        self.assertEqual(len(self.blobs()), 2)
        self.assertEqual(self.temp_files(), [])

    def test_a_retry_with_the_same_client_message_id_keeps_one_message_and_one_blob(self):
        data = image_bytes(10, 10)
        first = self.upload(data, client_id="same")
        second = self.upload(data, client_id="same")
        self.assertEqual((first.status, second.status), (201, 200))
        self.assertEqual(len(self.blobs()), 1)
        self.assertEqual(self.app.db.value("SELECT count(*) FROM messages"), 1)
        self.assertEqual(self.temp_files(), [])

    def test_other_files_are_cards_with_name_size_and_download(self):
        response = self.upload(b"%PDF-1.4\n" + b"x" * 2000, filename="report.pdf", content_type="application/pdf")
        self.assertEqual(response.status, 201)
        message_id = self.app.db.value("SELECT record_id FROM active_storage_attachments")
        self.assertIn("attachment--file", response.text)
        self.assertIn(">report.pdf</a>", response.text)
        self.assertIn("2 KB", response.text)
        self.assertIn('href="/messages/%d/attachment/download" download' % message_id, response.text)

    def test_video_is_shown_with_controls(self):
        response = self.upload(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100, filename="clip.mp4",
                               content_type="video/mp4")
        self.assertIn('<video class="attachment__video" src="/messages/', response.text)
        self.assertIn("controls", response.text)

    def test_an_empty_file_is_422_and_nothing_is_kept(self):
        response = self.upload(b"", filename="empty.txt", content_type="text/plain")
        self.assertEqual(response.status, 422)
        self.assertIn("empty", response.text)
        self.assert_nothing_kept()

    def test_an_image_whose_header_lies_is_422_and_nothing_is_kept(self):
        data = bytearray(image_bytes(20, 20))
        data[16:24] = b"\x00\x00\x00\x00\x00\x00\x00\x00"  # width and height 0, CRC now wrong
        response = self.upload(bytes(data))
        self.assertEqual(response.status, 422)
        self.assert_nothing_kept()

    def test_a_file_declared_as_an_image_that_is_not_one_downloads_as_octet_stream(self):
        response = self.upload(b"<html><script>alert(1)</script>", filename="fake.png", content_type="image/png")
        self.assertEqual(response.status, 201)
        [blob] = self.blobs()
        self.assertEqual(blob["content_type"], "application/octet-stream")
        self.assertNotIn("attachment__image", response.text)

    def test_a_file_name_loses_its_path_and_control_characters(self):
        self.upload(b"hello", filename="../../etc/pass\u202ewd.txt", content_type="text/plain")
        [blob] = self.blobs()
        self.assertEqual(blob["filename"], "passwd.txt")

    def test_a_truncated_body_or_a_wrong_boundary_is_400_and_nothing_is_kept(self):
        content_type, body = multipart([("message[client_message_id]", "cut")],
                                       [("message[attachment]", "a.bin", "application/octet-stream", b"x" * 5000)])
        response = self.client.post("/rooms/%d/messages" % self.room_id, body=body[:3000], content_type=content_type)
        self.assertEqual(response.status, 400)
        self.assert_nothing_kept()
        response = self.client.post("/rooms/%d/messages" % self.room_id, body=body,
                                    content_type="multipart/form-data; boundary=not-the-one")
        self.assertEqual(response.status, 400)
        self.assert_nothing_kept()

    def test_a_file_over_the_limit_is_413_and_nothing_is_kept(self):
        self.app.config.max_upload_bytes = 1000
        response = self.upload(b"x" * 1001, filename="big.bin", content_type="application/octet-stream")
        self.assertEqual(response.status, 413)
        self.assertIn("1000 bytes", response.text)
        self.assert_nothing_kept()

    def test_a_form_without_a_file_posts_its_text(self):
        content_type, body = multipart([("message[body]", "plain words"), ("message[client_message_id]", "t")])
        response = self.client.post("/rooms/%d/messages" % self.room_id, body=body, content_type=content_type)
        self.assertEqual(response.status, 201)
        self.assertIn("plain words", response.text)
        self.assertEqual(self.blobs(), [])

    def test_search_finds_an_attachment_by_its_file_name(self):
        self.upload(b"quarterly numbers", filename="budget-forecast.xlsx", content_type="application/vnd.ms-excel")
        results = self.client.get("/searches?q=forecast").text
        self.assertIn("budget-forecast.xlsx", results)

    def test_a_file_message_is_deleted_never_edited(self):
        self.upload(b"v1", filename="draft.txt", content_type="text/plain")
        message_id = self.app.db.value("SELECT record_id FROM active_storage_attachments")
        response = self.client.post("/rooms/%d/messages/%d" % (self.room_id, message_id),
                                    {"_method": "patch", "message[body]": "rewritten"})
        self.assertEqual(response.status, 403)
        self.assertIn("draft.txt", self.client.get("/rooms/%d" % self.room_id).text)

    def test_deleting_the_message_deletes_its_blob_and_file(self):
        self.upload(image_bytes(5, 5))
        [blob] = self.blobs()
        message_id = self.app.db.value("SELECT record_id FROM active_storage_attachments")
        path = self.app.files.path(blob["key"])
        self.assertTrue(os.path.exists(path))
        response = self.client.post("/rooms/%d/messages/%d" % (self.room_id, message_id), {"_method": "delete"})
        self.assertEqual(response.status, 204)
        self.app.settle_file_work()
        self.assert_nothing_kept()
        self.assertFalse(os.path.exists(path))

    def test_deleting_the_room_deletes_its_files(self):
        self.upload(image_bytes(5, 5))
        [blob] = self.blobs()
        self.app.store.remove_room(self.app.store.room(self.room_id))
        self.app.settle_file_work()
        self.assert_nothing_kept()
        self.assertFalse(os.path.exists(self.app.files.path(blob["key"])))

    def test_a_failed_transaction_keeps_no_file(self):
        original = self.app.store.create_message

        def failing(*args, **kwargs):
            original(*args, **kwargs)
            raise sqlite3.OperationalError("disk I/O error")
        self.app.store.create_message = failing
        response = self.upload(image_bytes(5, 5))
        self.assertEqual(response.status, 500)
        self.assert_nothing_kept()
        self.assertEqual([name for name in os.listdir(self.app.files.root) if name != "tmp"], [])


class ServingTests(AttachmentTestCase):
    def setUp(self):
        super().setUp()
        self.data = image_bytes(40, 30)
        self.upload(self.data)
        self.message_id = self.app.db.value("SELECT record_id FROM active_storage_attachments")
        self.url = "/messages/%d/attachment" % self.message_id

    def test_members_get_the_bytes_with_safe_headers(self):
        response = self.client.get(self.url)
        self.assertEqual(response.status, 200)
        self.assertEqual(body_of(response), self.data)
        self.assertEqual(response.header("Content-Type"), "image/png")
        self.assertEqual(response.header("X-Content-Type-Options"), "nosniff")
        self.assertEqual(response.header("Content-Security-Policy"), "sandbox")
        self.assertEqual(response.header("Accept-Ranges"), "bytes")
        self.assertTrue(response.header("Cache-Control").startswith("private"))
        self.assertEqual(response.header("Content-Disposition"), 'inline; filename="photo.png"')
        etag = response.header("ETag")
        again = self.client.get(self.url, headers={"If-None-Match": etag})
        self.assertEqual(again.status, 304)

    def test_a_download_is_an_attachment_with_the_original_name(self):
        response = self.client.get(self.url + "/download")
        self.assertEqual(response.header("Content-Disposition"), 'attachment; filename="photo.png"')
        body_of(response)

    def test_a_non_member_gets_404(self):
        room = self.app.store.create_room("Secret", campfire.ROOM_CLOSED, 1, [1])
        self.upload(b"secret plans", filename="plans.txt", content_type="text/plain", client_id="s", room_id=room.id
                    if hasattr(room, "id") else room)
        secret_id = self.app.db.value("SELECT max(record_id) FROM active_storage_attachments")
        outsider = self.join("Eve", "eve@example.com")
        self.assertEqual(outsider.get("/messages/%d/attachment" % secret_id).status, 404)
        self.assertEqual(outsider.get("/messages/%d/attachment/download" % secret_id).status, 404)
        self.assertEqual(outsider.get("/messages/999/attachment").status, 404)
        anonymous = Client(self.app)
        self.assertEqual(anonymous.get(self.url).status, 302)

    def test_ranges_are_206_with_content_range(self):
        response = self.client.get(self.url, headers={"Range": "bytes=10-19"})
        self.assertEqual(response.status, 206)
        self.assertEqual(response.header("Content-Range"), "bytes 10-19/%d" % len(self.data))
        self.assertEqual(body_of(response), self.data[10:20])
        response = self.client.get(self.url, headers={"Range": "bytes=-5"})
        self.assertEqual(body_of(response), self.data[-5:])
        stale = self.client.get(self.url, headers={"Range": "bytes=0-0", "If-Range": '"another"'})
        self.assertEqual(stale.status, 200)
        self.assertEqual(body_of(stale), self.data)
        beyond = self.client.get(self.url, headers={"Range": "bytes=%d-" % (len(self.data) + 5)})
        self.assertEqual(beyond.status, 416)
        self.assertEqual(beyond.header("Content-Range"), "bytes */%d" % len(self.data))

    def test_html_and_svg_uploads_download_and_never_render_as_our_pages(self):
        for index, (name, content_type, data) in enumerate((
                ("page.html", "text/html", b"<script>parent.pwned=1</script>"),
                ("drawing.svg", "image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'))):
            self.upload(data, filename=name, content_type=content_type, client_id="x%d" % index)
            message_id = self.app.db.value("SELECT max(record_id) FROM active_storage_attachments")
            response = self.client.get("/messages/%d/attachment" % message_id)
            self.assertEqual(response.header("Content-Type"), "application/octet-stream")
            self.assertTrue(response.header("Content-Disposition").startswith("attachment;"))
            self.assertEqual(response.header("Content-Security-Policy"), "sandbox")
            self.assertEqual(body_of(response), data)


class BotAttachmentTests(AttachmentTestCase):
    def test_a_bot_posts_a_file_as_attachment(self):
        bot_id = self.app.store.create_bot("Reporter", "")
        key = campfire.bot_key(self.app.store.active_bot(bot_id))
        content_type, body = multipart(files=[("attachment", "chart.png", "image/png", image_bytes(8, 8))])
        response = Client(self.app).post("/rooms/%d/%s/messages" % (self.room_id, key), body=body,
                                         content_type=content_type)
        self.assertEqual(response.status, 201, response.text)
        message_id = int(response.header("Location").rsplit("/", 1)[1])
        self.assertEqual(self.app.store.message(message_id)["creator_id"], bot_id)
        self.assertEqual(self.app.store.attachment("Message", message_id, "attachment").filename, "chart.png")
        self.assertIn("chart.png", self.client.get("/rooms/%d" % self.room_id).text)

    def test_the_bot_api_shows_a_file_message_by_its_name(self):
        bot_id = self.app.store.create_bot("Reader", "")
        key = campfire.bot_key(self.app.store.active_bot(bot_id))
        self.upload(b"a,b\n1,2\n", filename="numbers.csv", content_type="text/csv")
        response = Client(self.app).get("/rooms/%d/%s/messages" % (self.room_id, key))
        [message] = json.loads(response.body)
        self.assertEqual(message["body"], {"plain_text": "numbers.csv", "html": ""})

    def test_a_bot_posting_an_empty_file_gets_a_bare_422(self):
        bot_id = self.app.store.create_bot("Reporter", "")
        key = campfire.bot_key(self.app.store.active_bot(bot_id))
        content_type, body = multipart(files=[("attachment", "none.txt", "text/plain", b"")])
        response = Client(self.app).post("/rooms/%d/%s/messages" % (self.room_id, key), body=body,
                                         content_type=content_type)
        self.assertEqual((response.status, response.body, response.content_type), (422, b"", "application/json"))
        self.assert_nothing_kept()


class RailsStorageTests(AppTestCase):
    """A storage Once Campfire wrote: blob, attachment and variant rows as Rails inserts
    them, the files where its Disk service put them."""

    def test_a_rails_attachment_and_its_thumbnail_show_and_download(self):
        self.first_run()
        app, db = self.app, self.app.db
        room_id = app.store.rooms_for(1)[0]["id"]
        original, thumbnail = image_bytes(2000, 1000, "JPEG"), image_bytes(1200, 600, "JPEG")
        stamp = "2025-01-02 03:04:05.678901"
        with db.atomic():
            message_id = db.execute("INSERT INTO messages (room_id, creator_id, client_message_id, created_at, "
                                    "updated_at) VALUES (?, 1, 'rails', ?, ?)", (room_id, stamp, stamp)).lastrowid
            rows = []
            for key, data, name in (("a1b2c3d4e5f6g7h8i9j0k1l2m3n4", original, "holiday.jpg"),
                                    ("z9y8x7w6v5u4t3s2r1q0p9o8n7m6", thumbnail, "holiday.jpg")):
                metadata = json.dumps({"identified": True, "width": 2000 if data is original else 1200,
                                       "height": 1000 if data is original else 600, "analyzed": True})
                rows.append(db.execute(
                    "INSERT INTO active_storage_blobs (key, filename, content_type, metadata, service_name, "
                    "byte_size, checksum, created_at) VALUES (?, ?, 'image/jpeg', ?, 'local', ?, ?, ?)",
                    (key, name, metadata, len(data), base64.b64encode(hashlib.md5(data).digest()).decode(),
                     stamp)).lastrowid)
                folder = os.path.join(self.storage, "files", key[:2], key[2:4])
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, key), "wb") as file:
                    file.write(data)
            db.execute("INSERT INTO active_storage_attachments (name, record_type, record_id, blob_id, created_at) "
                       "VALUES ('attachment', 'Message', ?, ?, ?)", (message_id, rows[0], stamp))
            variant_id = db.execute("INSERT INTO active_storage_variant_records (blob_id, variation_digest) "
                                    "VALUES (?, 'digest')", (rows[0],)).lastrowid
            db.execute("INSERT INTO active_storage_attachments (name, record_type, record_id, blob_id, created_at) "
                       "VALUES ('image', 'ActiveStorage::VariantRecord', ?, ?, ?)", (variant_id, rows[1], stamp))
        app.forget_cached()
        page = self.client.get("/rooms/%d" % room_id).text
        self.assertIn('src="/messages/%d/attachment/preview" alt="holiday.jpg" width="1200" height="600"' % message_id,
                      page)
        self.assertEqual(body_of(self.client.get("/messages/%d/attachment/preview" % message_id)), thumbnail)
        self.assertEqual(body_of(self.client.get("/messages/%d/attachment" % message_id)), original)
        # Deleting it removes the variant and both files, as Rails' purge would.
        self.client.post("/rooms/%d/messages/%d" % (room_id, message_id), {"_method": "delete"})
        app.settle_file_work()
        self.assertEqual(db.value("SELECT count(*) FROM active_storage_blobs"), 0)
        self.assertEqual(db.value("SELECT count(*) FROM active_storage_variant_records"), 0)
        self.assertFalse(os.path.exists(os.path.join(self.storage, "files", "a1", "b2", "a1b2c3d4e5f6g7h8i9j0k1l2m3n4")))
        self.assertFalse(os.path.exists(os.path.join(self.storage, "files", "z9", "y8", "z9y8x7w6v5u4t3s2r1q0p9o8n7m6")))


class SweepTests(unittest.TestCase):
    def test_start_moves_committed_uploads_into_place_and_deletes_unfinished_ones(self):
        app = make_app()
        storage = app.config.storage_path
        try:
            client = Client(app)
            AppTestCase.first_run(self, client)
            room_id = app.store.rooms_for(1)[0]["id"]
            content_type, body = multipart(files=[("message[attachment]", "a.txt", "text/plain", b"kept")])
            client.post("/rooms/%d/messages" % room_id, body=body, content_type=content_type)
            key = app.db.value("SELECT key FROM active_storage_blobs")
            app.settle_file_work()
            os.makedirs(app.files.temp_root, exist_ok=True)
            os.replace(app.files.path(key), app.files.temp_path(key))  # a crash between the commit and the move
            with open(app.files.temp_path("q" * 28), "wb") as file:    # an upload a crash cut short
                file.write(b"partial")
        finally:
            app.close()
        with self.assertLogs("campfire", "WARNING") as logs:
            app = make_app(storage)
            app.settle_files()  # what Server.start does first
        try:
            self.assertEqual(os.listdir(app.files.temp_root), [])
            with open(app.files.path(key), "rb") as file:
                self.assertEqual(file.read(), b"kept")
            self.assertIn("1 committed moved into place, 1 unfinished deleted", "\n".join(logs.output))
        finally:
            app.close()

    def test_start_removes_what_a_crash_left_and_keeps_what_rails_references(self):
        app = make_app()
        storage, root = app.config.storage_path, app.files.root
        try:
            client = Client(app)
            AppTestCase.first_run(self, client)
            room_id = app.store.rooms_for(1)[0]["id"]
            content_type, body = multipart(files=[("message[attachment]", "a.txt", "text/plain", b"kept")])
            client.post("/rooms/%d/messages" % room_id, body=body, content_type=content_type)
            kept_key = app.db.value("SELECT key FROM active_storage_blobs")
            app.settle_file_work()
        finally:
            app.close()
        old, recent = "2025-01-02 03:04:05.000000", campfire.utc_now_text(time.time() - 3600)

        def place(key, data=b"bytes", folder=None):
            path = os.path.join(folder or os.path.join(root, key[:2], key[2:4]), key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as file:
                file.write(data)
            return path
        # A deletion cut short after its commit: the file stays, no row names it.
        deleted_blob_file = place("d" * 28)
        # Not files of ours to judge: Rails' legacy variant tree, a name that is no key, a key in
        # another key's folders, a temporary file's name in a key folder.
        legacy_variant = place("digest", folder=os.path.join(root, "va", "ri", "variants", "k" * 28))
        not_a_key = place("README", folder=os.path.join(root, "ab", "cd"))
        misplaced = place("e" * 28, folder=os.path.join(root, "ab", "cd"))
        with sqlite3.connect(app.config.resolved_database_path) as db:
            def blob(key, created_at):
                place(key)
                return db.execute("INSERT INTO active_storage_blobs (key, filename, content_type, metadata, "
                                  "service_name, byte_size, checksum, created_at) VALUES (?, 'f.png', 'image/png', "
                                  "'{}', 'local', 5, '', ?)", (key, created_at)).lastrowid
            blob("u" * 28, old)                         # attached to nothing for days: garbage
            blob("r" * 28, recent)                      # attached to nothing yet (a direct upload): kept
            source = blob("s" * 28, old)                # a variant record is made from it: kept
            variant = blob("v" * 28, old)               # a variant's image, attached to its record: kept
            preview = blob("p" * 28, old)               # a PDF's preview image, attached to its blob: kept
            record = db.execute("INSERT INTO active_storage_variant_records (blob_id, variation_digest) "
                                "VALUES (?, 'digest')", (source,)).lastrowid
            for name, record_type, record_id, blob_id in (("image", "ActiveStorage::VariantRecord", record, variant),
                                                           ("preview_image", "ActiveStorage::Blob", source, preview)):
                db.execute("INSERT INTO active_storage_attachments (name, record_type, record_id, blob_id, "
                           "created_at) VALUES (?, ?, ?, ?, ?)", (name, record_type, record_id, blob_id, old))
        db.close()
        with self.assertLogs("campfire", "WARNING") as logs:
            app = make_app(storage)
            app.settle_files()  # what Server.start does first
            app.settle_file_work()
        try:
            keys = {row[0] for row in app.db.all("SELECT key FROM active_storage_blobs")}
            self.assertEqual(keys, {kept_key, "r" * 28, "s" * 28, "v" * 28, "p" * 28})
            for key in keys:
                self.assertTrue(os.path.exists(app.files.path(key)), key)
            for path in (legacy_variant, not_a_key, misplaced):
                self.assertTrue(os.path.exists(path), path)
            self.assertFalse(os.path.exists(deleted_blob_file))
            self.assertFalse(os.path.exists(app.files.path("u" * 28)))
            output = "\n".join(logs.output)
            self.assertIn("removed 1 blobs attached to nothing for over 2 days: " + "u" * 28, output)
            self.assertIn("removed 1 files no blob names (deletions a stop cut short): " + "d" * 28, output)
            with open(app.files.path(kept_key), "rb") as file:
                self.assertEqual(file.read(), b"kept")
        finally:
            app.close()


if __name__ == "__main__":
    unittest.main()


class TlsDownloadTests(unittest.TestCase):
    """Over TLS sendfile(2) can't write the socket: the file is read in worker threads, a
    chunk ahead, while the event loop goes on answering."""

    FILE_BYTES = 6 * 1024 * 1024
    SLOW_READ_BYTES = 64 * 1024       # the client reads this much at a time, pausing between
    SLOW_READ_PAUSE_SECONDS = 0.004
    UP_DEADLINE_SECONDS = 5.0         # for any one /up answer during the download

    @classmethod
    def setUpClass(cls):
        import ssl
        from tests.test_push import make_test_ca
        cls.scratch = tempfile.mkdtemp(prefix="campfire-tls-")
        cls.addClassCleanup(shutil.rmtree, cls.scratch, True)
        paths = make_test_ca(cls.scratch)
        cls.server = LiveServer(tls=campfire.TlsCertificate(paths["cert.pem"], paths["key.pem"]),
                                max_upload_bytes=16 * 1024 * 1024)
        cls.addClassCleanup(cls.server.stop)
        cls.client_context = ssl.create_default_context(cafile=paths["ca.pem"])

    def connect(self):
        import http.client
        return http.client.HTTPSConnection("127.0.0.1", self.server.port, timeout=30, context=self.client_context)

    def tls_socket(self):
        return self.client_context.wrap_socket(self.server.connect(timeout=30), server_hostname="127.0.0.1")

    def test_a_tls_download_is_byte_exact_read_off_the_loop_and_the_loop_keeps_answering(self):
        import threading
        from unittest import mock
        connection = self.connect()
        connection.request("POST", "/first_run", urllib.parse.urlencode({
            "user[name]": "Ada", "user[email_address]": "ada@example.com", "user[password]": "secret-password"}),
            {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "same-origin"})
        response = connection.getresponse()
        response.read()
        cookie = response.getheader("Set-Cookie").split(";", 1)[0]
        room_id = self.server.call(lambda: self.server.app.store.rooms_for(1)[0]["id"])
        data = os.urandom(self.FILE_BYTES)
        content_type, body = multipart([("message[client_message_id]", "tls-1")],
                                       [("message[attachment]", "noise.bin", "application/octet-stream", data)])
        connection.request("POST", "/rooms/%d/messages" % room_id, body, {
            "Content-Type": content_type, "Cookie": cookie, "Sec-Fetch-Site": "same-origin"})
        response = connection.getresponse()
        response.read()
        self.assertEqual(response.status, 201)
        message_id = int(re.search(r"@(\d+)$", response.getheader("Location")).group(1))
        connection.close()
        self.server.app.settle_file_work()

        loop_thread = self.server.thread
        reads = []
        real_pread = os.pread

        def recording_pread(descriptor, size, offset):
            reads.append((threading.current_thread(), size))
            return real_pread(descriptor, size, offset)
        up_times, stop = [], threading.Event()

        def poll_up():
            with self.tls_socket() as up:
                while not stop.is_set():
                    started = time.monotonic()
                    up.sendall(b"GET /up HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    status, _, _ = recv_response(up, timeout=self.UP_DEADLINE_SECONDS)
                    up_times.append((status, time.monotonic() - started))
                    time.sleep(0.01)
        with mock.patch.object(campfire.os, "pread", recording_pread), self.tls_socket() as sock:
            sock.sendall(("GET /messages/%d/attachment HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: %s\r\n\r\n"
                          % (message_id, cookie)).encode())
            received = bytearray()
            while b"\r\n\r\n" not in received:
                received += sock.recv(self.SLOW_READ_BYTES)
            head, _, received = bytes(received).partition(b"\r\n\r\n")
            received = bytearray(received)
            self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
            poller = threading.Thread(target=poll_up, daemon=True)
            poller.start()
            while len(received) < len(data):
                chunk = sock.recv(self.SLOW_READ_BYTES)
                if not chunk:
                    break
                received += chunk
                time.sleep(self.SLOW_READ_PAUSE_SECONDS)
            stop.set()
            poller.join(self.UP_DEADLINE_SECONDS + 5)
        self.assertEqual(bytes(received), data)
        self.assertGreaterEqual(len(up_times), 5, "/up answered during the download")
        self.assertTrue(all(status == 200 for status, _ in up_times), up_times)
        self.assertLess(max(seconds for _, seconds in up_times), self.UP_DEADLINE_SECONDS)
        self.assertEqual(sum(size for _, size in reads), len(data))
        self.assertTrue(reads and all(thread is not loop_thread and thread.name.startswith("campfire-files")
                                      for thread, _ in reads), [thread.name for thread, _ in reads][:5])
        self.assertLessEqual(max(size for _, size in reads), campfire.FILE_SEND_CHUNK_BYTES)


class LiveUploadTests(unittest.TestCase):
    """The real server: uploads stream over a socket, files come back with sendfile."""

    @classmethod
    def setUpClass(cls):
        cls.server = LiveServer(max_upload_bytes=4 * 1024 * 1024)
        cls.addClassCleanup(cls.server.stop)
        cls.cookie = first_run_cookie(cls.server.port)
        cls.room_id = cls.server.call(lambda: cls.server.app.store.rooms_for(1)[0]["id"])

    def upload_head(self, length, content_type, path=None):
        return ("POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nCookie: session_token=%s\r\nSec-Fetch-Site: same-origin\r\n"
                "Content-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
                    path or "/rooms/%d/messages" % self.room_id, self.server.port, self.cookie, content_type,
                    length)).encode()

    def state(self):
        app = self.server.app
        blobs = self.server.call(lambda: app.db.value("SELECT count(*) FROM active_storage_blobs"))
        app.settle_file_work()
        temp = os.listdir(app.files.temp_root) if os.path.isdir(app.files.temp_root) else []
        return blobs, temp

    def test_a_file_streams_in_and_comes_back_whole_and_in_ranges(self):
        data = os.urandom(3 * 1024 * 1024)
        content_type, body = multipart([("message[client_message_id]", "live-1")],
                                       [("message[attachment]", "noise.bin", "application/octet-stream", data)])
        with self.server.connect() as sock:
            sock.sendall(self.upload_head(len(body), content_type))
            for start in range(0, len(body), 65536):
                sock.sendall(body[start:start + 65536])
            status, headers, _ = recv_response(sock, timeout=20)
        self.assertEqual(status, 201)
        message_id = int(re.search(r"@(\d+)$", headers["location"]).group(1))
        get = ("GET /messages/%d/attachment HTTP/1.1\r\nHost: x\r\nCookie: session_token=%s\r\n%s\r\n")
        with self.server.connect() as sock:
            sock.sendall((get % (message_id, self.cookie, "")).encode())
            status, headers, received = recv_response(sock, timeout=20)
            self.assertEqual((status, headers["content-type"]), (200, "application/octet-stream"))
            self.assertEqual(received, data)
            # The same connection goes on: a range (a video seeking), then a HEAD.
            sock.sendall((get % (message_id, self.cookie, "Range: bytes=1000000-1000999\r\n")).encode())
            status, headers, received = recv_response(sock, timeout=20)
            self.assertEqual(status, 206)
            self.assertEqual(headers["content-range"], "bytes 1000000-1000999/%d" % len(data))
            self.assertEqual(received, data[1000000:1001000])

    def test_a_body_over_the_limit_is_413_before_it_is_sent(self):
        with self.server.connect() as sock:
            sock.sendall(self.upload_head(50 * 1024 * 1024, "multipart/form-data; boundary=x"))
            status, _, body = recv_response(sock)
        self.assertEqual(status, 413)
        self.assertIn(b"4 MB", body)

    def test_a_connection_cut_mid_upload_leaves_nothing_behind(self):
        before = self.state()[0]
        content_type, body = multipart([("message[client_message_id]", "cut")],
                                       [("message[attachment]", "half.bin", "application/octet-stream",
                                         os.urandom(2 * 1024 * 1024))])
        with self.server.connect() as sock:
            sock.sendall(self.upload_head(len(body), content_type))
            sock.sendall(body[:len(body) // 2])
            app = self.server.app
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (os.path.isdir(app.files.temp_root)
                                                       and os.listdir(app.files.temp_root)):
                time.sleep(0.02)
            self.assertTrue(os.listdir(app.files.temp_root), "the upload was being written")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.state() != (before, []):
            time.sleep(0.05)
        self.assertEqual(self.state(), (before, []))

    def test_a_large_upload_goes_to_the_disk_as_it_arrives_off_the_loop(self):
        """Every UPLOAD_FLUSH_BYTES the bytes so far are flushed (fdatasync) by a file worker,
        so the fsync after the last byte has little left to do. A piece handed on holds up
        to a receive buffer's worth past UPLOAD_WRITE_BYTES (what a busy machine let pile
        up in the socket), so both are made small here: every piece then ends in a flush."""
        data = os.urandom(3 * 1024 * 1024)
        content_type, body = multipart([("message[client_message_id]", "flushed-as-it-came")],
                                       [("message[attachment]", "big.bin", "application/octet-stream", data)])
        real_fdatasync, flushes = os.fdatasync, []

        def recording_fdatasync(descriptor):
            flushes.append((threading.current_thread().name, os.fstat(descriptor).st_size))
            real_fdatasync(descriptor)
        with mock.patch.object(campfire, "UPLOAD_FLUSH_BYTES", 256 * 1024), \
                mock.patch.object(campfire, "UPLOAD_WRITE_BYTES", 256 * 1024), \
                mock.patch.object(campfire.os, "fdatasync", recording_fdatasync), self.server.connect() as sock:
            sock.sendall(self.upload_head(len(body), content_type) + body)
            status, headers, _ = recv_response(sock, timeout=20)
        self.assertEqual(status, 201)
        self.assertGreaterEqual(len(flushes), 2, flushes)
        self.assertTrue(all(name.startswith("campfire-files") for name, _ in flushes), flushes)
        sizes = [size for _, size in flushes]
        self.assertEqual(sizes, sorted(sizes))
        self.assertLess(sizes[0], len(data))  # the first went before the whole file was written
        message_id = int(re.search(r"@(\d+)$", headers["location"]).group(1))
        self.server.app.settle_file_work()
        with self.server.connect() as sock:
            sock.sendall(("GET /messages/%d/attachment HTTP/1.1\r\nHost: x\r\nCookie: session_token=%s\r\n\r\n"
                          % (message_id, self.cookie)).encode())
            status, _, received = recv_response(sock, timeout=20)
        self.assertEqual((status, received == data), (200, True))

    def test_a_write_the_disk_refuses_mid_upload_answers_503_and_leaves_nothing_behind(self):
        """The pieces of a large upload are hashed and written while the next ones arrive:
        a write refused halfway fails the upload once, and its temporary file goes only
        after the pieces still at work are done with it."""
        before = self.state()[0]
        data = os.urandom(3 * 1024 * 1024 + 512 * 1024)  # several UPLOAD_WRITE_BYTES pieces
        content_type, body = multipart([("message[client_message_id]", "refused-midway")],
                                       [("message[attachment]", "big.bin", "application/octet-stream", data)])
        real_write, writes = campfire.FileStore.write, []

        def full_after_one(descriptor, piece, digest):
            writes.append(len(piece))
            if len(writes) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write(descriptor, piece, digest)
        with mock.patch.object(campfire.FileStore, "write", staticmethod(full_after_one)), \
                self.server.connect() as sock:
            sock.sendall(self.upload_head(len(body), content_type))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered before the body ended
                for start in range(0, len(body), 65536):
                    sock.sendall(body[start:start + 65536])
            status, _, text = recv_response(sock, timeout=20)
        self.assertEqual(status, 503)
        self.assertIn(b"could not be saved", text)
        self.assertEqual(len(writes), 2, "the upload stopped at the refused write")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.state() != (before, []):
            time.sleep(0.05)
        self.assertEqual(self.state(), (before, []))
        content_type, body = multipart([("message[client_message_id]", "after-the-refusal")],
                                       [("message[attachment]", "big.bin", "application/octet-stream", data)])
        with self.server.connect() as sock:
            sock.sendall(self.upload_head(len(body), content_type) + body)
            status, _, _ = recv_response(sock, timeout=20)
        self.assertEqual(status, 201)

    def test_a_command_opening_the_storage_meanwhile_leaves_an_upload_on_its_way_alone(self):
        data = os.urandom(2 * 1024 * 1024)
        content_type, body = multipart([("message[client_message_id]", "beside-a-command")],
                                       [("message[attachment]", "whole.bin", "application/octet-stream", data)])
        app = self.server.app
        with self.server.connect() as sock:
            sock.sendall(self.upload_head(len(body), content_type))
            sock.sendall(body[:len(body) // 2])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (os.path.isdir(app.files.temp_root)
                                                       and os.listdir(app.files.temp_root)):
                time.sleep(0.02)
            self.assertTrue(os.listdir(app.files.temp_root), "the upload was being written")
            # reset-password opens the storage in a process of its own while the server runs.
            self.assertIn("/session/transfers/", campfire.sign_in_link(app.config, "ada@example.com",
                                                                        "http://127.0.0.1"))
            sock.sendall(body[len(body) // 2:])
            status, headers, _ = recv_response(sock, timeout=20)
        self.assertEqual(status, 201)
        message_id = int(re.search(r"@(\d+)$", headers["location"]).group(1))
        app.settle_file_work()
        with self.server.connect() as sock:
            sock.sendall(("GET /messages/%d/attachment HTTP/1.1\r\nHost: x\r\nCookie: session_token=%s\r\n\r\n"
                          % (message_id, self.cookie)).encode())
            status, _, received = recv_response(sock, timeout=20)
        self.assertEqual((status, received == data), (200, True))

    def test_curl_posts_a_file_as_a_bot(self):
        curl = shutil.which("curl")
        if curl is None:
            self.skipTest("curl is not installed")
        app = self.server.app
        bot_id = self.server.call(lambda: app.store.create_bot("Uploader", ""))
        key = self.server.call(lambda: campfire.bot_key(app.store.active_bot(bot_id)))
        with tempfile.NamedTemporaryFile(suffix=".png") as file:
            file.write(image_bytes(64, 48))
            file.flush()
            result = subprocess.run([curl, "-s", "-o", "/dev/null", "-D", "-", "-F", "attachment=@%s" % file.name,
                                     "http://127.0.0.1:%d/rooms/%d/%s/messages" % (self.server.port, self.room_id, key)],
                                    capture_output=True, text=True, timeout=30)
        self.assertTrue(result.stdout.startswith("HTTP/1.1 201 "), result.stdout + result.stderr)
        message_id = int(re.search(r"(?im)^Location: /messages/(\d+)\r?$", result.stdout).group(1))
        blob = self.server.call(lambda: app.store.attachment("Message", message_id, "attachment"))
        self.assertEqual((blob.content_type, blob.width, blob.height), ("image/png", 64, 48))

    def test_another_member_sees_the_file_arrive_live(self):
        app = self.server.app
        code = self.server.call(lambda: app.store.account()["join_code"])
        bob = _session_cookie(self.server.port, "/join/" + code, {
            "user[name]": "Bob", "user[email_address]": "bob-live@example.com", "user[password]": "bob-password"})
        cable = CableClient(self.server.port, bob, origin="http://127.0.0.1:%d" % self.server.port)
        try:
            cable.recv_json()  # welcome
            identifier = cable.subscribe("RoomMessagesChannel", room_id=self.room_id)
            cable.recv_until(lambda message: message.get("type") == "confirm_subscription")
            content_type, body = multipart([("message[client_message_id]", "live-2")],
                                           [("message[attachment]", "team.png", "image/png", image_bytes(120, 90))])
            with self.server.connect() as sock:
                sock.sendall(self.upload_head(len(body), content_type) + body)
                self.assertEqual(recv_response(sock, timeout=20)[0], 201)
            message = cable.recv_until(lambda message: message.get("identifier") == identifier
                                       and message.get("message", {}).get("action") == "append")
            html = message["message"]["html"]
            self.assertIn('alt="team.png" width="120" height="90"', html)
        finally:
            cable.close()


class UploadPipelineTests(unittest.TestCase):
    """An upload's pieces wait in a bounded queue for their MD5 and their write: a slow
    MD5 doesn't hold up the writes, and once the queue is full the socket stops being read."""

    MAX_UPLOAD_BYTES = 16 * 1024 * 1024

    @classmethod
    def setUpClass(cls):
        cls.server = LiveServer(max_upload_bytes=cls.MAX_UPLOAD_BYTES)
        cls.addClassCleanup(cls.server.stop)
        cls.cookie = first_run_cookie(cls.server.port)
        cls.room_id = cls.server.call(lambda: cls.server.app.store.rooms_for(1)[0]["id"])

    def test_a_full_queue_stops_the_reading_and_a_free_one_resumes_it(self):
        queue_bytes, piece_bytes = 1024 * 1024, 64 * 1024
        data = os.urandom(12 * 1024 * 1024)  # far more than the queue, the read-ahead and the socket buffers
        expected_md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        content_type, body = multipart([("message[client_message_id]", "queued")],
                                       [("message[attachment]", "queued.bin", "application/octet-stream", data)])
        gate, hashing = threading.Event(), threading.Event()

        class HeldMd5:
            """The upload's MD5, held up at its first large piece until the gate opens."""

            def __init__(self):
                self.real = hashlib.md5()

            def update(self, piece):
                if len(piece) >= piece_bytes:
                    hashing.set()
                    gate.wait(30)
                self.real.update(piece)

            def digest(self):
                return self.real.digest()

        held_hashlib = types.SimpleNamespace(**{name: getattr(hashlib, name) for name in dir(hashlib)
                                                if not name.startswith("__")})
        held_hashlib.md5 = HeldMd5
        app = self.server.app

        def temp_file_sizes():
            root = app.files.temp_root
            return [os.path.getsize(os.path.join(root, name)) for name in os.listdir(root)] if os.path.isdir(root) else []

        def reading():
            """(body bytes the server has read, whether it reads on) of the connection receiving the upload."""
            for connection in app.http_connections:
                if connection.streaming is not None:
                    return connection.parser._remaining, connection.transport.is_reading()
            return None

        sender_errors = []

        def send(sock):
            try:
                sock.sendall(self.upload_head(len(body), content_type))
                sock.sendall(body)
            except OSError as error:
                sender_errors.append(error)
        with mock.patch.object(campfire, "hashlib", held_hashlib), \
                mock.patch.object(campfire, "UPLOAD_QUEUE_BYTES", queue_bytes, create=True), \
                mock.patch.object(campfire, "UPLOAD_WRITE_BYTES", piece_bytes), \
                self.server.connect(timeout=30) as sock:
            sender = threading.Thread(target=send, args=(sock,), daemon=True)
            sender.start()
            try:
                self.assertTrue(hashing.wait(20), "the MD5 got its first piece")
                # While the MD5 is held up the writes go on, up to the queue's bound, and
                # then the server reads no further though the client has more to send.
                deadline, last, stable_since = time.monotonic() + 20, None, time.monotonic()
                while time.monotonic() < deadline:
                    now = (temp_file_sizes(), self.server.call(reading))
                    if now != last:
                        last, stable_since = now, time.monotonic()
                    elif time.monotonic() - stable_since > 0.5 and now[1] is not None and not now[1][1]:
                        break
                    time.sleep(0.02)
                self.assertIsNotNone(last[1], "the server stopped reading before the body's end")
                [written], (remaining, reads_on) = last
                self.assertFalse(reads_on, "the socket is not read while the queue is full")
                self.assertGreater(remaining, 0, "the client had more to send")
                self.assertGreaterEqual(written, queue_bytes, "the writes went ahead of the held MD5")
                # The pieces held: at most the queue and one piece more (a piece is up to one
                # read of the socket, RECEIVE_BUFFER_BYTES, beyond UPLOAD_WRITE_BYTES).
                self.assertLessEqual(written, queue_bytes + piece_bytes + campfire.RECEIVE_BUFFER_BYTES)
                taken = len(body) - remaining  # the rest is in the socket's buffers or still to send
                self.assertLess(taken, queue_bytes + campfire.UPLOAD_READ_AHEAD_BYTES
                                + 3 * (piece_bytes + campfire.RECEIVE_BUFFER_BYTES), "memory stays bounded")
            finally:
                gate.set()
            sender.join(30)
            self.assertEqual(sender_errors, [])
            status, headers, _ = recv_response(sock, timeout=30)
        self.assertEqual(status, 201)
        message_id = int(re.search(r"@(\d+)$", headers["location"]).group(1))
        blob = self.server.call(lambda: app.store.attachment("Message", message_id, "attachment"))
        self.assertEqual((blob.byte_size, blob.checksum), (len(data), expected_md5))
        app.settle_file_work()
        with open(app.files.path(blob.key), "rb") as stored:
            self.assertTrue(stored.read() == data)

    def upload_head(self, length, content_type):
        return ("POST /rooms/%d/messages HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nCookie: session_token=%s\r\n"
                "Sec-Fetch-Site: same-origin\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
                    self.room_id, self.server.port, self.cookie, content_type, length)).encode()


class StreamedUploadMemoryTests(unittest.TestCase):
    """A large upload to a separate server process: its memory stays flat."""

    UPLOAD_MIB = int(os.environ.get("CAMPFIRE_TEST_UPLOAD_MIB", "256"))

    def test_a_large_upload_does_not_grow_the_servers_memory(self):
        from tests.browser import CampfireProcess
        server = CampfireProcess(env={"CAMPFIRE_MAX_UPLOAD_BYTES": str((self.UPLOAD_MIB + 1) * 1024 * 1024)})
        server.start()
        self.addCleanup(server.cleanup)
        cookie = first_run_cookie(server.port)

        def rss():
            with open("/proc/%d/status" % server.process.pid) as status:
                return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1)) * 1024
        boundary = "----campfire-large-upload"
        head = ('--%s\r\nContent-Disposition: form-data; name="message[attachment]"; filename="large.bin"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n" % boundary).encode()
        tail = ("\r\n--%s--\r\n" % boundary).encode()
        size = self.UPLOAD_MIB * 1024 * 1024
        chunk = os.urandom(1024 * 1024)
        before = rss()
        peak = before
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(("POST /rooms/1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: session_token=%s\r\n"
                          "Sec-Fetch-Site: same-origin\r\nContent-Type: multipart/form-data; boundary=%s\r\n"
                          "Content-Length: %d\r\n\r\n" % (cookie, boundary, len(head) + size + len(tail))).encode())
            sock.sendall(head)
            for sent in range(self.UPLOAD_MIB):
                sock.sendall(chunk)
                if sent % 16 == 0:
                    peak = max(peak, rss())
            sock.sendall(tail)
            status = recv_response(sock, timeout=120)[0]
        after = rss()
        self.assertEqual(status, 201)
        print("\n%d MiB upload: server RSS %.1f MB before, %.1f MB at most during, %.1f MB after"
              % (self.UPLOAD_MIB, before / 1e6, peak / 1e6, after / 1e6), file=sys.stderr)
        self.assertLess(peak - before, 16 * 1024 * 1024)
        deadline, stored = time.monotonic() + 30, []
        while not stored and time.monotonic() < deadline:  # it moves into place just after the commit
            root = os.path.join(server.storage, "files")
            stored = [os.path.join(folder, name) for folder, _, names in os.walk(root)
                      if os.path.relpath(folder, root).split(os.sep)[0] != "tmp" for name in names]
            time.sleep(0.05)
        self.assertEqual([os.path.getsize(path) for path in stored], [size])


class AvatarAndLogoTests(AttachmentTestCase):
    def profile_form(self, picture, name="Ada Admin"):
        return multipart([("_method", "patch"), ("user[name]", name), ("user[email_address]", "ada@example.com"),
                          ("user[bio]", "")], [("user[avatar]", "me.webp", "image/webp", picture)])

    def test_an_avatar_is_uploaded_served_and_removed(self):
        picture = image_bytes(512, 512, "WEBP")
        content_type, body = self.profile_form(picture)
        response = self.client.post("/users/me/profile", body=body, content_type=content_type)
        self.assertEqual(response.status, 303, response.text[:400])
        blob = self.app.store.attachment("User", 1, "avatar")
        self.assertEqual((blob.content_type, blob.width, blob.height), ("image/webp", 512, 512))
        served = self.client.get("/users/1/avatar")
        self.assertEqual((served.status, served.header("Content-Type")), (200, "image/webp"))
        self.assertEqual(body_of(served), picture)
        self.assertEqual(self.client.get("/users/1/avatar", headers={"If-None-Match": served.header("ETag")}).status,
                         304)
        # A new picture replaces the old one, file and all.
        content_type, body = self.profile_form(image_bytes(512, 512, "PNG"))
        self.client.post("/users/me/profile", body=body, content_type=content_type)
        self.assertEqual(len(self.blobs()), 1)
        self.assertFalse(os.path.exists(self.app.files.path(blob.key)))
        # Remove avatar: the initials again.
        self.assertEqual(self.client.post("/users/1/avatar", {"_method": "delete"}).status, 303)
        self.assert_nothing_kept()
        self.assertEqual(self.client.get("/users/1/avatar").header("Content-Type"), "image/svg+xml")

    def avatar_urls_seen(self, client, user_id=1):
        """The avatars' srcs beside a person's messages on a room page."""
        page = client.get("/rooms/%d" % self.room_id).text
        return set(re.findall(r'<a class="message__avatar" href="/users/%d"[^>]*><img class="avatar" src="([^"]*)"'
                              % user_id, page))

    def test_an_avatars_url_changes_with_what_it_shows_and_is_cached_for_good_under_it(self):
        self.client.post("/rooms/%d/messages" % self.room_id, {"message[body]": "Morning", "message[client_message_id]": "m1"})
        bob = self.join("Bob", "bob@example.com")
        # No picture: the initials drawn in the page itself (no request), as the avatar's URL serves them.
        [initials] = self.avatar_urls_seen(bob)
        self.assertEqual(avatar_initials(initials), "AA")
        self.assertEqual(urllib.parse.unquote(initials.split(",", 1)[1]).encode(), body_of(bob.get("/users/1/avatar")))
        unversioned = bob.get("/users/1/avatar")  # Campfire's own URL: revalidated
        self.assertEqual((unversioned.status, unversioned.header("Cache-Control")), (200, "private, no-cache"))
        self.assertTrue(unversioned.header("ETag"))
        self.assertEqual(bob.get("/users/1/avatar", headers={"If-None-Match": unversioned.header("ETag")}).status, 304)
        # Same initials, the same drawing; other initials, another.
        self.client.post("/users/me/profile", {"_method": "patch", "user[name]": "Ann Archer",
                                               "user[email_address]": "ada@example.com", "user[bio]": ""})
        self.assertEqual(self.avatar_urls_seen(bob), {initials})
        self.client.post("/users/me/profile", {"_method": "patch", "user[name]": "Zoe Quinn",
                                               "user[email_address]": "ada@example.com", "user[bio]": ""})
        [renamed] = self.avatar_urls_seen(bob)
        self.assertEqual(avatar_initials(renamed), "ZQ")
        # A picture, then another: each a new URL, for everyone's next page.
        pictures, urls = [image_bytes(512, 512, "WEBP"), image_bytes(512, 512, "PNG")], [renamed]
        for picture in pictures:
            content_type, body = self.profile_form(picture, name="Zoe Quinn")
            self.assertEqual(self.client.post("/users/me/profile", body=body, content_type=content_type).status, 303)
            [url] = self.avatar_urls_seen(bob)
            self.assertEqual(self.avatar_urls_seen(self.client), {url})
            self.assertNotIn(url, urls)
            self.assertRegex(url, r"^/users/1/avatar\?v=[0-9a-f]{12}$")
            urls.append(url)
            served = bob.get(url)
            self.assertEqual((body_of(served), served.header("Cache-Control")),
                             (picture, "private, max-age=31536000, immutable"))
            if len(urls) > 2:  # the picture before, under its old version: revalidated
                self.assertEqual(bob.get(urls[-2]).header("Cache-Control"), "private, no-cache")
        # Removed: the initials again, drawn in the page.
        self.assertEqual(self.client.post("/users/1/avatar", {"_method": "delete"}).status, 303)
        self.assertEqual(self.avatar_urls_seen(bob), {renamed})
        self.assertEqual(bob.get(urls[-1]).header("Cache-Control"), "private, no-cache")

    def test_initials_of_any_letters_are_drawn_in_the_page_as_the_avatars_url_serves_them(self):
        self.client.post("/rooms/%d/messages" % self.room_id, {"message[body]": "Morning", "message[client_message_id]": "m1"})
        for name, initials in (('%Ünal "Q"', '%"'), ("Ünal Öz", "ÜÖ"), ("#1 &co", "#&"), ("?x <y>", "?<")):
            self.client.post("/users/me/profile", {"_method": "patch", "user[name]": name,
                                                   "user[email_address]": "ada@example.com", "user[bio]": ""})
            [src] = self.avatar_urls_seen(self.client)
            self.assertEqual(avatar_initials(src), initials)
            self.assertFalse(set(src) & set('"&#?<>'), src)  # nothing that ends the attribute, the URL or its path
            self.assertEqual(urllib.parse.unquote(src.split(",", 1)[1]).encode(), body_of(self.client.get("/users/1/avatar")))

    def test_a_new_persons_avatar_shows_before_any_account_change(self):
        self.client.get("/rooms/%d" % self.room_id)  # the avatars are known for everyone there was
        bob = self.join("Bob", "bob@example.com")
        bob.post("/rooms/%d/messages" % self.room_id, {"message[body]": "Hi", "message[client_message_id]": "b1"})
        bob_id = self.app.db.value("SELECT id FROM users WHERE name = 'Bob'")
        [url] = self.avatar_urls_seen(self.client, bob_id)
        self.assertEqual(avatar_initials(url), "B")

    def test_an_avatar_that_is_not_an_image_is_refused_on_the_form(self):
        content_type, body = self.profile_form(b"<svg onload=alert(1)>")
        response = self.client.post("/users/me/profile", body=body, content_type=content_type)
        self.assertEqual(response.status, 422)
        self.assertIn("Choose a PNG, JPEG, GIF or WebP image.", response.text)
        self.assert_nothing_kept()

    def test_no_one_removes_another_persons_avatar(self):
        other = self.join("Bob", "bob@example.com")
        self.assertEqual(other.post("/users/1/avatar", {"_method": "delete"}).status, 403)

    def test_the_logo_is_uploaded_and_becomes_the_manifest_and_page_icon(self):
        self.assertEqual(self.client.get("/account/logo").header("Content-Type"), "image/png")  # Campfire's icon
        picture = image_bytes(512, 512, "PNG")
        content_type, body = multipart([("_method", "patch"), ("account[name]", "Acme")],
                                       [("account[logo]", "logo.png", "image/png", picture)])
        response = self.client.post("/account", body=body, content_type=content_type)
        self.assertEqual(response.status, 303, response.text[:400])
        logo = self.client.get("/account/logo")
        self.assertEqual(body_of(logo), picture)
        self.assertEqual(logo.header("Cache-Control"), "public, max-age=300, stale-while-revalidate=604800")
        manifest = json.loads(self.client.get("/webmanifest.json").body)
        sources = {(icon["src"].split("?")[0], icon["sizes"]) for icon in manifest["icons"]}
        self.assertLessEqual({("/account/logo", "192x192"), ("/account/logo", "512x512")}, sources)
        page = self.client.get("/account/edit").text
        self.assertRegex(page, r'<link rel="icon" href="/account/logo\?v=\w+">')
        # Members can't remove it; administrators can.
        self.assertEqual(self.join("Bob", "bob@example.com").post("/account/logo", {"_method": "delete"}).status, 403)
        self.assertEqual(self.client.post("/account/logo", {"_method": "delete"}).status, 303)
        self.assert_nothing_kept()
        manifest = json.loads(self.client.get("/webmanifest.json").body)
        self.assertNotIn("/account/logo", json.dumps(manifest))

    def test_an_administrator_sets_a_bots_avatar_on_the_bot_form(self):
        content_type, body = multipart([("user[name]", "Robo")], [("user[avatar]", "robo.png", "image/png", image_bytes(512, 512))])
        response = self.client.post("/account/bots", body=body, content_type=content_type)
        self.assertEqual(response.status, 303, response.text[:300])
        bot_id = self.app.db.value("SELECT id FROM users WHERE name = 'Robo'")
        self.assertEqual(self.client.get("/users/%d/avatar" % bot_id).header("Content-Type"), "image/png")
        content_type, body = multipart([("_method", "patch"), ("user[name]", "Robo")],
                                       [("user[avatar]", "robo.gif", "image/gif", b"GIF89a broken")])
        response = self.client.post("/account/bots/%d" % bot_id, body=body, content_type=content_type)
        self.assertEqual(response.status, 422)
        self.assertEqual(len(self.blobs()), 1)
        self.assertEqual(self.temp_files(), [])
