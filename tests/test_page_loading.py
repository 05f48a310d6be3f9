"""How a page loads static/'s modules: an import map sends every module to its
versioned, immutable URL, modulepreload fetches app.js's whole graph at once, the
CSP allows the inline map by its hash and nothing else inline, and a reload asks
the network for no module or stylesheet at all (Chromium, through the DevTools
protocol's own record of where each response came from)."""

import base64
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import uuid

from PIL import Image

from tests.browser import ROOT
from tests.helpers import AppTestCase, avatar_initials, make_app, Client, wait_until
from tests.test_browser_app import BrowserApp, SeededBrowserTests, unique

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - depends on the machine
    expect = None

STATIC = os.path.join(ROOT, "static")
IMPORT_MAP = re.compile(r'<script type="importmap">(.*?)</script>', re.S)
PRELOAD = re.compile(r'<link rel="modulepreload" href="([^"]+)">')
MODULE_SCRIPT = re.compile(r'<script type="module" src="([^"]+)">')


def file_digest(path):
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()[:16]


def page_modules(root=STATIC):
    """The page modules in a static folder, found without campfire.py: every .js file
    but the service worker (a worker script that no page imports)."""
    return sorted(name for name in os.listdir(root) if name.endswith(".js") and name != "service-worker.js")


def imported_by(root, name):
    """The ./x.js names a module imports with a static import statement, read by
    walking its statements rather than with campfire.py's pattern."""
    with open(os.path.join(root, name), encoding="utf-8") as file:
        source = file.read()
    names = []
    for statement in re.split(r";|\n(?=\S)", source):
        statement = statement.strip()
        if statement.startswith("import ") or statement.startswith("import{"):
            quoted = re.findall(r'["\']\./([\w-]+\.js)["\']\s*$', statement)
            names.extend(quoted)
    return names


def module_graph(root, entry="app.js"):
    seen, pending = set(), [entry]
    while pending:
        for name in imported_by(root, pending.pop()):
            if name not in seen:
                seen.add(name)
                pending.append(name)
    seen.discard(entry)
    return seen


def upload_avatar(page, url, colour):
    """The person of page picks a 512x512 picture of one colour on their profile and saves it."""
    page.goto(url + "/users/me/profile")
    buffer = io.BytesIO()
    Image.new("RGB", (512, 512), colour).save(buffer, "PNG")
    page.get_by_label("Avatar").set_input_files(
        files=[{"name": "avatar.png", "mimeType": "image/png", "buffer": buffer.getvalue()}])
    expect(page.locator("img.field__preview")).to_be_visible()
    page.get_by_role("button", name="Save changes").click()
    page.wait_for_url(re.compile(r"/users/me/profile\?saved=1$"))


class ImportMapTests(AppTestCase):
    def setUp(self):
        super().setUp()
        self.first_run()

    def page(self, client=None):
        response = (client or self.client).get("/rooms/1")
        self.assertEqual(response.status, 200)
        return response, response.text

    def test_every_module_goes_to_its_versioned_url_which_is_served_immutable(self):
        _, html = self.page()
        mapping = json.loads(IMPORT_MAP.search(html).group(1))["imports"]
        self.assertEqual(sorted(mapping), ["/static/" + name for name in page_modules()])
        for name in page_modules():
            versioned = mapping["/static/" + name]
            self.assertEqual(versioned, "/static/%s?v=%s" % (name, file_digest(os.path.join(STATIC, name))))
            response = self.client.get(versioned)
            self.assertEqual(response.status, 200, name)
            self.assertEqual(response.header("cache-control"), "public, max-age=31536000, immutable", name)
        # The import map comes before anything that loads a module (HTML: a map added
        # after a module fetch started is ignored).
        self.assertLess(html.index('type="importmap"'), html.index('rel="modulepreload"'))
        self.assertLess(html.index('type="importmap"'), html.index('type="module"'))

    def test_the_policy_allows_the_map_by_its_hash_and_no_other_inline_script(self):
        response, html = self.page()
        text = IMPORT_MAP.search(html).group(1)
        expected = "'sha256-%s'" % base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        directives = dict((part.strip().split(" ", 1) + [""])[:2]
                          for part in response.header("content-security-policy").split(";"))
        self.assertEqual(directives["script-src"].split(), ["'self'", expected])
        # Every other script on the page is a file of our own origin.
        self.assertEqual(html.count("<script"), 2)

    def test_the_page_preloads_every_module_app_js_reaches_once(self):
        _, html = self.page()
        preloaded = PRELOAD.findall(html)
        self.assertEqual(len(preloaded), len(set(preloaded)))
        names = {url.split("/static/", 1)[1].split("?", 1)[0] for url in preloaded}
        self.assertEqual(names, module_graph(STATIC))
        mapping = json.loads(IMPORT_MAP.search(html).group(1))["imports"]
        for url in preloaded:  # the very URLs the map resolves to, so the preloads are used
            self.assertIn(url, mapping.values())
        self.assertEqual(MODULE_SCRIPT.search(html).group(1), mapping["/static/app.js"])

    def test_a_changed_module_changes_the_map_the_policy_and_cached_pages(self):
        static = tempfile.mkdtemp(prefix="campfire-static-")
        self.addCleanup(shutil.rmtree, static, True)
        shutil.copytree(STATIC, static, dirs_exist_ok=True)
        app = make_app(tempfile.mkdtemp(prefix="campfire-test-"), static_root=static)
        self.addCleanup(shutil.rmtree, app.config.storage_path, True)
        self.addCleanup(app.close)
        client = Client(app)
        self.first_run(client)
        _, before = self.page(client)
        with open(os.path.join(static, "dom.js"), "a", encoding="utf-8") as file:
            file.write("\n// changed\n")
        digest = file_digest(os.path.join(static, "dom.js"))

        def fresh_page():
            response, html = self.page(client)
            return (response, html) if "dom.js?v=" + digest in html else None
        response, after = wait_until(fresh_page, timeout=10, message="the changed module never reached the map")
        self.assertNotEqual(IMPORT_MAP.search(before).group(1), IMPORT_MAP.search(after).group(1))
        text = IMPORT_MAP.search(after).group(1)
        self.assertIn(base64.b64encode(hashlib.sha256(text.encode()).digest()).decode(),
                      response.header("content-security-policy"))


