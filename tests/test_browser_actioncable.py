"""Campfire's own Action Cable client (@rails/actioncable, the npm package Rails
ships, as the independent peer of /cable) connects in Chromium, subscribes to a
room and receives a message posted to it.

The package comes from the npm registry: .ci/run unpacks it into tests/.npm/
(`npm pack @rails/actioncable`). Without it this test skips, except in CI."""

import glob
import os
import unittest

from tests.browser import BrowserTestCase, CampfireProcess

ACTIONCABLE_JS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".npm", "package",
                                               "app", "assets", "javascripts", "actioncable.js")))

SUBSCRIBE_AND_RECEIVE = """async (roomId) => {
  const consumer = ActionCable.createConsumer("/cable");
  const received = [];
  const subscribed = await new Promise((resolve) => {
    consumer.subscriptions.create({ channel: "RoomMessagesChannel", room_id: roomId }, {
      connected() { resolve("connected"); },
      rejected() { resolve("rejected"); },
      received(data) { received.push(data); },
    });
    setTimeout(() => resolve("timed out"), 8000);
  });
  if (subscribed !== "connected") return { subscribed };
  const form = new URLSearchParams({ "message[body]": "Hello from the Rails client" });
  const posted = await fetch("/rooms/" + roomId + "/messages", { method: "POST", body: form });
  const deadline = Date.now() + 8000;
  while (!received.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  consumer.disconnect();
  return { subscribed, posted: posted.status, received, protocol: consumer.connection.getProtocol() };
}"""


class RailsActionCableClientTests(BrowserTestCase):
    def setUp(self):
        super().setUp()
        if not ACTIONCABLE_JS:
            message = "@rails/actioncable is not unpacked in tests/.npm (npm pack @rails/actioncable)"
            if os.environ.get("CI"):
                self.fail(message + "; CI must install it")
            self.skipTest(message)
        self.server = CampfireProcess().start()
        self.addCleanup(self.server.cleanup)

    def test_rails_client_subscribes_and_receives_a_posted_message(self):
        page = self.new_page(bypass_csp=True)  # the package is added as a script of the test's own
        page.goto(self.server.url + "/")
        page.get_by_label("Your name").fill("Ada Admin")
        page.get_by_label("Email address").fill("ada@example.com")
        page.get_by_label("Password").fill("a long secret")
        page.get_by_role("button", name="Create account").click()
        page.wait_for_url("**/rooms/*")
        room_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
        with open(ACTIONCABLE_JS[0], encoding="utf-8") as file:
            page.add_script_tag(content=file.read())
        result = page.evaluate(SUBSCRIBE_AND_RECEIVE, room_id)
        self.assertEqual(result["subscribed"], "connected")
        self.assertEqual(result["protocol"], "actioncable-v1-json")
        self.assertEqual(result["posted"], 201)
        appended = [data for data in result["received"] if data.get("action") == "append"]
        self.assertEqual(len(appended), 1, result["received"])
        self.assertIn("Hello from the Rails client", appended[0]["html"])


if __name__ == "__main__":
    unittest.main()
