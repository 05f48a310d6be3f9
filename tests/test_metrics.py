"""GET /metrics in the Prometheus text format, read back by prometheus_client's own
parser (an independent implementation of the format); who may read it; the
connections /up?detail=1 and /metrics report over real sockets."""

import json
import socket
import tracemalloc
import unittest

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (AppTestCase, CableClient, Client, LiveServer, campfire, config_value, first_run_cookie,
                           recv_response, wait_until)
from tests.test_bots import BotTestCase

MESSAGES_ROUTE = "/rooms/<int:room_id>/messages"


def families(text):
    """{family name: Metric} as prometheus_client reads the exposition."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(parsed, family, name=None, **labels):
    """The value of one sample (None when absent): name defaults to the family's own."""
    for found in parsed[family].samples if family in parsed else ():
        if found.name == (name or family) and all(found.labels.get(key) == value for key, value in labels.items()):
            return found.value
    return None


class MetricsTests(AppTestCase):
    def setUp(self):
        super().setUp()
        self.first_run()
        self.room_id = self.app.db.value("SELECT id FROM rooms")

    def scrape(self, client=None):
        response = (client or self.client).get("/metrics")
        self.assertEqual(response.status, 200, response.text[:300])
        self.assertEqual(response.content_type, "text/plain; version=0.0.4; charset=utf-8")
        return families(response.text)

    def post(self, body, client_id):
        return self.client.post("/rooms/%d/messages" % self.room_id,
                                {"message[body]": body, "message[client_message_id]": client_id})

    def test_the_exposition_parses_and_its_families_have_their_types(self):
        parsed = self.scrape()
        types = {name: family.type for name, family in parsed.items()}
        self.assertEqual(types["campfire_http_requests"], "counter")
        self.assertEqual(types["campfire_http_request_duration_seconds"], "histogram")
        self.assertEqual(types["campfire_messages_posted"], "counter")
        for gauge in ("campfire_cable_connections", "campfire_cable_subscriptions", "campfire_http_connections",
                      "campfire_push_queue_depth", "campfire_webhook_queue_depth", "campfire_backup_age_seconds",
                      "campfire_storage_free_bytes", "campfire_storage_low"):
            self.assertEqual(types[gauge], "gauge", gauge)
        self.assertEqual(sample(parsed, "campfire_info", version=campfire.VERSION), 1)
        self.assertIsNone(sample(parsed, "campfire_backup_age_seconds"))  # no backup yet: absent, not 0
        self.assertGreater(sample(parsed, "campfire_storage_free_bytes"), 0)
        self.assertEqual(sample(parsed, "campfire_storage_low"), 0)

    def test_a_post_moves_its_route_counter_its_histogram_and_messages_posted(self):
        before = self.scrape()
        self.assertEqual(self.post("<div>counted</div>", "m1").status, 201)
        self.assertEqual(self.post("", "m2").status, 422)  # an empty message: its own status
        after = self.scrape()
        route = dict(method="POST", route=MESSAGES_ROUTE)
        counted = "campfire_http_requests_total"
        self.assertEqual((sample(after, "campfire_http_requests", counted, status="201", **route) or 0)
                         - (sample(before, "campfire_http_requests", counted, status="201", **route) or 0), 1)
        self.assertEqual(sample(after, "campfire_http_requests", counted, status="422", **route), 1)
        self.assertEqual(sample(after, "campfire_messages_posted", "campfire_messages_posted_total")
                         - sample(before, "campfire_messages_posted", "campfire_messages_posted_total"), 1)
        # The first scrape is counted by the second (/metrics is a route like any other).
        self.assertEqual(sample(after, "campfire_http_requests", counted, method="GET", route="/metrics",
                                status="200"), 1)
        histogram = "campfire_http_request_duration_seconds"
        count = sample(after, histogram, histogram + "_count", **route)
        self.assertEqual(count, 2)
        self.assertEqual(sample(after, histogram, histogram + "_bucket", le="+Inf", **route), 2)
        buckets = [found.value for found in after[histogram].samples
                   if found.name == histogram + "_bucket" and found.labels["route"] == MESSAGES_ROUTE]
        self.assertEqual(buckets, sorted(buckets))  # cumulative
        self.assertEqual(len(buckets), len(campfire.METRICS_LATENCY_BUCKETS) + 1)
        self.assertGreater(sample(after, histogram, histogram + "_sum", **route), 0)

    def test_a_path_no_route_has_is_counted_as_unmatched(self):
        self.assertEqual(self.client.get("/no/such/page/%d" % 12345).status, 404)
        parsed = self.scrape()
        self.assertEqual(sample(parsed, "campfire_http_requests", "campfire_http_requests_total",
                                route="unmatched", status="404"), 1)
        self.assertFalse(any("/no/such" in found.labels.get("route", "") for found in
                             parsed["campfire_http_requests"].samples))  # paths never become labels

    def test_a_webhook_waiting_shows_in_the_queue_depth(self):
        bots = BotTestCase("run")
        bots.app, bots.ada = self.app, self.client
        bots.make_bot("Helper", "http://127.0.0.1:9/hook")
        bob = self.join("Bob", "bob@example.com")
        mention = self.app.store.mention_sgid(self.app.db.value("SELECT id FROM users WHERE name = 'Helper'"))
        body = ('<div><action-text-attachment sgid="%s" content-type="application/vnd.campfire.mention">'
                '</action-text-attachment> deploy</div>' % mention)
        self.assertEqual(bob.post("/rooms/%d/messages" % self.room_id, {"message[body]": body}).status, 201)
        self.assertEqual(len(self.app.webhooks.pending), 1)
        self.assertEqual(sample(self.scrape(), "campfire_webhook_queue_depth"), 1)
        self.app.webhooks.pending.clear()
        self.assertEqual(sample(self.scrape(), "campfire_webhook_queue_depth"), 0)

    def test_label_values_are_escaped_as_the_format_says(self):
        text = campfire.render_metrics(campfire.Metrics(), {}, 'odd "version"\\ with\na newline')
        self.assertEqual(sample(families(text), "campfire_info", version='odd "version"\\ with\na newline'), 1)

    def test_counting_a_request_allocates_nothing_once_its_route_and_status_were_seen(self):
        metrics = campfire.Metrics()
        route = self.app.router.match("POST", "/rooms/1/messages")[0]
        metrics.observe(route, 201, 0.003)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(20000):
                metrics.observe(route, 201, 0.001 * (n % 50))
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertLess(grown, 1024)
        self.assertEqual(metrics.routes[MESSAGES_ROUTE]["POST"].statuses, {201: 20001})


