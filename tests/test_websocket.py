import random
import struct
import tracemalloc
import unittest
import zlib

from tests.helpers import campfire  # noqa: F401
from campfire import (
    CLOSE_GOING_AWAY, CLOSE_INVALID_PAYLOAD, CLOSE_MESSAGE_TOO_BIG, CLOSE_NO_STATUS,
    CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, DEFLATE_RESPONSE, MAX_CONTROL_PAYLOAD,
    MAX_MESSAGE_FRAGMENTS, MAX_WEBSOCKET_MESSAGE_BYTES, OPCODE_BINARY, OPCODE_CLOSE, OPCODE_CONTINUATION,
    OPCODE_PING, OPCODE_PONG, OPCODE_TEXT, BinaryMessage, CloseReceived, HandshakeRefused,
    Ping, Pong, TextMessage, WebSocketProtocol, WebSocketState, check_handshake,
    encode_frame, encode_message, negotiate_deflate, websocket_accept,
)

RFC_MASK = bytes.fromhex("37fa213d")  # the masking key of RFC 6455 §5.7's examples
TRAILING = bytes((0x89, 0x80, 0x01, 0x02))  # the start of a masked, empty ping


def client_frame(opcode, payload=b"", *, fin=True, rsv1=False, rsv2=False, mask=RFC_MASK, masked=True):
    """A client frame, built independently of the code under test (a plain
    per-byte XOR and explicit length encodings)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0) | opcode
    mask_bit = 0x80 if masked else 0
    length = len(payload)
    if length < 126:
        header = bytes((first, mask_bit | length))
    elif length < 65536:
        header = bytes((first, mask_bit | 126)) + struct.pack("!H", length)
    else:
        header = bytes((first, mask_bit | 127)) + struct.pack("!Q", length)
    if not masked:
        return header + payload
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def client_close(code=None, reason=b""):
    return client_frame(OPCODE_CLOSE, b"" if code is None else struct.pack("!H", code) + reason)


def client_deflate(data):
    """Compress one message as a client without context takeover (RFC 7692 §7.2.1)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    compressed = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert compressed.endswith(b"\x00\x00\xff\xff")
    return compressed[:-4]


def parse_server_frames(data):
    """Split server output into (fin, rsv1, opcode, payload); server frames
    are never masked (RFC 6455 §5.1)."""
    frames, pos = [], 0
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        assert not second & 0x80, "server frames must not be masked"
        length, pos = second & 0x7F, pos + 2
        if length == 126:
            (length,), pos = struct.unpack("!H", data[pos : pos + 2]), pos + 2
        elif length == 127:
            (length,), pos = struct.unpack("!Q", data[pos : pos + 8]), pos + 8
        frames.append((bool(first & 0x80), bool(first & 0x40), first & 0x0F, data[pos : pos + length]))
        pos += length
        assert pos <= len(data), "truncated server frame"
    return frames


def close_payload(code):
    return struct.pack("!H", code)


def run(chunks, **kwargs):
    protocol = WebSocketProtocol(**kwargs)
    events, sent = [], b""
    for chunk in chunks:
        protocol.receive_data(chunk)
        events += protocol.events_received()
        sent += protocol.data_to_send()
    return protocol, events, sent


class FeedTestCase(unittest.TestCase):
    def feed(self, data, **kwargs):
        """Feed `data` whole, one byte at a time and followed by the start of
        another frame; all three must agree. Returns (protocol, events, sent)."""
        whole = run([data], **kwargs)
        bytewise = run([data[i : i + 1] for i in range(len(data))], **kwargs)
        trailing = run([data + TRAILING], **kwargs)
        for label, (protocol, events, sent) in (("bytewise", bytewise), ("trailing", trailing)):
            with self.subTest(feed=label):
                self.assertEqual(events, whole[1])
                self.assertEqual(sent, whole[2])
                self.assertIs(protocol.state, whole[0].state)
                self.assertEqual(protocol.close_code, whole[0].close_code)
        protocol = trailing[0]
        if protocol.state is not WebSocketState.CLOSED:  # the trailing bytes were kept
            protocol.receive_data(b"\x03\x04")
            self.assertEqual(protocol.events_received(), [Ping(b"")])
            expected = encode_frame(OPCODE_PONG, b"") if protocol.state is WebSocketState.OPEN else b""
            self.assertEqual(protocol.data_to_send(), expected)
        return whole

    def assertFailsWith(self, data, code, **kwargs):
        protocol, events, sent = self.feed(data, **kwargs)
        self.assertIs(protocol.state, WebSocketState.CLOSED)
        self.assertEqual(protocol.close_code, code)
        frames = parse_server_frames(sent)
        self.assertEqual(frames[-1][2], OPCODE_CLOSE)
        self.assertEqual(frames[-1][3][:2], close_payload(code))
        return events


