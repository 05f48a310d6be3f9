"""Tests for the QR code section: structure by hand, decoding by zbarimg."""

import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
import unittest
import xml.etree.ElementTree as ElementTree
import zlib

from tests.helpers import campfire  # noqa: F401
from campfire import (QR_LEVELS, _qr_alignment_positions, _qr_choose_version, _qr_data_codewords,
                    _qr_data_modules, _qr_format_bits, _qr_function_patterns, _qr_version_bits,
                    _rs_generator, _rs_remainder,
                    qr_matrix, qr_svg)

ZBARIMG = shutil.which("zbarimg")
PIXELS_PER_MODULE = 4
QUIET_ZONE_MODULES = 4  # ISO/IEC 18004 §6.3.8
TRANSFER_URL = (
    "http://campfire.example.com:3000/session/transfers/"
    "eyJfcmFpbHMiOnsiZGF0YSI6MTIzLCJwdXIiOiJ0cmFuc2Zlci8xIn19"
    "--0123456789abcdef0123456789abcdef01234567"
)
# §7.4.10 Table 7: bytes a byte-mode symbol holds, (L, M, Q, H) for versions 1..40.
BYTE_CAPACITY = (
    (17, 14, 11, 7), (32, 26, 20, 14), (53, 42, 32, 24), (78, 62, 46, 34), (106, 84, 60, 44),
    (134, 106, 74, 58), (154, 122, 86, 64), (192, 152, 108, 84), (230, 180, 130, 98),
    (271, 213, 151, 119), (321, 251, 177, 137), (367, 287, 203, 155), (425, 331, 241, 177),
    (458, 362, 258, 194), (520, 412, 292, 220), (586, 450, 322, 250), (644, 504, 364, 280),
    (718, 560, 394, 310), (792, 624, 442, 338), (858, 666, 482, 382), (929, 711, 509, 403),
    (1003, 779, 565, 439), (1091, 857, 611, 461), (1171, 911, 661, 511), (1273, 997, 715, 535),
    (1367, 1059, 751, 593), (1465, 1125, 805, 625), (1528, 1190, 868, 658),
    (1628, 1264, 908, 698), (1732, 1370, 982, 742), (1840, 1452, 1030, 790),
    (1952, 1538, 1112, 842), (2068, 1628, 1168, 898), (2188, 1722, 1228, 958),
    (2303, 1809, 1283, 983), (2431, 1911, 1351, 1051), (2563, 1989, 1423, 1093),
    (2699, 2099, 1499, 1139), (2809, 2213, 1579, 1219), (2953, 2331, 1663, 1273),
)
# Annex E Table E.1: alignment pattern row/column coordinates for a few versions.
ALIGNMENT_POSITIONS = {
    1: [], 2: [6, 18], 7: [6, 22, 38], 14: [6, 26, 46, 66], 22: [6, 26, 50, 74, 98],
    32: [6, 34, 60, 86, 112, 138], 36: [6, 24, 50, 76, 102, 128, 154],
    40: [6, 30, 58, 86, 114, 142, 170],
}
CAPACITY_M = {version: BYTE_CAPACITY[version - 1][1] for version in range(1, 41)}
# §7.9.1 / Annex C Table C.1: format bit strings, most significant bit first.
FORMAT_STRINGS = {
    ("L", 0): "111011111000100", ("L", 4): "110011000101111",
    ("M", 0): "101010000010010", ("M", 5): "100000011001110",
    ("Q", 3): "011101000000110", ("Q", 7): "010101111101101",
    ("H", 3): "001100111010000", ("H", 7): "000100000111011",
}
VERSION_7_BITS = "000111110010010100"  # Annex D Table D.1
VERSION_40_BITS = "101000110001101001"


def version_of(matrix):
    return (len(matrix) - 17) // 4


def png_bytes(matrix):
    """A grayscale PNG of the matrix with a quiet zone, each module a square of pixels."""
    light = [False] * QUIET_ZONE_MODULES
    quiet_rows = [[False] * (len(matrix) + 2 * QUIET_ZONE_MODULES)] * QUIET_ZONE_MODULES
    padded = quiet_rows + [light + row + light for row in matrix] + quiet_rows
    side = len(padded) * PIXELS_PER_MODULE
    scanlines = []
    for row in padded:
        pixels = b"".join((b"\x00" if dark else b"\xff") * PIXELS_PER_MODULE for dark in row)
        scanlines += [b"\x00" + pixels] * PIXELS_PER_MODULE  # filter type 0: none

    def chunk(kind, body):
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(scanlines))) + chunk(b"IEND", b""))