class MetricsAccessTests(AppTestCase):
    def setUp(self):
        super().setUp()
        self.first_run()

    def status(self, address, headers=None):
        return Client(self.app, remote_addr=address).get("/metrics", headers=headers).status

    def test_only_loopback_reads_it_by_default_and_others_get_404(self):
        self.assertEqual(self.status("127.0.0.1"), 200)
        self.assertEqual(self.status("::1"), 200)
        self.assertEqual(self.status("203.0.113.5"), 404)
        self.assertEqual(self.status("10.1.2.3"), 404)
        # Signed in as the administrator changes nothing: the address decides.
        far = Client(self.app, remote_addr="203.0.113.5")
        far.cookies = dict(self.client.cookies)
        self.assertEqual(far.get("/metrics").status, 404)

    def test_metrics_allow_admits_its_addresses_and_ranges(self):
        allowed = campfire.parse_trusted_proxies("203.0.113.0/24, 2001:db8::7", "METRICS_ALLOW")
        with config_value(self.app.config, "metrics_allow", allowed):
            self.assertEqual(self.status("203.0.113.5"), 200)
            self.assertEqual(self.status("2001:db8::7"), 200)
            self.assertEqual(self.status("203.0.114.5"), 404)
            self.assertEqual(self.status("127.0.0.1"), 200)

    def test_forwarded_addresses_count_only_from_trusted_proxies(self):
        allowed = campfire.parse_trusted_proxies("203.0.113.0/24", "METRICS_ALLOW")
        with config_value(self.app.config, "metrics_allow", allowed):
            # An untrusted peer naming an allowed or loopback client: ignored.
            self.assertEqual(self.status("198.51.100.9", {"X-Forwarded-For": "127.0.0.1"}), 404)
            self.assertEqual(self.status("198.51.100.9", {"X-Forwarded-For": "203.0.113.5"}), 404)
            with config_value(self.app.config, "trusted_proxies", campfire.parse_trusted_proxies("127.0.0.1")):
                # Behind a proxy on loopback: the client it names decides, not the proxy.
                self.assertEqual(self.status("127.0.0.1", {"X-Forwarded-For": "198.51.100.9"}), 404)
                self.assertEqual(self.status("127.0.0.1", {"X-Forwarded-For": "203.0.113.5"}), 200)

    def test_metrics_allow_is_read_from_the_environment_and_checked(self):
        config = campfire.Config.from_environment({"METRICS_ALLOW": "10.0.0.0/8 192.0.2.1"})
        self.assertEqual([str(network) for network in config.metrics_allow], ["10.0.0.0/8", "192.0.2.1/32"])
        with self.assertRaisesRegex(campfire.ConfigError, "METRICS_ALLOW must be addresses"):
            campfire.Config.from_environment({"METRICS_ALLOW": "prometheus.internal"})