class RfcExampleTests(FeedTestCase):
    """RFC 6455 §5.7."""

    def test_encode_single_frame_unmasked_hello(self):
        self.assertEqual(encode_frame(OPCODE_TEXT, b"Hello"), bytes.fromhex("810548656c6c6f"))

    def test_encode_fragmented_unmasked_hello(self):
        self.assertEqual(encode_frame(OPCODE_TEXT, b"Hel", fin=False), bytes.fromhex("010348656c"))
        self.assertEqual(encode_frame(OPCODE_CONTINUATION, b"lo"), bytes.fromhex("80026c6f"))

    def test_encode_unmasked_ping_hello(self):
        self.assertEqual(encode_frame(OPCODE_PING, b"Hello"), bytes.fromhex("890548656c6c6f"))

    def test_encode_256_byte_binary_uses_16_bit_length(self):
        frame = encode_frame(OPCODE_BINARY, bytes(256))
        self.assertEqual(frame[:4], bytes.fromhex("827e0100"))
        self.assertEqual(len(frame), 4 + 256)

    def test_encode_64_kib_binary_uses_64_bit_length(self):
        frame = encode_frame(OPCODE_BINARY, bytes(65536))
        self.assertEqual(frame[:10], bytes.fromhex("827f0000000000010000"))
        self.assertEqual(len(frame), 10 + 65536)

    def test_encode_length_boundaries(self):
        for length, header in ((125, 2), (126, 4), (65535, 4), (65536, 10)):
            with self.subTest(length=length):
                self.assertEqual(len(encode_frame(OPCODE_BINARY, bytes(length))), header + length)

    def test_receive_masked_hello(self):
        _, events, sent = self.feed(bytes.fromhex("818537fa213d7f9f4d5158"))
        self.assertEqual(events, [TextMessage("Hello")])
        self.assertEqual(sent, b"")

    def test_helper_builds_the_rfc_masked_hello(self):
        self.assertEqual(client_frame(OPCODE_TEXT, b"Hello"), bytes.fromhex("818537fa213d7f9f4d5158"))

    def test_receive_fragmented_hello(self):
        data = client_frame(OPCODE_TEXT, b"Hel", fin=False) + client_frame(OPCODE_CONTINUATION, b"lo")
        _, events, _ = self.feed(data)
        self.assertEqual(events, [TextMessage("Hello")])

    def test_receive_ping_is_answered_with_unmasked_pong(self):
        _, events, sent = self.feed(client_frame(OPCODE_PING, b"Hello"))
        self.assertEqual(events, [Ping(b"Hello")])
        self.assertEqual(sent, bytes.fromhex("8a0548656c6c6f"))

    def test_receive_masked_pong_hello(self):
        _, events, sent = self.feed(bytes.fromhex("8a8537fa213d7f9f4d5158"))
        self.assertEqual(events, [Pong(b"Hello")])
        self.assertEqual(sent, b"")

    def test_receive_256_byte_binary(self):
        payload = bytes(range(256))
        data = client_frame(OPCODE_BINARY, payload)
        self.assertEqual(data[:4], bytes.fromhex("82fe0100"))
        _, events, _ = self.feed(data)
        self.assertEqual(events, [BinaryMessage(payload)])

    def test_receive_64_kib_binary(self):
        payload = random.Random(1).randbytes(65536)
        data = client_frame(OPCODE_BINARY, payload)
        self.assertEqual(data[:10], bytes.fromhex("82ff0000000000010000"))
        _, events, _ = self.feed(data)
        self.assertEqual(events, [BinaryMessage(payload)])


class ReceiveTests(FeedTestCase):
    def test_several_messages_in_one_chunk(self):
        data = client_frame(OPCODE_TEXT, b"one") + client_frame(OPCODE_TEXT, b"two") + client_frame(OPCODE_BINARY, b"")
        _, events, _ = self.feed(data)
        self.assertEqual(events, [TextMessage("one"), TextMessage("two"), BinaryMessage(b"")])

    def test_empty_text_message(self):
        _, events, _ = self.feed(client_frame(OPCODE_TEXT, b""))
        self.assertEqual(events, [TextMessage("")])

    def test_control_frames_between_fragments(self):
        data = (
            client_frame(OPCODE_BINARY, b"ab", fin=False)
            + client_frame(OPCODE_PING, b"p")
            + client_frame(OPCODE_CONTINUATION, b"", fin=False)
            + client_frame(OPCODE_PONG, b"q")
            + client_frame(OPCODE_CONTINUATION, b"cd")
        )
        _, events, sent = self.feed(data)
        self.assertEqual(events, [Ping(b"p"), Pong(b"q"), BinaryMessage(b"abcd")])
        self.assertEqual(sent, encode_frame(OPCODE_PONG, b"p"))

    def test_bytearray_and_memoryview_input(self):
        for data in (bytearray(client_frame(OPCODE_TEXT, b"hi")), memoryview(client_frame(OPCODE_TEXT, b"hi"))):
            protocol = WebSocketProtocol()
            protocol.receive_data(data)
            self.assertEqual(protocol.events_received(), [TextMessage("hi")])

    def test_nothing_is_buffered_when_idle(self):
        protocol = WebSocketProtocol()
        protocol.receive_data(client_frame(OPCODE_TEXT, b"hello")[:4])
        self.assertEqual(protocol.events_received(), [])
        protocol.receive_data(client_frame(OPCODE_TEXT, b"hello")[4:])
        self.assertEqual(protocol.events_received(), [TextMessage("hello")])
        self.assertEqual((protocol._buffer, protocol._partial, protocol._events, protocol._outgoing), (b"", None, None, b""))
        self.assertFalse(hasattr(protocol, "__dict__"))

    def test_decoding_many_small_frames(self):
        # Performance sanity, not a timed assert: on a laptop one small masked
        # text frame decodes in about 2 µs (receive_data + events_received).
        protocol = WebSocketProtocol()
        protocol.receive_data(bytes.fromhex("818537fa213d7f9f4d5158") * 10_000)
        self.assertEqual(protocol.events_received(), [TextMessage("Hello")] * 10_000)


