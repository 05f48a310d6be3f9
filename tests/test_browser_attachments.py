"""Files in Chromium, as a person sends them: the paperclip, drag-and-drop and paste
each post the image as a message of its own, with its size set before it loads,
and the other person sees it arrive live; several files keep their order; a file
over the limit fails at once, with Discard and no Retry; an image opens in the viewer, and an
uploaded HTML page opened from its link runs nothing. An avatar and the logo
are cropped to a 512×512 square in the browser, and the logo becomes the manifest's icon."""

import base64
import io
import re

from PIL import Image

from tests.browser import BrowserTestCase, CampfireProcess
from tests.helpers import avatar_initials
from tests.test_browser_app import ADA, BOB, BrowserApp

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - depends on the machine
    expect = None


def png(width, height, colour=(30, 120, 200)):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


# A File built in the page from base64, as a drop or a paste carries it.
MAKE_FILE = """([name, type, data]) => new File([Uint8Array.from(atob(data), (c) => c.charCodeAt(0))], name, { type })"""


class AttachmentsInBrowserTests(BrowserApp):
    def image_message(self, page, name):
        return page.locator("#messages > .message:not(.message--pending)", has=page.locator('img[alt="%s"]' % name))

    def assert_image_arrived(self, page, name, width, height):
        message = self.image_message(page, name)
        expect(message).to_have_count(1)
        image = message.locator("img.attachment__image")
        expect(image).to_have_attribute("width", str(width))
        expect(image).to_have_attribute("height", str(height))
        page.wait_for_function("(name) => [...document.querySelectorAll('#messages img.attachment__image')]"
                               ".some((img) => img.alt === name && img.complete && img.naturalWidth > 0)", arg=name)

    def test_paperclip_drop_and_paste_each_send_an_image_the_other_person_sees_live(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        # The paperclip.
        ada.get_by_label("Attach files").set_input_files(
            files=[{"name": "clip-one.png", "mimeType": "image/png", "buffer": png(320, 160)}])
        self.assert_image_arrived(ada, "clip-one.png", 320, 160)
        self.assert_image_arrived(bob, "clip-one.png", 320, 160)
        # Drag-and-drop onto the room.
        ada.evaluate("""async ([make, file]) => {
            const data = new DataTransfer()
            data.items.add(eval(make)(file))
            const room = document.querySelector("section.room")
            for (const type of ["dragenter", "dragover", "drop"])
              room.querySelector("#messages").dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }))
        }""", [MAKE_FILE, ["dropped.png", "image/png", base64.b64encode(png(100, 300)).decode()]])
        self.assert_image_arrived(bob, "dropped.png", 100, 300)
        # A screenshot pasted into the composer.
        ada.get_by_role("textbox", name="Write a message").click()
        ada.evaluate("""([make, file]) => {
            const data = new DataTransfer()
            data.items.add(eval(make)(file))
            document.activeElement.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }))
        }""", [MAKE_FILE, ["pasted.png", "image/png", base64.b64encode(png(64, 64)).decode()]])
        self.assert_image_arrived(bob, "pasted.png", 64, 64)
        expect(ada.locator(".message--pending")).to_have_count(0)
        self.screenshot(bob, "attachments-live")

    def test_a_large_image_is_shown_by_the_preview_the_browser_made(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        ada.get_by_label("Attach files").set_input_files(
            files=[{"name": "panorama.png", "mimeType": "image/png", "buffer": png(2400, 1000)}])
        self.assert_image_arrived(bob, "panorama.png", 1200, 500)
        image = self.image_message(bob, "panorama.png").locator("img.attachment__image")
        expect(image).to_have_attribute("src", re.compile(r"/messages/\d+/attachment/preview$"))
        self.assertEqual(image.evaluate("(img) => [img.naturalWidth, img.naturalHeight]"), [1200, 500])

    def test_several_files_become_messages_in_their_order_and_a_pdf_is_a_card(self):
        ada, bob = self.open_room(ADA), self.open_room(BOB)
        names = ["first.png", "second.txt", "third.pdf"]
        ada.get_by_label("Attach files").set_input_files(files=[
            {"name": "first.png", "mimeType": "image/png", "buffer": png(50, 50)},
            {"name": "second.txt", "mimeType": "text/plain", "buffer": b"some notes"},
            {"name": "third.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4\n%%EOF\n"}])
        card = bob.locator("#messages .attachment--file", has_text="third.pdf")
        expect(card).to_have_count(1)
        expect(card.get_by_role("link", name="Download third.pdf")).to_have_attribute(
            "href", re.compile(r"/messages/\d+/attachment/download$"))
        shown = bob.evaluate("""() => [...document.querySelectorAll('#messages > .message')]
            .map((m) => m.querySelector('img.attachment__image')?.alt ?? m.querySelector('.attachment__name')?.textContent)
            .filter(Boolean)""")
        self.assertEqual([name for name in shown if name in names], names)

    def test_a_file_over_the_limit_fails_with_discard_and_nothing_is_sent(self):
        ada = self.open_room(ADA)
        self.assertEqual(ada.locator("form#composer").get_attribute("data-max-upload-bytes"), str(100 * 1024 * 1024))
        ada.evaluate("() => { document.querySelector('form#composer').dataset.maxUploadBytes = '10' }")
        sent = []
        ada.on("request", lambda request: request.method == "POST" and sent.append(request.url))
        ada.get_by_label("Attach files").set_input_files(
            files=[{"name": "too-big.png", "mimeType": "image/png", "buffer": png(40, 40)}])
        failed = ada.locator(".message--failed", has_text="too-big.png")
        expect(failed).to_contain_text("Not sent: larger than 100 MB.")
        expect(failed.get_by_role("button", name="Retry")).to_have_count(0)
        failed.get_by_role("button", name="Discard").click()
        expect(ada.locator(".message--failed")).to_have_count(0)
        self.assertEqual(sent, [])

    def test_a_drop_of_too_many_files_is_refused_whole_with_a_message(self):
        ada = self.open_room(ADA)
        sent = []
        ada.on("request", lambda request: request.method == "POST" and sent.append(request.url))
        ada.evaluate("""() => {
            const data = new DataTransfer()
            for (let i = 0; i < 101; i++) data.items.add(new File(["x"], `f${i}.txt`, { type: "text/plain" }))
            document.querySelector("#messages").dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }))
        }""")
        expect(ada.get_by_role("status").filter(has_text="at most 100 files")).to_contain_text(
            "none of these 101 was sent")
        expect(ada.locator(".message--pending")).to_have_count(0)
        self.assertEqual(sent, [])

    def test_an_image_opens_in_the_viewer_and_escape_closes_it(self):
        ada = self.open_room(ADA)
        ada.get_by_label("Attach files").set_input_files(
            files=[{"name": "viewer.png", "mimeType": "image/png", "buffer": png(200, 100)}])
        self.assert_image_arrived(ada, "viewer.png", 200, 100)
        self.image_message(ada, "viewer.png").locator("a.attachment__link").click()
        viewer = ada.get_by_role("dialog", name="Image viewer")
        expect(viewer).to_be_visible()
        expect(viewer.locator("img")).to_have_attribute("alt", "viewer.png")
        ada.keyboard.press("Escape")
        expect(viewer).to_be_hidden()

    def test_an_uploaded_html_page_opened_from_its_link_runs_nothing(self):
        ada = self.open_room(ADA)
        ada.get_by_label("Attach files").set_input_files(files=[
            {"name": "evil.html", "mimeType": "text/html",
             "buffer": b"<script>document.cookie='pwned=1';localStorage.pwned=1;</script>"}])
        link = ada.locator("#messages .attachment--file", has_text="evil.html").get_by_role("link", name="evil.html", exact=True)
        expect(link).to_have_count(1)
        href = link.get_attribute("href")
        response = ada.request.get(self.server.url + href)
        self.assertEqual(response.headers["content-security-policy"], "sandbox")
        self.assertTrue(response.headers["content-disposition"].startswith("attachment"))
        self.assertIsNone(ada.evaluate("localStorage.pwned ?? null"))
        self.assertNotIn("pwned", ada.evaluate("document.cookie"))



class PicturesInBrowserTests(BrowserTestCase):
    """A fresh server per test, its account made by its first run in the page."""

    def setUp(self):
        super().setUp()
        self.server = CampfireProcess().start()
        self.addCleanup(self.server.cleanup)

    def first_run(self, page):
        page.goto(self.server.url + "/first_run")
        page.get_by_label("Your name").fill("Ada Admin")
        page.get_by_label("Email address").fill("ada@example.com")
        page.get_by_label("Password").fill("a long secret")
        page.get_by_role("button", name="Create account").click()
        page.wait_for_url("**/rooms/*")

    def test_an_avatar_is_cropped_to_a_512_square_in_the_browser_and_shown(self):
        page = self.new_page()
        self.first_run(page)
        page.goto(self.server.url + "/users/me/profile")
        stripes = Image.new("RGB", (900, 300), (220, 20, 20))   # red, then green in the middle square, then blue
        stripes.paste((10, 200, 90), (300, 0, 600, 300))
        stripes.paste((20, 20, 220), (600, 0, 900, 300))
        buffer = io.BytesIO()
        stripes.save(buffer, "PNG")
        page.get_by_label("Avatar").set_input_files(
            files=[{"name": "wide.png", "mimeType": "image/png", "buffer": buffer.getvalue()}])
        expect(page.locator("img.field__preview")).to_be_visible()
        page.get_by_role("button", name="Save changes").click()
        page.wait_for_url(re.compile(r"/users/me/profile\?saved=1$"))
        response = page.request.get(self.server.url + "/users/1/avatar")
        self.assertIn(response.headers["content-type"], ("image/webp", "image/png"))
        picture = Image.open(io.BytesIO(response.body()))
        self.assertEqual(picture.size, (512, 512))
        for point in ((8, 8), (256, 256), (503, 503)):  # only the middle square is left (lossy WebP: near enough)
            colour = picture.convert("RGB").getpixel(point)
            self.assertTrue(all(abs(got - want) <= 12 for got, want in zip(colour, (10, 200, 90))), (point, colour))
        avatar = page.locator(".profile__head img.avatar")
        page.reload()
        page.wait_for_function("() => document.querySelector('.profile__head img.avatar').naturalWidth === 512")
        picture_url = avatar.get_attribute("src")
        self.assertRegex(picture_url, r"^/users/1/avatar\?v=[0-9a-f]{12}$")
        page.get_by_role("button", name="Remove avatar").click()
        page.wait_for_url(re.compile(r"/users/me/profile$"))
        self.assertEqual(avatar_initials(avatar.get_attribute("src")), "AA")  # the initials again, drawn in the page
        self.assertEqual(page.request.get(self.server.url + "/users/1/avatar").headers["content-type"],
                         "image/svg+xml")

    def test_the_logo_upload_changes_the_manifest_icon(self):
        page = self.new_page()
        self.first_run(page)
        before = page.request.get(self.server.url + "/webmanifest.json").json()
        self.assertNotIn("/account/logo", str(before["icons"]))
        page.goto(self.server.url + "/account/edit")
        page.get_by_label("Upload a new logo").set_input_files(
            files=[{"name": "logo.png", "mimeType": "image/png", "buffer": png(640, 640, (200, 30, 30))}])
        expect(page.locator("img.field__preview")).to_be_visible()
        page.locator("#account_form").get_by_role("button", name="Save changes").click()
        page.wait_for_url(re.compile(r"/account/edit(\?saved=1)?$"))
        icons = page.request.get(self.server.url + "/webmanifest.json").json()["icons"]
        sources = {icon["sizes"]: icon["src"] for icon in icons if icon["src"].startswith("/account/logo")}
        self.assertEqual(sorted(sources), ["192x192", "512x512"])
        logo = Image.open(io.BytesIO(page.request.get(self.server.url + sources["512x512"]).body()))
        self.assertEqual(logo.size, (512, 512))
        self.assertEqual(page.locator("link[rel=icon]").get_attribute("href"), sources["512x512"])