def zbar_decode(matrix):
    """The bytes zbarimg reads from the matrix (binary mode: no charset guessing)."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "code.png")
        with open(path, "wb") as file:
            file.write(png_bytes(matrix))
        result = subprocess.run([ZBARIMG, "--nodbus", "--raw", "-q", "-Sbinary", path],
                                capture_output=True, timeout=60)
    return result.stdout


def format_string_at(matrix, positions):
    return "".join("1" if matrix[r][c] else "0" for r, c in reversed(positions))


def format_positions(size):
    """§7.9.1, listed from bit 0 (least significant) to bit 14."""
    top_left = [(0, 8), (1, 8), (2, 8), (3, 8), (4, 8), (5, 8), (7, 8), (8, 8),
                (8, 7), (8, 5), (8, 4), (8, 3), (8, 2), (8, 1), (8, 0)]
    split = [(8, size - 1 - i) for i in range(8)] + [(size - 7 + i, 8) for i in range(7)]
    return top_left, split


class CodewordTests(unittest.TestCase):
    def test_reed_solomon_matches_annex_i_example(self):
        # "01234567" at 1-M: the data codewords and the error correction ones from Annex I.
        data = [0x10, 0x20, 0x0C, 0x56, 0x61, 0x80, 0xEC, 0x11,
                0xEC, 0x11, 0xEC, 0x11, 0xEC, 0x11, 0xEC, 0x11]
        self.assertEqual(_rs_remainder(data, _rs_generator(10)),
                         [0xA5, 0x24, 0xD4, 0xC1, 0xED, 0x36, 0xC7, 0x87, 0x2C, 0x55])

    def test_reed_solomon_hello_world_1m(self):
        data = [32, 91, 11, 120, 209, 114, 220, 77, 67, 64, 236, 17, 236, 17, 236, 17]
        self.assertEqual(_rs_remainder(data, _rs_generator(10)),
                         [196, 35, 39, 119, 235, 215, 231, 226, 93, 23])

    def test_byte_mode_header_terminator_and_padding(self):
        # 0100 | 00000010 | 'h' 'i' | 0000, then alternating pad codewords.
        self.assertEqual(_qr_data_codewords(b"hi", 1, 16),
                         [0x40, 0x26, 0x86, 0x90] + [0xEC, 0x11] * 6)

    def test_long_count_indicator_from_version_10(self):
        self.assertEqual(_qr_data_codewords(b"", 10, 4), [0x40, 0x00, 0x00, 0xEC])

    def test_full_symbol_ends_with_terminator_and_no_pad_codewords(self):
        codewords = _qr_data_codewords(b"x" * 14, 1, 16)
        self.assertEqual(len(codewords), 16)
        self.assertEqual(codewords[-1], 0x80)  # the low half of "x", then 0000

    def test_format_bits_match_annex_c_table(self):
        for (level, mask), expected in FORMAT_STRINGS.items():
            self.assertEqual(f"{_qr_format_bits(level, mask):015b}", expected, (level, mask))

    def test_version_bits_match_annex_d_table(self):
        self.assertEqual(f"{_qr_version_bits(7):018b}", VERSION_7_BITS)
        self.assertEqual(f"{_qr_version_bits(40):018b}", VERSION_40_BITS)

    def test_alignment_positions_match_annex_e(self):
        for version, positions in ALIGNMENT_POSITIONS.items():
            self.assertEqual(_qr_alignment_positions(version), positions, version)

    def test_data_module_count_matches_the_drawn_function_patterns(self):
        for version in range(1, 41):
            _, reserved = _qr_function_patterns(version)
            free = sum(not fixed for row in reserved for fixed in row)
            self.assertEqual(free, _qr_data_modules(version), version)
        self.assertEqual(_qr_data_modules(1) // 8, 26)  # Table 1: total codewords
        self.assertEqual(_qr_data_modules(40) // 8, 3706)


class StructureTests(unittest.TestCase):
    def assert_finder_at(self, matrix, top, left):
        for r in range(7):
            for c in range(7):
                ring = max(abs(r - 3), abs(c - 3))
                self.assertEqual(matrix[top + r][left + c], ring != 2, (top + r, left + c))

    def test_finder_patterns_sit_in_three_corners(self):
        for data in (b"hi", TRANSFER_URL.encode(), b"x" * 500):
            matrix = qr_matrix(data)
            size = len(matrix)
            for top, left in ((0, 0), (0, size - 7), (size - 7, 0)):
                self.assert_finder_at(matrix, top, left)
            with self.assertRaises(AssertionError):  # and no fourth
                self.assert_finder_at(matrix, size - 7, size - 7)

    def test_separators_are_light(self):
        matrix = qr_matrix(b"separators")
        size = len(matrix)
        for i in range(8):
            for r, c in ((7, i), (i, 7), (7, size - 1 - i), (i, size - 8),
                         (size - 8, i), (size - 1 - i, 7)):
                self.assertFalse(matrix[r][c], (r, c))

    def test_timing_patterns_alternate(self):
        matrix = qr_matrix(b"y" * 300)
        size = len(matrix)
        for i in range(8, size - 8):
            self.assertEqual(matrix[6][i], i % 2 == 0)
            self.assertEqual(matrix[i][6], i % 2 == 0)

    def test_dark_module_is_dark(self):
        for level in QR_LEVELS:
            matrix = qr_matrix(b"dark module", level=level)
            self.assertTrue(matrix[len(matrix) - 8][8])

    def test_alignment_pattern_of_version_7_at_22_22(self):
        matrix = qr_matrix(b"a" * CAPACITY_M[7])
        self.assertEqual(version_of(matrix), 7)
        for r in range(-2, 3):
            for c in range(-2, 3):
                self.assertEqual(matrix[22 + r][22 + c], max(abs(r), abs(c)) != 1)

    def test_version_is_smallest_that_fits(self):
        for version in (1, 2, 7, 10, 26, 40):
            capacity = CAPACITY_M[version]
            self.assertEqual(version_of(qr_matrix(b"v" * capacity)), version, capacity)
            if version < 40:
                self.assertEqual(version_of(qr_matrix(b"v" * (capacity + 1))), version + 1)

    def test_capacity_table_for_every_version_and_level(self):
        # Through the private version chooser: encoding all 320 symbols would be slow.
        for version, capacities in enumerate(BYTE_CAPACITY, start=1):
            for level, capacity in zip(QR_LEVELS, capacities):
                self.assertEqual(_qr_choose_version(capacity, level), version, (version, level))
                if version < 40:
                    self.assertEqual(_qr_choose_version(capacity + 1, level), version + 1)

    def test_known_capacities_per_level(self):
        for level, v1, v40 in (("L", 17, 2953), ("M", 14, 2331), ("Q", 11, 1663), ("H", 7, 1273)):
            self.assertEqual(len(qr_matrix(b"1" * v1, level=level)), 21)
            self.assertEqual(len(qr_matrix(b"1" * (v1 + 1), level=level)), 25)
            self.assertEqual(len(qr_matrix(b"1" * v40, level=level)), 177)
            with self.assertRaises(ValueError):
                qr_matrix(b"1" * (v40 + 1), level=level)

    def test_empty_data_makes_version_1(self):
        self.assertEqual(len(qr_matrix(b"")), 21)

    def test_unknown_level_is_rejected(self):
        with self.assertRaises(ValueError):
            qr_matrix(b"x", level="X")

    def test_placed_format_bits_agree_in_both_copies_and_with_the_table(self):
        seen = set()
        for index in range(60):
            for level in QR_LEVELS:
                matrix = qr_matrix(f"format {index}".encode() * (index % 5 + 1), level=level)
                first, second = format_positions(len(matrix))
                bits = format_string_at(matrix, first)
                self.assertEqual(bits, format_string_at(matrix, second))
                plain = int(bits, 2) ^ 0b101010000010010
                self.assertEqual(plain >> 13, {"L": 1, "M": 0, "Q": 3, "H": 2}[level])
                mask = plain >> 10 & 0b111
                if (level, mask) in FORMAT_STRINGS:
                    self.assertEqual(bits, FORMAT_STRINGS[level, mask])
                    seen.add((level, mask))
        self.assertTrue(seen, "no tabulated (level, mask) pair came up")

    def test_version_information_both_copies(self):
        matrix = qr_matrix(b"a" * CAPACITY_M[7])
        size = len(matrix)
        # Bit i (0 = least significant) at row i // 3 and column size - 11 + i % 3 top right.
        bits = reversed(range(18))
        bottom_left = "".join("1" if matrix[size - 11 + i % 3][i // 3] else "0" for i in bits)
        bits = reversed(range(18))
        top_right = "".join("1" if matrix[i // 3][size - 11 + i % 3] else "0" for i in bits)
        self.assertEqual(bottom_left, VERSION_7_BITS)
        self.assertEqual(top_right, VERSION_7_BITS)

    def test_no_version_information_below_version_7(self):
        matrix = qr_matrix(b"a" * CAPACITY_M[6])
        self.assertEqual(len(matrix), 41)


class SvgTests(unittest.TestCase):
    def test_svg_is_xml_whose_path_covers_exactly_the_dark_modules(self):
        border = 4
        svg = qr_svg(TRANSFER_URL, module_px=8, border=border)
        root = ElementTree.fromstring(svg)
        ns = "{http://www.w3.org/2000/svg}"
        matrix = qr_matrix(TRANSFER_URL.encode())
        side = len(matrix) + 2 * border
        self.assertEqual(root.get("viewBox"), f"0 0 {side} {side}")
        self.assertEqual(root.get("width"), str(side * 8))
        self.assertEqual(root.get("shape-rendering"), "crispEdges")
        self.assertEqual(root.find(ns + "rect").get("fill"), "#fff")
        paths = root.findall(ns + "path")
        self.assertEqual(len(paths), 1)
        painted = [[False] * len(matrix) for _ in matrix]
        d = paths[0].get("d")
        segments = re.findall(r"M(\d+) (\d+)h(\d+)v1h-(\d+)z", d)
        self.assertEqual("".join(f"M{x} {y}h{n}v1h-{m}z" for x, y, n, m in segments), d)
        for x, y, n, m in segments:
            self.assertEqual(n, m)
            for c in range(int(x), int(x) + int(n)):
                self.assertFalse(painted[int(y) - border][c - border], "painted twice")
                painted[int(y) - border][c - border] = True
        self.assertEqual(painted, matrix)

    def test_svg_has_no_script_or_external_reference(self):
        svg = qr_svg("javascript:alert(1)<script>")
        self.assertNotIn("<script", svg)
        self.assertNotIn("href", svg)
        self.assertNotIn("alert", svg)

    def test_bad_sizes_are_rejected(self):
        with self.assertRaises(ValueError):
            qr_svg("x", module_px=0)


@unittest.skipUnless(ZBARIMG or os.environ.get("CI"), "needs zbarimg (apt-get install zbar-tools)")
class ZbarDecodeTests(unittest.TestCase):
    def setUp(self):
        self.assertIsNotNone(ZBARIMG, "CI must install zbar-tools")

    def assert_round_trip(self, data, level="M", version=None):
        matrix = qr_matrix(data, level=level)
        if version is not None:
            self.assertEqual(version_of(matrix), version)
        self.assertEqual(zbar_decode(matrix), data, (len(data), level))

    def test_short_text(self):
        self.assert_round_trip(b"Hello, Campfire!")

    def test_transfer_url(self):
        self.assert_round_trip(TRANSFER_URL.encode())

    def test_versions_at_level_m(self):
        for version in (1, 2, 7, 10, 15, 25, 40):
            with self.subTest(version=version):
                text = (TRANSFER_URL * 30).encode()[:CAPACITY_M[version]]
                self.assert_round_trip(text, version=version)

    def test_every_level(self):
        for level in QR_LEVELS:
            with self.subTest(level=level):
                self.assert_round_trip(TRANSFER_URL.encode(), level=level)

    def test_non_ascii_utf8(self):
        self.assert_round_trip("Grüße aus Zürich, 東京 🔥 — café".encode())

    def test_seeded_random_inputs(self):
        rng = random.Random(18004)
        alphabet = "abcdefghijklmnopqrstuvwxyz" "ABCDEFGHIJKLMNOPQRSTUVWXYZ" "0123456789-_.~/:?=&%é€🔥"
        for index in range(30):
            length = rng.choice((rng.randint(0, 40), rng.randint(40, 400), rng.randint(400, 1200)))
            level = rng.choice(QR_LEVELS)
            if index % 3 == 0:
                data = bytes(rng.randrange(256) for _ in range(length))
            else:
                data = "".join(rng.choice(alphabet) for _ in range(length)).encode()[:1200]
            with self.subTest(index=index, length=len(data), level=level):
                self.assert_round_trip(data, level=level)


if __name__ == "__main__":
    unittest.main()