class ProtocolErrorTests(FeedTestCase):
    def test_unmasked_client_frame(self):
        self.assertFailsWith(bytes.fromhex("810548656c6c6f"), CLOSE_PROTOCOL_ERROR)

    def test_reserved_bit_without_extension(self):
        self.assertFailsWith(client_frame(OPCODE_TEXT, b"x", rsv1=True), CLOSE_PROTOCOL_ERROR)

    def test_rsv2_even_with_deflate(self):
        self.assertFailsWith(client_frame(OPCODE_TEXT, b"x", rsv2=True), CLOSE_PROTOCOL_ERROR, deflate=True)

    def test_rsv1_on_continuation_with_deflate(self):
        data = client_frame(OPCODE_TEXT, b"x", fin=False) + client_frame(OPCODE_CONTINUATION, b"y", rsv1=True)
        self.assertFailsWith(data, CLOSE_PROTOCOL_ERROR, deflate=True)

    def test_rsv1_on_control_frame_with_deflate(self):
        self.assertFailsWith(client_frame(OPCODE_PING, b"", rsv1=True), CLOSE_PROTOCOL_ERROR, deflate=True)

    def test_unknown_opcodes(self):
        for opcode in (0x3, 0x7, 0xB, 0xF):
            with self.subTest(opcode=opcode):
                self.assertFailsWith(client_frame(opcode, b"x"), CLOSE_PROTOCOL_ERROR)

    def test_control_frame_over_125_bytes(self):
        data = client_frame(OPCODE_PING, bytes(MAX_CONTROL_PAYLOAD + 1))
        self.assertFailsWith(data[:4], CLOSE_PROTOCOL_ERROR)  # refused on its header
        self.assertFailsWith(data, CLOSE_PROTOCOL_ERROR)

    def test_control_frame_of_125_bytes_is_fine(self):
        _, events, _ = self.feed(client_frame(OPCODE_PING, bytes(MAX_CONTROL_PAYLOAD)))
        self.assertEqual(events, [Ping(bytes(MAX_CONTROL_PAYLOAD))])

    def test_fragmented_control_frame(self):
        self.assertFailsWith(client_frame(OPCODE_PING, b"x", fin=False), CLOSE_PROTOCOL_ERROR)

    def test_continuation_without_start(self):
        self.assertFailsWith(client_frame(OPCODE_CONTINUATION, b"x"), CLOSE_PROTOCOL_ERROR)

    def test_new_data_frame_inside_fragmented_message(self):
        data = client_frame(OPCODE_TEXT, b"a", fin=False) + client_frame(OPCODE_TEXT, b"b")
        self.assertFailsWith(data, CLOSE_PROTOCOL_ERROR)

    def test_64_bit_length_with_top_bit_set(self):
        self.assertFailsWith(bytes((0x82, 0xFF)) + b"\x80" + bytes(7), CLOSE_PROTOCOL_ERROR)

    def test_messages_before_the_error_are_kept_and_input_after_it_ignored(self):
        data = client_frame(OPCODE_TEXT, b"ok") + client_frame(OPCODE_CONTINUATION, b"x") + client_frame(OPCODE_TEXT, b"late")
        events = self.assertFailsWith(data, CLOSE_PROTOCOL_ERROR)
        self.assertEqual(events, [TextMessage("ok")])

    def test_failing_close_carries_a_reason(self):
        _, _, sent = self.feed(client_frame(OPCODE_CONTINUATION, b"x"))
        (_, _, opcode, payload), = parse_server_frames(sent)
        self.assertEqual(payload[:2], close_payload(CLOSE_PROTOCOL_ERROR))
        self.assertTrue(payload[2:].decode())