class ReachedStartTests(AppTestCase):
    def test_a_room_whose_first_message_is_on_the_page_says_so_and_a_longer_one_does_not(self):
        self.first_run()
        store = self.app.store
        room, ada = store.room(1), store.user(1)
        for n in range(3):
            store.post_message(room, ada, "hello %d" % n, "start-%d" % n)
        self.assertIn("data-reached-start", self.client.get("/rooms/1").text)
        for n in range(40):
            store.post_message(room, ada, "more %d" % n, "more-%d" % n)
        html = self.client.get("/rooms/1").text
        self.assertNotIn("data-reached-start", html)
        self.assertIn("more 39", html)


class ReloadTests(SeededBrowserTests):
    """Network requests counted by the DevTools protocol, which marks each response
    as from the network, the disk cache or the service worker."""

    PEOPLE = {"Person 1": "person1@example.com", "Person 2": "person2@example.com"}

    def load(self, page, cdp, go):
        responses = {}

        def received(event):
            response = event["response"]
            source = ("disk" if response.get("fromDiskCache") else "worker" if response.get("fromServiceWorker")
                      else "network")
            responses[event["requestId"]] = (response["url"].replace(self.server.url, ""), source)
        cdp.on("Network.responseReceived", received)
        go()
        expect(page.locator("body")).to_have_attribute("data-cable", "live")  # every channel confirmed
        page.wait_for_load_state("networkidle")
        cdp.remove_listener("Network.responseReceived", received)
        return [(url, source) for url, source in responses.values() if not url.startswith("data:")]

    def test_a_reload_asks_the_network_for_no_module_or_stylesheet(self):
        page = self.new_page(storage_state=self.states["Person 1"])
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        first = self.load(page, cdp, lambda: page.goto(self.server.url + "/rooms/1"))
        modules = [url for url, _ in first if url.startswith("/static/") and url.split("?")[0].endswith(".js")
                   and "service-worker" not in url]
        self.assertEqual(sorted(url.split("?")[0] for url in modules),
                         sorted("/static/" + name for name in module_graph(STATIC) | {"app.js"}))
        for url in modules:
            self.assertRegex(url, r"\?v=[0-9a-f]{16}$")
        # The seeded room holds its first message: nothing older is asked for.
        self.assertFalse([url for url, _ in first if "before=" in url], first)

        # The seeded people have no pictures (another test may give Person 1 one): their
        # initials are drawn in the page, and only pictures are fetched.
        sources = page.eval_on_selector_all("img.avatar", "(images) => images.map((image) => image.src)")
        self.assertTrue([src for src in sources if src.startswith("data:")], sources)
        pictures = {src.replace(self.server.url, "") for src in sources if not src.startswith("data:")}
        self.assertLessEqual({url for url, _ in first if url.startswith("/users/")}, pictures, first)

        again = self.load(page, cdp, page.reload)
        network = [url for url, source in again if source == "network"]
        self.assertFalse([url for url in network if url.startswith("/static/")], again)
        # Nothing the first load fetched is fetched again. (A picture the first load had not
        # got to yet, when another test gave Person 1 one, may come now, once.)
        self.assertEqual([url for url in network if url != "/rooms/1" and (
            url in {url for url, _ in first} or not url.startswith("/users/"))], [], (first, again))
        composer = page.get_by_role("textbox", name="Write a message")
        composer.click()
        page.keyboard.type("after a reload")
        page.keyboard.press("Enter")
        expect(page.locator("#messages > .message", has_text="after a reload")).not_to_have_class(
            re.compile("message--pending"))

    def test_a_new_avatar_shows_on_everyones_next_page_though_the_old_one_is_cached_for_good(self):
        ada = self.new_page(storage_state=self.states["Person 1"])
        ada.goto(self.server.url + "/rooms/1")
        text = "a face to go with the name %d" % os.getpid()
        ada.get_by_role("textbox", name="Write a message").click()
        ada.keyboard.type(text)
        ada.keyboard.press("Enter")
        expect(ada.locator("#messages > .message", has_text=text)).not_to_have_class(re.compile("message--pending"))

        bob = self.new_page(storage_state=self.states["Person 2"])
        cdp = bob.context.new_cdp_session(bob)
        cdp.send("Network.enable")
        self.load(bob, cdp, lambda: bob.goto(self.server.url + "/rooms/1"))
        avatar = bob.locator("#messages > .message", has_text=text).locator("img.avatar")
        avatar.scroll_into_view_if_needed()
        bob.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=avatar.element_handle())
        initials = avatar.get_attribute("src")
        self.assertEqual(avatar_initials(initials), "P1")  # drawn in the page: never asked for
        again = self.load(bob, cdp, bob.reload)
        self.assertFalse([url for url, _ in again if url.startswith("/users/")], again)

        upload_avatar(ada, self.server.url, (20, 160, 60))

        self.load(bob, cdp, lambda: bob.goto(self.server.url + "/rooms/1"))  # a fresh page, the same cache
        avatar = bob.locator("#messages > .message", has_text=text).locator("img.avatar")
        avatar.scroll_into_view_if_needed()
        self.assertNotEqual(avatar.get_attribute("src"), initials)
        bob.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=avatar.element_handle())
        centre = bob.evaluate("""(img) => {
          const canvas = Object.assign(document.createElement("canvas"), { width: 8, height: 8 })
          const context = canvas.getContext("2d")
          context.drawImage(img, 0, 0, 8, 8)
          return Array.from(context.getImageData(4, 4, 1, 1).data.slice(0, 3))
        }""", avatar.element_handle())
        self.assertTrue(all(abs(got - want) <= 12 for got, want in zip(centre, (20, 160, 60))), centre)
        self.assertRegex(avatar.get_attribute("src"), r"^/users/\d+/avatar\?v=[0-9a-f]{12}$")