class LiveConnectionsTests(unittest.TestCase):
    """Over real sockets: open connections and cable subscriptions, as /up?detail=1 and /metrics count them."""

    def setUp(self):
        self.live = LiveServer()
        self.addCleanup(self.live.stop)
        self.cookie = first_run_cookie(self.live.port)
        self.room_id = self.live.call(lambda: self.live.app.db.value("SELECT id FROM rooms"))

    def get(self, path):
        sock = socket.create_connection(("127.0.0.1", self.live.port), timeout=10)
        try:
            sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path).encode())
            status, _, body = recv_response(sock, timeout=10)
            self.assertEqual(status, 200)
            return body.decode()
        finally:
            sock.close()

    def test_cable_connections_subscriptions_and_idle_http_connections_are_reported(self):
        cable = CableClient(self.live.port, cookie=self.cookie, origin="http://127.0.0.1:%d" % self.live.port)
        self.addCleanup(cable.close)
        self.assertEqual(cable.status, 101)
        self.assertEqual(cable.recv_json()["type"], "welcome")
        cable.subscribe("RoomMessagesChannel", room_id=self.room_id)
        cable.subscribe("PresenceChannel", room_id=self.room_id)
        cable.recv_until(lambda message: message.get("type") == "confirm_subscription")
        cable.recv_until(lambda message: message.get("type") == "confirm_subscription")
        idle = [socket.create_connection(("127.0.0.1", self.live.port), timeout=10) for _ in range(3)]
        for sock in idle:
            self.addCleanup(sock.close)
        wait_until(lambda: len(self.live.server.connections) >= 4, message="the idle connections were never seen")
        detail = json.loads(self.get("/up?detail=1"))
        # The three idle ones and the one asking; the cable apart.
        self.assertEqual(detail["connections"], {"http": 4, "cable": 1, "cable_subscriptions": 2})
        parsed = families(self.get("/metrics"))
        self.assertEqual(sample(parsed, "campfire_cable_connections"), 1)
        self.assertEqual(sample(parsed, "campfire_cable_subscriptions"), 2)
        self.assertEqual(sample(parsed, "campfire_http_connections"), 4)
        cable.close()
        wait_until(lambda: sample(families(self.get("/metrics")), "campfire_cable_connections") == 0,
                   message="a closed cable was still counted")


if __name__ == "__main__":
    unittest.main()