class CloseTests(FeedTestCase):
    def test_close_is_echoed_and_closes(self):
        protocol, events, sent = self.feed(client_close(CLOSE_NORMAL, b"bye"))
        self.assertEqual(events, [CloseReceived(CLOSE_NORMAL, "bye")])
        self.assertEqual(sent, bytes.fromhex("880203e8"))
        self.assertIs(protocol.state, WebSocketState.CLOSED)
        self.assertEqual(protocol.close_code, CLOSE_NORMAL)

    def test_valid_codes_are_echoed(self):
        for code in (1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999):
            with self.subTest(code=code):
                protocol, events, sent = self.feed(client_close(code, "é".encode()))
                self.assertEqual(events, [CloseReceived(code, "é")])
                self.assertEqual(sent, encode_frame(OPCODE_CLOSE, close_payload(code)))
                self.assertEqual(protocol.close_code, code)

    def test_empty_close_is_answered_with_empty_close(self):
        protocol, events, sent = self.feed(client_close())
        self.assertEqual(events, [CloseReceived(CLOSE_NO_STATUS, "")])
        self.assertEqual(sent, bytes.fromhex("8800"))
        self.assertIs(protocol.state, WebSocketState.CLOSED)

    def test_invalid_close_codes(self):
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535):
            with self.subTest(code=code):
                events = self.assertFailsWith(client_close(code), CLOSE_PROTOCOL_ERROR)
                self.assertEqual(events, [])

    def test_one_byte_close_payload(self):
        self.assertFailsWith(client_frame(OPCODE_CLOSE, b"\x03"), CLOSE_PROTOCOL_ERROR)

    def test_close_reason_not_utf8(self):
        self.assertFailsWith(client_close(CLOSE_NORMAL, b"\xff"), CLOSE_PROTOCOL_ERROR)

    def test_input_after_close_is_ignored(self):
        _, events, sent = self.feed(client_close(CLOSE_NORMAL) + client_frame(OPCODE_PING, b"x"))
        self.assertEqual(events, [CloseReceived(CLOSE_NORMAL, "")])
        self.assertEqual(sent, bytes.fromhex("880203e8"))

    def test_server_initiated_close_waits_for_the_client(self):
        protocol = WebSocketProtocol()
        protocol.close(CLOSE_GOING_AWAY, "restarting")
        self.assertIs(protocol.state, WebSocketState.CLOSING)
        self.assertEqual(protocol.data_to_send(), encode_frame(OPCODE_CLOSE, close_payload(1001) + b"restarting"))
        protocol.send_text("dropped")
        protocol.send_ping()
        protocol.close()
        self.assertEqual(protocol.data_to_send(), b"")
        # Data still in flight from the client is read and discarded; pings get no pong.
        protocol.receive_data(client_frame(OPCODE_TEXT, b"late") + client_frame(OPCODE_PING, b"p"))
        self.assertEqual(protocol.events_received(), [Ping(b"p")])
        self.assertEqual(protocol.data_to_send(), b"")
        protocol.receive_data(client_close(CLOSE_NORMAL))
        self.assertEqual(protocol.events_received(), [CloseReceived(CLOSE_NORMAL, "")])
        self.assertEqual(protocol.data_to_send(), b"")
        self.assertIs(protocol.state, WebSocketState.CLOSED)
        self.assertEqual(protocol.close_code, CLOSE_GOING_AWAY)

    def test_protocol_error_while_closing_sends_nothing_more(self):
        protocol = WebSocketProtocol()
        protocol.close()
        protocol.data_to_send()
        protocol.receive_data(client_frame(OPCODE_CONTINUATION, b"x"))
        self.assertIs(protocol.state, WebSocketState.CLOSED)
        self.assertEqual(protocol.data_to_send(), b"")
        self.assertEqual(protocol.close_code, CLOSE_NORMAL)

    def test_close_refuses_invalid_arguments(self):
        protocol = WebSocketProtocol()
        for code, reason in ((1005, ""), (999, ""), (1000, "x" * 124)):
            with self.subTest(code=code), self.assertRaises(ValueError):
                protocol.close(code, reason)
        with self.assertRaises(ValueError):
            protocol.send_ping(bytes(126))
        self.assertIs(protocol.state, WebSocketState.OPEN)