# A room's first load: the page, its stylesheet, its icon, its modules (static/'s
# handful, which app.js reaches) and the pictures of its authors who have one.
FIRST_LOAD_MAX_REQUESTS = 12
# A reload: the page itself; the rest comes from the browser's cache.
RELOAD_MAX_REQUESTS = 3


class FirstLoadTests(BrowserApp):
    """A room opened in a fresh browser by a signed-in person, among authors with a
    picture and without one, its requests counted by the DevTools protocol."""

    PEOPLE = {"Person 1": "person1@example.com", "Person 2": "person2@example.com",
              "Person 3": "person3@example.com"}
    load = ReloadTests.load

    def test_a_rooms_first_load_makes_few_requests_and_draws_initials_without_one(self):
        carol = self.new_page(storage_state=self.states["Person 3"])
        upload_avatar(carol, self.server.url, (30, 60, 200))
        carol.context.close()
        # Each author's message follows another's, so each shows its avatar.
        posts = [(person, unique("First load, from %s" % person)) for person in ("Person 3", "Person 1", "Person 2", "Person 3")]
        for person, text in posts:
            self.http(person, "/rooms/1/messages", {"message[body]": "<div>%s</div>" % text,
                                                    "message[client_message_id]": uuid.uuid4().hex}, expect_status=201)

        page = self.new_page(storage_state=self.states["Person 1"])
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        first = self.load(page, cdp, lambda: page.goto(self.server.url + "/rooms/1"))
        network = [url for url, source in first if source == "network"]
        self.assertLessEqual(len(network), FIRST_LOAD_MAX_REQUESTS, first)
        self.assertTrue([url for url in network if url.startswith("/static/app.js?v=")], first)

        for (person, text), initials in zip(posts[1:3], ("P1", "P2")):  # no picture: drawn, right initials
            avatar = self.message(page, text).locator("img.avatar")
            expect(avatar).to_be_visible()
            page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=avatar.element_handle())
            self.assertEqual(avatar_initials(avatar.get_attribute("src")), initials)
            self.assertEqual(self.message(page, text).locator(".message__author").inner_text(), person)
        picture = self.message(page, posts[3][1]).locator("img.avatar")
        expect(picture).to_be_visible()
        page.wait_for_function("(img) => img.complete && img.naturalWidth === 512", arg=picture.element_handle())
        self.assertRegex(picture.get_attribute("src"), r"^/users/\d+/avatar\?v=[0-9a-f]{12}$")
        # The one avatar asked for is the picture.
        self.assertEqual({url for url, _ in first if url.startswith("/users/")}, {picture.get_attribute("src")}, first)

        again = self.load(page, cdp, page.reload)
        network = [url for url, source in again if source == "network"]
        self.assertLessEqual(len(network), RELOAD_MAX_REQUESTS, again)
        self.assertFalse([url for url in network if url.startswith("/static/") or url.startswith("/users/")], again)
        composer = page.get_by_role("textbox", name="Write a message")
        composer.click()
        page.keyboard.type("after the first load")
        page.keyboard.press("Enter")
        expect(self.message(page, "after the first load")).not_to_have_class(re.compile("message--pending"))