class BoundedInputTests(FeedTestCase):
    def test_a_message_in_too_many_fragments_closes_with_1009(self):
        empty = client_frame(OPCODE_CONTINUATION, b"", fin=False)
        within = client_frame(OPCODE_TEXT, b"a", fin=False) + empty * (MAX_MESSAGE_FRAGMENTS - 2) + \
            client_frame(OPCODE_CONTINUATION, b"b")
        _, events, _ = self.feed(within)
        self.assertEqual(events, [TextMessage("ab")])
        self.assertFailsWith(client_frame(OPCODE_TEXT, b"a", fin=False) + empty * MAX_MESSAGE_FRAGMENTS,
                             CLOSE_MESSAGE_TOO_BIG)

    def test_empty_fragments_grow_no_memory(self):
        protocol = WebSocketProtocol()
        protocol.receive_data(client_frame(OPCODE_TEXT, b"x", fin=False))
        empty = client_frame(OPCODE_CONTINUATION, b"", fin=False) * 100
        tracemalloc.start()
        try:
            for _ in range(MAX_MESSAGE_FRAGMENTS // 100 - 1):
                protocol.receive_data(empty)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertIs(protocol.state, WebSocketState.OPEN)
        self.assertLess(peak, 64 * 1024)

    def test_data_after_our_close_is_skipped_unread(self):
        protocol = WebSocketProtocol(deflate=True)
        protocol.receive_data(client_frame(OPCODE_TEXT, b"start", fin=False))
        protocol.close(CLOSE_GOING_AWAY)
        protocol.data_to_send()
        big = client_frame(OPCODE_CONTINUATION, bytes(60000), fin=False)
        tracemalloc.start()
        try:
            for _ in range(MAX_MESSAGE_FRAGMENTS * 2):  # past both limits, had they applied
                protocol.receive_data(big)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertIs(protocol.state, WebSocketState.CLOSING)
        self.assertLess(peak, 1024 * 1024)
        self.assertEqual(protocol.events_received(), [])
        protocol.receive_data(client_close(CLOSE_NORMAL))
        self.assertIs(protocol.state, WebSocketState.CLOSED)

    def test_nothing_is_sent_after_our_close(self):
        protocol = WebSocketProtocol()
        frame = encode_message("broadcast", deflate=False)
        protocol.send_frame(frame)
        self.assertEqual(protocol.data_to_send(), frame)
        protocol.close()
        protocol.data_to_send()
        protocol.send_frame(frame)
        protocol.send_text("late")
        protocol.send_ping()
        self.assertEqual(protocol.data_to_send(), b"")


class Utf8Tests(FeedTestCase):
    def test_invalid_utf8(self):
        self.assertFailsWith(client_frame(OPCODE_TEXT, b"caf\xff"), CLOSE_INVALID_PAYLOAD)

    def test_surrogate_is_invalid(self):
        self.assertFailsWith(client_frame(OPCODE_TEXT, b"\xed\xa0\x80"), CLOSE_INVALID_PAYLOAD)

    def test_character_split_across_fragments(self):
        data = client_frame(OPCODE_TEXT, b"caf\xc3", fin=False) + client_frame(OPCODE_CONTINUATION, b"\xa9!")
        _, events, _ = self.feed(data)
        self.assertEqual(events, [TextMessage("café!")])

    def test_invalid_sequence_fails_on_the_first_fragment(self):
        # The message never finishes: the first fragment alone is enough.
        self.assertFailsWith(client_frame(OPCODE_TEXT, b"ok\xf4\x90", fin=False), CLOSE_INVALID_PAYLOAD)

    def test_truncated_character_at_the_end(self):
        data = client_frame(OPCODE_TEXT, b"caf\xc3", fin=False) + client_frame(OPCODE_CONTINUATION, b"")
        self.assertFailsWith(data, CLOSE_INVALID_PAYLOAD)

    def test_binary_is_not_checked(self):
        _, events, _ = self.feed(client_frame(OPCODE_BINARY, b"\xff"))
        self.assertEqual(events, [BinaryMessage(b"\xff")])


class SizeTests(FeedTestCase):
    def test_declared_length_over_limit_fails_before_the_payload(self):
        header = bytes((0x82, 0xFF)) + struct.pack("!Q", MAX_WEBSOCKET_MESSAGE_BYTES + 1) + RFC_MASK
        self.assertFailsWith(header, CLOSE_MESSAGE_TOO_BIG)
        self.assertFailsWith(header[:10], CLOSE_MESSAGE_TOO_BIG)

    def test_message_at_the_limit_is_accepted(self):
        _, events, _ = self.feed(client_frame(OPCODE_BINARY, bytes(100)), max_message_bytes=100)
        self.assertEqual(events, [BinaryMessage(bytes(100))])

    def test_small_limit_with_16_bit_length(self):
        self.assertFailsWith(client_frame(OPCODE_TEXT, b"x" * 200)[:4], CLOSE_MESSAGE_TOO_BIG, max_message_bytes=199)

    def test_fragments_summing_over_the_limit(self):
        data = client_frame(OPCODE_BINARY, bytes(60), fin=False) + client_frame(OPCODE_CONTINUATION, bytes(41))
        events = self.assertFailsWith(data, CLOSE_MESSAGE_TOO_BIG, max_message_bytes=100)
        self.assertEqual(events, [])

    def test_control_frames_do_not_count_towards_the_limit(self):
        data = (
            client_frame(OPCODE_BINARY, bytes(60), fin=False)
            + client_frame(OPCODE_PING, bytes(100))
            + client_frame(OPCODE_CONTINUATION, bytes(40))
        )
        _, events, _ = self.feed(data, max_message_bytes=100)
        self.assertEqual(events, [Ping(bytes(100)), BinaryMessage(bytes(100))])


class DeflateTests(FeedTestCase):
    def test_compressed_client_message(self):
        text = "Hello, campfire! " * 20
        _, events, _ = self.feed(client_frame(OPCODE_TEXT, client_deflate(text.encode()), rsv1=True), deflate=True)
        self.assertEqual(events, [TextMessage(text)])

    def test_compressed_messages_are_independent(self):
        data = b"".join(client_frame(OPCODE_TEXT, client_deflate(t), rsv1=True) for t in (b"same same", b"same same"))
        _, events, _ = self.feed(data, deflate=True)
        self.assertEqual(events, [TextMessage("same same")] * 2)

    def test_compressed_fragmented_message(self):
        text = "".join(chr(0x4E00 + i) for i in range(500))  # multi-byte characters
        compressed = client_deflate(text.encode())
        third = len(compressed) // 3
        data = (
            client_frame(OPCODE_TEXT, compressed[:third], fin=False, rsv1=True)
            + client_frame(OPCODE_PING, b"")
            + client_frame(OPCODE_CONTINUATION, compressed[third : 2 * third], fin=False)
            + client_frame(OPCODE_CONTINUATION, compressed[2 * third :])
        )
        _, events, _ = self.feed(data, deflate=True)
        self.assertEqual(events, [Ping(b""), TextMessage(text)])

    def test_uncompressed_message_on_deflate_connection(self):
        _, events, _ = self.feed(client_frame(OPCODE_TEXT, b"plain"), deflate=True)
        self.assertEqual(events, [TextMessage("plain")])

    def test_compressed_binary_message(self):
        _, events, _ = self.feed(client_frame(OPCODE_BINARY, client_deflate(bytes(1000)), rsv1=True), deflate=True)
        self.assertEqual(events, [BinaryMessage(bytes(1000))])

    def test_empty_compressed_message(self):
        # RFC 7692 §7.2.3.6: an empty message may be a single 0x00 byte.
        _, events, _ = self.feed(client_frame(OPCODE_TEXT, b"\x00", rsv1=True), deflate=True)
        self.assertEqual(events, [TextMessage("")])

    def test_corrupt_compressed_data(self):
        self.assertFailsWith(client_frame(OPCODE_TEXT, b"\xff\xff\xff", rsv1=True), CLOSE_PROTOCOL_ERROR, deflate=True)

    def test_compressed_invalid_utf8(self):
        data = client_frame(OPCODE_TEXT, client_deflate(b"abc\xff" * 50), rsv1=True)
        self.assertFailsWith(data, CLOSE_INVALID_PAYLOAD, deflate=True)

    def test_encode_message_deflated_decodes_with_raw_inflater(self):
        text = '{"identifier":"{\\"channel\\":\\"RoomMessagesChannel\\"}","message":"' + "<p>hi</p>" * 100 + '"}'
        frame = encode_message(text, deflate=True)
        (fin, rsv1, opcode, payload), = parse_server_frames(frame)
        self.assertEqual((fin, rsv1, opcode), (True, True, OPCODE_TEXT))
        self.assertLess(len(payload), len(text) // 4)
        inflater = zlib.decompressobj(wbits=-15)
        self.assertEqual(inflater.decompress(payload + b"\x00\x00\xff\xff").decode(), text)

    def test_encode_message_sends_short_or_incompressible_text_plain(self):
        for text in ("", '{"type":"ping","message":1700000000}', random.Random(2).randbytes(300).hex()[:300]):
            with self.subTest(length=len(text)):
                frame = encode_message(text, deflate=True)
                if len(text) < 300:
                    self.assertEqual(frame, encode_frame(OPCODE_TEXT, text.encode()))
                (_, rsv1, _, payload), = parse_server_frames(frame)
                data = zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff") if rsv1 else payload
                self.assertEqual(data.decode(), text)

    def test_encode_message_plain(self):
        self.assertEqual(encode_message("Hello", deflate=False), bytes.fromhex("810548656c6c6f"))

    def test_send_text_follows_the_negotiation(self):
        text = "a long enough message " * 10
        for deflate in (False, True):
            protocol = WebSocketProtocol(deflate=deflate)
            protocol.send_text(text)
            self.assertEqual(protocol.data_to_send(), encode_message(text, deflate=deflate))

    def test_round_trip_through_a_client_view(self):
        text = "round trip " * 50
        (_, rsv1, _, payload), = parse_server_frames(encode_message(text, deflate=True))
        _, events, _ = self.feed(client_frame(OPCODE_TEXT, payload, rsv1=rsv1), deflate=True)
        self.assertEqual(events, [TextMessage(text)])

    @staticmethod
    def zip_bomb(megabytes):
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        block = bytes(1024 * 1024)
        compressed = b"".join(compressor.compress(block) for _ in range(megabytes))
        return (compressed + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]

    def test_zip_bomb_fails_with_1009(self):
        data = client_frame(OPCODE_TEXT, self.zip_bomb(16), rsv1=True)
        self.assertLess(len(data), 64 * 1024)
        self.assertFailsWith(data, CLOSE_MESSAGE_TOO_BIG, deflate=True)

    def test_zip_bomb_is_not_inflated_whole(self):
        data = client_frame(OPCODE_TEXT, self.zip_bomb(64), rsv1=True)
        protocol = WebSocketProtocol(deflate=True)
        tracemalloc.start()
        try:
            protocol.receive_data(data)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(protocol.close_code, CLOSE_MESSAGE_TOO_BIG)
        self.assertLess(peak, 4 * MAX_WEBSOCKET_MESSAGE_BYTES)  # the bomb inflates to 64 MiB

    def test_fragmented_zip_bomb_fails_with_1009(self):
        bomb = self.zip_bomb(4)
        half = len(bomb) // 2
        data = client_frame(OPCODE_BINARY, bomb[:half], fin=False, rsv1=True) + client_frame(OPCODE_CONTINUATION, bomb[half:])
        self.assertFailsWith(data, CLOSE_MESSAGE_TOO_BIG, deflate=True)

    def test_compressed_message_exactly_at_the_limit(self):
        data = client_frame(OPCODE_BINARY, client_deflate(bytes(1000)), rsv1=True)
        _, events, _ = self.feed(data, deflate=True, max_message_bytes=1000)
        self.assertEqual(events, [BinaryMessage(bytes(1000))])
        self.assertFailsWith(data, CLOSE_MESSAGE_TOO_BIG, deflate=True, max_message_bytes=999)


class HandshakeTests(unittest.TestCase):
    def headers(self, **overrides):
        headers = {
            "host": "example.com",
            "upgrade": "websocket",
            "connection": "Upgrade",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            "sec-websocket-version": "13",
        }
        headers.update({name.replace("_", "-"): value for name, value in overrides.items()})
        return {name: value for name, value in headers.items() if value is not None}

    def refused(self, method="GET", **overrides):
        with self.assertRaises(HandshakeRefused) as caught:
            check_handshake(method, self.headers(**overrides))
        return caught.exception

    def test_rfc_accept_example(self):
        self.assertEqual(websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_valid_handshake(self):
        result = check_handshake("GET", self.headers())
        self.assertEqual(result, {"accept": "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "subprotocol": None, "deflate": None})

    def test_header_tokens_are_case_insensitive_lists(self):
        result = check_handshake("GET", self.headers(upgrade="WebSocket", connection="keep-alive, Upgrade"))
        self.assertEqual(result["accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def upgrade_bytes(self, **overrides):
        """The 101 the application answers for /cable (what the server writes), without a session."""
        from tests.helpers import make_app
        app = make_app()
        self.addCleanup(app.close)
        headers = self.headers(**overrides)
        request = campfire.Request("GET", "/cable", "HTTP/1.1", headers)
        response = app.handle(request)
        return app.serialize(request, response, keep_alive=True)

    def test_response_bytes(self):
        response = self.upgrade_bytes(sec_websocket_protocol="actioncable-v1-json, actioncable-unsupported",
                                      sec_websocket_extensions="permessage-deflate; client_max_window_bits")
        head = response.split(b"\r\n\r\n")[0].split(b"\r\n")
        self.assertEqual(head[0], b"HTTP/1.1 101 Switching Protocols")
        for line in (b"Upgrade: websocket", b"Connection: Upgrade",
                     b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                     b"Sec-WebSocket-Protocol: actioncable-v1-json",
                     b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
                     b"client_no_context_takeover"):
            self.assertIn(line, head)
        self.assertTrue(response.endswith(b"\r\n\r\n"))  # a 101 has no body (RFC 9110 §15.2)
        self.assertNotIn(b"Content-Length", response)

    def test_plain_response_has_no_optional_headers(self):
        response = self.upgrade_bytes()
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", response)
        self.assertNotIn(b"Sec-WebSocket-Protocol", response)
        self.assertNotIn(b"Sec-WebSocket-Extensions", response)

    def test_missing_key(self):
        self.assertEqual(self.refused(sec_websocket_key=None).status, 400)

    def test_key_not_base64(self):
        for key in ("not base64 at all!!!!!!=", "dGhlIHNhbXBsZSBub25jZQ", "é" * 24):
            with self.subTest(key=key):
                self.assertEqual(self.refused(sec_websocket_key=key).status, 400)

    def test_key_of_wrong_length(self):
        for key in ("dGhlIHNhbXBsZSBub25j", "dGhlIHNhbXBsZSBub25jZQ==" * 2):
            with self.subTest(key=key):
                self.assertEqual(self.refused(sec_websocket_key=key).status, 400)

    def test_version_8_gets_426_with_our_version(self):
        refused = self.refused(sec_websocket_version="8")
        self.assertEqual(refused.status, 426)
        self.assertEqual(refused.headers, [("Sec-WebSocket-Version", "13")])
        self.assertTrue(refused.reason)

    def test_missing_version_gets_426(self):
        self.assertEqual(self.refused(sec_websocket_version=None).status, 426)

    def test_non_get(self):
        refused = self.refused("POST")
        self.assertEqual((refused.status, refused.headers), (400, []))

    def test_missing_upgrade_or_connection(self):
        for overrides in ({"upgrade": None}, {"upgrade": "h2c"}, {"connection": None}, {"connection": "keep-alive"}):
            with self.subTest(**overrides):
                self.assertEqual(self.refused(**overrides).status, 400)

    def test_subprotocol_selection(self):
        for offered, chosen in (
            ("actioncable-v1-json, actioncable-unsupported", "actioncable-v1-json"),
            ("actioncable-unsupported,actioncable-v1-json", "actioncable-v1-json"),
            ("chat, superchat", None),
            (None, None),
        ):
            with self.subTest(offered=offered):
                self.assertEqual(check_handshake("GET", self.headers(sec_websocket_protocol=offered))["subprotocol"], chosen)

    def test_deflate_negotiation(self):
        accepted = DEFLATE_RESPONSE
        with_server_bits = DEFLATE_RESPONSE + "; server_max_window_bits=15"
        for offer, answer in (
            ("permessage-deflate", accepted),
            ("permessage-deflate; client_max_window_bits", accepted),  # what browsers send
            ("permessage-deflate; client_max_window_bits=10", accepted),
            ('permessage-deflate; client_max_window_bits="10"', accepted),
            ("permessage-deflate; server_no_context_takeover; client_no_context_takeover", accepted),
            ("permessage-deflate; server_max_window_bits=15", with_server_bits),
            ("permessage-deflate; server_max_window_bits=10", None),
            ("permessage-deflate; server_max_window_bits", None),
            ("permessage-deflate; client_max_window_bits=16", None),
            ("permessage-deflate; client_max_window_bits=7", None),
            ("permessage-deflate; client_max_window_bits=09", None),
            ("permessage-deflate; client_max_window_bits=abc", None),
            ("permessage-deflate; server_no_context_takeover=1", None),
            ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
            ("permessage-deflate; mystery", None),
            ("permessage-deflate; server_max_window_bits=10, permessage-deflate", accepted),
            ("x-webkit-deflate-frame", None),
            ("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits", accepted),
            ("", None),
        ):
            with self.subTest(offer=offer):
                self.assertEqual(negotiate_deflate(offer), answer)
                self.assertEqual(check_handshake("GET", self.headers(sec_websocket_extensions=offer))["deflate"], answer)


class FuzzTests(unittest.TestCase):
    SEED = 6455
    INPUTS = 20_000

    def valid_frames(self):
        text = client_deflate("compressed message ".encode() * 8)
        return [
            client_frame(OPCODE_TEXT, b"Hello"),
            client_frame(OPCODE_TEXT, "héllo wörld".encode()),
            client_frame(OPCODE_BINARY, bytes(300)),
            client_frame(OPCODE_TEXT, b"frag", fin=False) + client_frame(OPCODE_CONTINUATION, b"ment"),
            client_frame(OPCODE_TEXT, text, rsv1=True),
            client_frame(OPCODE_TEXT, text[:10], fin=False, rsv1=True) + client_frame(OPCODE_CONTINUATION, text[10:]),
            client_frame(OPCODE_PING, b"ping"),
            client_frame(OPCODE_PONG, b""),
            client_close(CLOSE_NORMAL, b"bye"),
            client_close(),
        ]

    def mutate(self, rng, data):
        data = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            choice = rng.randrange(4)
            if choice == 0 and data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif choice == 1 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif choice == 2:
                position = rng.randrange(len(data) + 1)
                data[position:position] = rng.randbytes(rng.randrange(1, 8))
            elif data:
                del data[rng.randrange(len(data)) :]
        return bytes(data)

    def test_random_garbage_never_raises_and_closes_with_documented_codes(self):
        rng = random.Random(self.SEED)
        frames = self.valid_frames()
        checked = 0
        for _ in range(self.INPUTS):
            if rng.random() < 0.3:
                data = bytearray(rng.randbytes(rng.randrange(1, 48)))
                if len(data) > 1 and rng.random() < 0.7:
                    data[1] |= 0x80  # masked, so parsing goes past the first check
                data = bytes(data)
            else:
                data = self.mutate(rng, b"".join(rng.choice(frames) for _ in range(rng.randrange(1, 4))))
            protocol = WebSocketProtocol(deflate=rng.random() < 0.5, max_message_bytes=rng.choice((64, 1024, MAX_WEBSOCKET_MESSAGE_BYTES)))
            events, sent, pos = [], b"", 0
            while pos < len(data):
                step = rng.randrange(1, 16)
                protocol.receive_data(data[pos : pos + step])
                events += protocol.events_received()
                sent += protocol.data_to_send()
                pos += step
            closes = [frame for frame in parse_server_frames(sent) if frame[2] == OPCODE_CLOSE]
            self.assertLessEqual(len(closes), 1)
            if closes:
                self.assertEqual(parse_server_frames(sent)[-1][2], OPCODE_CLOSE)
                self.assertIs(protocol.state, WebSocketState.CLOSED)
                received = [event for event in events if isinstance(event, CloseReceived)]
                payload = closes[0][3]
                if received:  # an echo of their close
                    expected = b"" if received[0].code == CLOSE_NO_STATUS else close_payload(received[0].code)
                    self.assertEqual(payload, expected)
                else:
                    code = int.from_bytes(payload[:2], "big")
                    self.assertIn(code, (CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_PAYLOAD, CLOSE_MESSAGE_TOO_BIG))
                    self.assertEqual(protocol.close_code, code)
            else:
                self.assertIs(protocol.state, WebSocketState.OPEN)
            checked += 1
        self.assertEqual(checked, self.INPUTS)


if __name__ == "__main__":
    unittest.main()
