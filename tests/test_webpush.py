"""Web Push cryptography: the standards' own vectors, and independent peers.

The vectors: FIPS 197 (AES), NIST's GCM test cases and CAVP gcmEncryptExtIV128,
RFC 5869 (HKDF), RFC 6979 A.2.5 (deterministic ECDSA on P-256), RFC 8291
Appendix A (a whole Web Push message). The peers: the `cryptography` package
(OpenSSL) for every primitive, and `http_ece` for the aes128gcm content coding;
both are installed for the tests only.
"""

import base64
import hashlib
import json
import random
import re
import struct
import unittest

import http_ece
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tests.helpers import campfire as wp

N = wp.P256_N
P = wp.P256_P


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def their_key(scalar):
    return ec.derive_private_key(scalar, ec.SECP256R1())


def their_public_bytes(public_key):
    return public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def their_public_key(point_bytes):
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point_bytes)


def point_with_small_x():
    """A curve point whose x is small enough that x + p still fits 32 bytes."""
    for x in range(1, 1000):
        rhs = (x ** 3 - 3 * x + wp.P256_B) % P
        y = pow(rhs, (P + 1) // 4, P)  # p ≡ 3 (mod 4)
        if y * y % P == rhs:
            return x, y
    raise AssertionError("no small x found")


# -- AES-128 -------------------------------------------------------------------------

class AesBlockCipherTest(unittest.TestCase):
    def test_fips_197_appendix_c1_example(self):
        round_keys = wp.aes128_expand_key(bytes(range(16)))
        block = wp.aes128_encrypt_block(round_keys, bytes.fromhex("00112233445566778899aabbccddeeff"))
        self.assertEqual(block.hex(), "69c4e0d86a7b0430d8cdb78070b4c55a")

    def test_fips_197_appendix_b_example_and_its_last_round_key(self):
        round_keys = wp.aes128_expand_key(bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c"))
        self.assertEqual(round_keys[10].hex(), "d014f9a8c9ee2589e13f0cc8b6630ca6")  # FIPS 197 A.1 w40..w43
        block = wp.aes128_encrypt_block(round_keys, bytes.fromhex("3243f6a8885a308d313198a2e0370734"))
        self.assertEqual(block.hex(), "3925841d02dc09fbdc118597196a0b32")

    def test_agrees_with_openssl_on_random_keys_and_blocks(self):
        rng = random.Random(197)
        for _ in range(50):
            key, blocks = rng.randbytes(16), rng.randbytes(16 * rng.randint(1, 40))
            theirs = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(blocks)
            with self.subTest(key=key.hex(), blocks=len(blocks) // 16):
                self.assertEqual(wp._aes128_encrypt_blocks(wp.aes128_expand_key(key), blocks), theirs)

    def test_refuses_keys_that_are_not_128_bits(self):
        for key in (b"", bytes(15), bytes(24), bytes(32)):
            with self.assertRaises(wp.WebPushError):
                wp.aes128_expand_key(key)


# -- AES-128-GCM ---------------------------------------------------------------------

PLAINTEXT_B = ("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
               "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255")
# McGrew and Viega, "The Galois/Counter Mode of Operation", Appendix B, test cases
# 1-6 (the AES-128 ones): (key, iv, plaintext, aad, ciphertext, tag), in hex.
GCM_SPEC_CASES = [
    ("00" * 16, "00" * 12, "", "", "", "58e2fccefa7e3061367f1d57a4e7455a"),
    ("00" * 16, "00" * 12, "00" * 16, "", "0388dace60b6a392f328c2b971b2fe78", "ab6e47d42cec13bdf53a67b21257bddf"),
    ("feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888", PLAINTEXT_B, "",
     "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
     "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985", "4d5c2af327cd64a62cf35abd2ba6fab4"),
    ("feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888", PLAINTEXT_B[:120],
     "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
     "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091", "5bc94fbc3221a5db94fae95ae7121a47"),
    ("feffe9928665731c6d6a8f9467308308", "cafebabefacedbad", PLAINTEXT_B[:120],
     "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     "61353b4c2806934a777ff51fa22a4755699b2a714fcdc6f83766e5f97b6c7423"
     "73806900e49f24b22b097544d4896b424989b5e1ebac0f07c23f4598", "3612d2e79e3b0785561be14aaca2fccb"),
    ("feffe9928665731c6d6a8f9467308308",
     "9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728"
     "c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b", PLAINTEXT_B[:120],
     "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     "8ce24998625615b603a033aca13fb894be9112a5c3a211a8ba262a3cca7e2ca7"
     "01e4a9a4fba43c90ccdcb281d48c7c6fd62875d2aca417034c34aee5", "619cc5aefffe0bfa462af43c1699d050"),
]
# NIST CAVP, gcmEncryptExtIV128.rsp (Keylen 128, IVlen 96, Taglen 128), the first two
# cases of the groups PTlen/AADlen = 0/0, 0/128 (AAD only), 128/0, 408/160, 408/720, 104/0.
GCM_CAVP_CASES = [
    ("11754cd72aec309bf52f7687212e8957", "3c819d9a9bed087615030b65", "", "", "", "250327c674aaf477aef2675748cf6971"),
    ("ca47248ac0b6f8372a97ac43508308ed", "ffd2b598feabc9019262d2be", "", "", "", "60d20404af527d248d893ae495707d1a"),
    ("77be63708971c4e240d1cb79e8d77feb", "e0e00f19fed7ba0136a797f3", "", "7a43ec1d9c0a5a78a0b16533a6213cab", "",
     "209fcc8d3675ed938e9c7166709dd946"),
    ("7680c5d3ca6154758e510f4d25b98820", "f8f105f9c3df4965780321f8", "", "c94c410194c765e3dcc7964379758ed3", "",
     "94dca8edfcf90bb74b153c8d48a17930"),
    ("7fddb57453c241d03efbed3ac44e371c", "ee283a3fc75575e33efd4887", "d5de42b461646c255c87bd2962d3b9a2", "",
     "2ccda4a5415cb91e135c2a0f78c9b2fd", "b36d1df9b9d5e596f83e8b7f52971cb3"),
    ("ab72c77b97cb5fe9a382d9fe81ffdbed", "54cc7dc2c37ec006bcc6d1da", "007c5e5b3e59df24a7c355584fc1518d", "",
     "0e1bde206a07a9c2c1b65300f8c64997", "2b4401346697138c7a4891ee59867d0c"),
    ("fe47fcce5fc32665d2ae399e4eec72ba", "5adb9609dbaeb58cbd6e7275",
     "7c0e88c88899a779228465074797cd4c2e1498d259b54390b85e3eef1c02df60e743f1b840382c4bccaf3bafb4ca8429bea063",
     "88319d6e1d3ffa5f987199166c8a9b56c2aeba5a",
     "98f4826f05a265e6dd2be82db241c0fbbbf9ffb1c173aa83964b7cf5393043736365253ddbc5db8778371495da76d269e5db3e",
     "291ef1982e4defedaa2249f898556b47"),
    ("ec0c2ba17aa95cd6afffe949da9cc3a8", "296bce5b50b7d66096d627ef",
     "b85b3753535b825cbe5f632c0b843c741351f18aa484281aebec2f45bb9eea2d79d987b764b9611f6c0f8641843d5d58f3a242",
     "f8d00f05d22bf68599bcdeb131292ad6e2df5d14",
     "a7443d31c26bdf2a1c945e29ee4bd344a99cfaf3aa71f8b3f191f83c2adfc7a07162995506fde6309ffc19e716eddf1a828c5a",
     "890147971946b627c40016da1ecf3e77"),
    ("2c1f21cf0f6fb3661943155c3e3d8492", "23cb5ff362e22426984d1907",
     "42f758836986954db44bf37c6ef5e4ac0adaf38f27252a1b82d02ea949c8a1a2dbc0d68b5615ba7c1220ff6510e259f06655d8",
     "5d3624879d35e46849953e45a32a624d6a6c536ed9857c613b572b0333e701557a713e3f010ecdf9a6bd6c9e3e44b065208645aff4aabee6"
     "11b391528514170084ccf587177f4488f33cfb5e979e42b6e1cfc0a60238982a7aec",
     "81824f0e0d523db30d3da369fdc0d60894c7a0a20646dd015073ad2732bd989b14a222b6ad57af43e1895df9dca2a5344a62cc",
     "57a3ee28136e94c74838997ae9823f3a"),
    ("d9f7d2411091f947b4d6f1e2d1f0fb2e", "e1934f5db57cc983e6b180e7",
     "73ed042327f70fe9c572a61545eda8b2a0c6e1d6c291ef19248e973aee6c312012f490c2c6f6166f4a59431e182663fcaea05a",
     "0a8a18a7150e940c3d87b38e73baee9a5c049ee21795663e264b694a949822b639092d0e67015e86363583fcf0ca645af9f43375f05fdb4c"
     "e84f411dcbca73c2220dea03a20115d2e51398344b16bee1ed7c499b353d6c597af8",
     "aaadbd5c92e9151ce3db7210b8714126b73e43436d242677afa50384f2149b831f1d573c7891c2a91fbc48db29967ec9542b23",
     "21b51ca862cb637cdd03b99a0f93b134"),
    ("fe9bb47deb3a61e423c2231841cfd1fb", "4d328eb776f500a2f7fb47aa", "f1cc3818e421876bb6b8bbd6c9", "",
     "b88c5c1977b35b517b0aeae967", "43fd4727fe5cdb4b5b42818dea7ef8c9"),
    ("6703df3701a7f54911ca72e24dca046a", "12823ab601c350ea4bc2488c", "793cd125b0b84a043e3ac67717", "",
     "b2051c80014f42f08735a7b0cd", "38e6bcd29962e5f2c13626b85a877101"),
]


class GcmTest(unittest.TestCase):
    def check_case(self, key, iv, plaintext, aad, ciphertext, tag):
        key, iv, plaintext, aad = map(bytes.fromhex, (key, iv, plaintext, aad))
        sealed = wp.aes128gcm_seal(key, iv, plaintext, aad)
        self.assertEqual(sealed.hex(), ciphertext + tag)
        self.assertEqual(wp.aes128gcm_open(key, iv, sealed, aad), plaintext)

    def test_the_gcm_specifications_aes_128_test_cases(self):
        for number, case in enumerate(GCM_SPEC_CASES, 1):
            with self.subTest(test_case=number):
                self.check_case(*case)

    def test_nist_cavp_gcm_encrypt_vectors(self):
        for number, case in enumerate(GCM_CAVP_CASES):
            with self.subTest(case=number, key=case[0]):
                self.check_case(*case)

    def test_open_refuses_any_changed_bit_and_a_short_input(self):
        key, nonce, aad = bytes(range(16)), bytes(12), b"header"
        sealed = wp.aes128gcm_seal(key, nonce, b"attack at dawn", aad)
        for position in (0, 5, len(sealed) - 16, len(sealed) - 1):
            changed = bytearray(sealed)
            changed[position] ^= 0x01
            with self.subTest(position=position), self.assertRaises(wp.WebPushError):
                wp.aes128gcm_open(key, nonce, bytes(changed), aad)
        with self.assertRaises(wp.WebPushError):
            wp.aes128gcm_open(key, nonce, sealed, b"other header")
        with self.assertRaises(wp.WebPushError):
            wp.aes128gcm_open(bytes(16), nonce, sealed, aad)
        with self.assertRaises(wp.WebPushError):
            wp.aes128gcm_open(key, nonce, sealed[:15], aad)

    def test_openssl_opens_ours_and_we_open_openssls(self):
        rng = random.Random(38)
        lengths = list(range(0, 70)) + [rng.randint(70, 4200) for _ in range(60)]
        for length in lengths:
            key, plaintext = rng.randbytes(16), rng.randbytes(length)
            nonce = rng.randbytes(rng.choice((12, 12, 12, 8, 16, 60)))
            aad = rng.randbytes(rng.choice((0, 0, 1, 15, 16, 17, 40)))
            with self.subTest(length=length, nonce=len(nonce), aad=len(aad)):
                ours = wp.aes128gcm_seal(key, nonce, plaintext, aad)
                self.assertEqual(AESGCM(key).decrypt(nonce, ours, aad), plaintext)
                theirs = AESGCM(key).encrypt(nonce, plaintext, aad)
                self.assertEqual(wp.aes128gcm_open(key, nonce, theirs, aad), plaintext)

    def test_the_counter_wraps_in_its_low_32_bits_only(self):
        """inc32 (SP 800-38D §6.2): reachable with a nonce other than 96 bits, whose J0
        comes out of GHASH and can end in ffffffff."""
        j0 = int("0123456789abcdef01234567" + "fffffffe", 16)
        blocks = wp._counter_blocks(j0, 4)
        self.assertEqual([blocks[i:i + 16].hex() for i in range(0, 64, 16)],
                         ["0123456789abcdef01234567" + low for low in ("fffffffe", "ffffffff", "00000000", "00000001")])

    def test_a_tag_openssl_refuses_we_refuse_too(self):
        key, nonce = bytes(16), bytes(12)
        forged = bytearray(AESGCM(key).encrypt(nonce, b"hello", None))
        forged[-1] ^= 0x80
        with self.assertRaises(InvalidTag):
            AESGCM(key).decrypt(nonce, bytes(forged), None)
        with self.assertRaises(wp.WebPushError):
            wp.aes128gcm_open(key, nonce, bytes(forged))


# -- HKDF ----------------------------------------------------------------------------

class HkdfTest(unittest.TestCase):
    # RFC 5869 Appendix A.1-A.3: (IKM, salt, info, L, PRK, OKM), in hex.
    CASES = [
        ("0b" * 22, "000102030405060708090a0b0c", "f0f1f2f3f4f5f6f7f8f9", 42,
         "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
         "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
        (bytes(range(0x00, 0x50)).hex(), bytes(range(0x60, 0xB0)).hex(), bytes(range(0xB0, 0x100)).hex(), 82,
         "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
         "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8"
         "367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"),
        ("0b" * 22, "", "", 42,
         "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
         "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
    ]

    def test_rfc_5869_test_cases_1_to_3(self):
        for number, (ikm, salt, info, length, prk, okm) in enumerate(self.CASES, 1):
            ikm, salt, info = map(bytes.fromhex, (ikm, salt, info))
            with self.subTest(test_case=number):
                self.assertEqual(wp.hkdf_extract(salt, ikm).hex(), prk)
                self.assertEqual(wp.hkdf_expand(bytes.fromhex(prk), info, length).hex(), okm)
                self.assertEqual(wp.hkdf_sha256(salt, ikm, info, length).hex(), okm)

    def test_agrees_with_cryptography_and_refuses_more_than_255_blocks(self):
        rng = random.Random(5869)
        for length in (1, 16, 31, 32, 33, 100, 255 * 32):
            salt, ikm, info = rng.randbytes(16), rng.randbytes(32), rng.randbytes(10)
            theirs = HKDF(hashes.SHA256(), length, salt, info).derive(ikm)
            self.assertEqual(wp.hkdf_sha256(salt, ikm, info, length), theirs)
        with self.assertRaises(wp.WebPushError):
            wp.hkdf_expand(bytes(32), b"", 255 * 32 + 1)


# -- P-256 ---------------------------------------------------------------------------

class P256Test(unittest.TestCase):
    EDGE_SCALARS = [1, 2, 3, 4, 6, 14, 15, 16, 17, 30, 31, 32, 33, 2 ** 128, 2 ** 252, 2 ** 255,
                    N - 1, N - 2, N - 3, N - 15, N - 16, N - 30, N - 31, (N - 1) // 2, (N + 1) // 2]

    def test_public_keys_match_openssls_for_random_and_edge_scalars(self):
        rng = random.Random(256)
        for scalar in self.EDGE_SCALARS + [rng.randrange(1, N) for _ in range(40)]:
            with self.subTest(scalar=hex(scalar)):
                self.assertEqual(wp.p256_public_key(scalar), their_public_bytes(their_key(scalar).public_key()))

    def test_variable_base_multiplication_matches_openssl_at_the_edges(self):
        """The peer's point goes through the other multiplication (ECDH's): k·G there too."""
        for scalar in self.EDGE_SCALARS:
            with self.subTest(scalar=hex(scalar)):
                point = wp._homogeneous_to_affine(*wp._scalar_mult(scalar, wp.P256_GX, wp.P256_GY))
                self.assertEqual(wp.p256_encode_point(*point), their_public_bytes(their_key(scalar).public_key()))

    def test_ecdh_secret_matches_openssls(self):
        rng = random.Random(8291)
        for scalar in self.EDGE_SCALARS[:6] + [rng.randrange(1, N) for _ in range(40)]:
            peer = their_key(rng.randrange(1, N))
            with self.subTest(scalar=hex(scalar)):
                ours = wp.p256_ecdh(scalar, their_public_bytes(peer.public_key()))
                self.assertEqual(ours, their_key(scalar).exchange(ec.ECDH(), peer.public_key()))
                self.assertEqual(ours, wp.p256_ecdh(peer.private_numbers().private_value, wp.p256_public_key(scalar)))

    def test_a_multiple_of_the_order_is_the_point_at_infinity(self):
        """ECDSA verification can ask for 0·G; both multiplications must answer the infinity."""
        self.assertEqual(wp._base_mult(0)[2], 0)
        self.assertEqual(wp._scalar_mult(0, wp.P256_GX, wp.P256_GY)[2], 0)

    def test_complete_addition_handles_doubling_inverses_and_infinity(self):
        g = (wp.P256_GX, wp.P256_GY, 1)
        minus_g = (wp.P256_GX, P - wp.P256_GY, 1)
        infinity = (0, 1, 0)
        double = wp._homogeneous_to_affine(*wp._complete_add(*g, *g))
        self.assertEqual(wp.p256_encode_point(*double), wp.p256_public_key(2))
        self.assertEqual(wp._complete_add(*g, *minus_g)[2], 0)
        self.assertEqual(wp._homogeneous_to_affine(*wp._complete_add(*infinity, *g)), (wp.P256_GX, wp.P256_GY))
        self.assertEqual(wp._homogeneous_to_affine(*wp._complete_add(*g, *infinity)), (wp.P256_GX, wp.P256_GY))
        self.assertEqual(wp._complete_add(*infinity, *infinity)[2], 0)

    def test_blinded_inverse_is_the_inverse(self):
        rng = random.Random(1)
        for modulus in (P, N):
            for value in [1, 2, modulus - 1] + [rng.randrange(1, modulus) for _ in range(20)]:
                inverse = wp._inverse_blinded(value, modulus)
                self.assertTrue(0 <= inverse < modulus)
                self.assertEqual(value * inverse % modulus, 1)

    def test_generated_private_keys_are_in_range_and_differ(self):
        keys = {wp.p256_generate_private_key() for _ in range(20)}
        self.assertEqual(len(keys), 20)
        self.assertTrue(all(1 <= key < N for key in keys))

    def test_private_keys_out_of_range_are_refused(self):
        for scalar in (0, N, N + 1, -1, "1", 1.0):
            with self.subTest(scalar=scalar), self.assertRaises(wp.WebPushError):
                wp.p256_public_key(scalar)

    def test_invalid_peer_points_are_refused_before_any_arithmetic(self):
        valid = wp.p256_public_key(12345)
        x, y = wp.p256_decode_point(valid)
        small_x, small_y = point_with_small_x()
        self.assertEqual(wp.p256_decode_point(wp.p256_encode_point(small_x, small_y)), (small_x, small_y))
        invalid = {
            "empty": b"",
            "the infinity's one-byte encoding": b"\x00",
            "65 zero bytes": bytes(65),
            "(0, 0)": b"\x04" + bytes(64),
            "off the curve": wp.p256_encode_point(x, (y + 1) % P),
            "x = p": b"\x04" + P.to_bytes(32, "big") + y.to_bytes(32, "big"),
            "x + p for a point's x": b"\x04" + (small_x + P).to_bytes(32, "big") + small_y.to_bytes(32, "big"),
            "compressed (33 bytes)": bytes((2 + (y & 1),)) + x.to_bytes(32, "big"),
            "a compressed prefix on 65 bytes": b"\x02" + valid[1:],
            "hybrid prefix": b"\x06" + valid[1:],
            "64 bytes": valid[1:],
            "66 bytes": valid + b"\x00",
            "not bytes": valid.hex(),
        }
        for name, data in invalid.items():
            with self.subTest(name):
                with self.assertRaises(wp.WebPushError):
                    wp.p256_decode_point(data)
                with self.assertRaises(wp.WebPushError):
                    wp.p256_ecdh(1, data)

    def test_openssl_agrees_on_which_points_are_invalid(self):
        x, y = wp.p256_decode_point(wp.p256_public_key(999))
        for data in (wp.p256_encode_point(x, (y + 1) % P), b"\x04" + bytes(64)):
            with self.assertRaises(ValueError):
                their_public_key(data)
            with self.assertRaises(wp.WebPushError):
                wp.p256_decode_point(data)


# -- ECDSA ---------------------------------------------------------------------------

class EcdsaTest(unittest.TestCase):
    # RFC 6979 Appendix A.2.5: P-256, SHA-256.
    PRIVATE = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
    UX = 0x60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6
    UY = 0x7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299
    SIGNATURES = {
        b"sample": (0xA6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60,
                    0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
                    0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8),
        b"test": (0xD16B6AE827F17175E040871A1C7EC3500192C4C92677336EC2537ACAEE0008E0,
                  0xF1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367,
                  0x019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083),
    }

    def test_rfc_6979_a25_public_key(self):
        self.assertEqual(wp.p256_public_key(self.PRIVATE), wp.p256_encode_point(self.UX, self.UY))

    def test_rfc_6979_a25_nonces_and_signatures_with_sha_256(self):
        for message, (k, r, s) in self.SIGNATURES.items():
            with self.subTest(message=message):
                digest = hashlib.sha256(message).digest()
                self.assertEqual(next(wp._rfc6979_nonces(self.PRIVATE, digest)), k)
                self.assertEqual(wp.ecdsa_sign(self.PRIVATE, message), r.to_bytes(32, "big") + s.to_bytes(32, "big"))
                self.assertTrue(wp.ecdsa_verify(wp.p256_public_key(self.PRIVATE), message,
                                                r.to_bytes(32, "big") + s.to_bytes(32, "big")))

    def test_openssl_verifies_our_signatures(self):
        rng = random.Random(6979)
        for _ in range(25):
            scalar, message = rng.randrange(1, N), rng.randbytes(rng.randint(0, 300))
            signature = wp.ecdsa_sign(scalar, message)
            self.assertEqual(len(signature), 64)
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            their_key(scalar).public_key().verify(der, message, ec.ECDSA(hashes.SHA256()))  # raises if not

    def test_we_verify_openssls_signatures_and_refuse_altered_ones(self):
        rng = random.Random(7518)
        for _ in range(15):
            key = their_key(rng.randrange(1, N))
            message = rng.randbytes(rng.randint(1, 200))
            r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
            public, signature = their_public_bytes(key.public_key()), r.to_bytes(32, "big") + s.to_bytes(32, "big")
            self.assertTrue(wp.ecdsa_verify(public, message, signature))
            self.assertFalse(wp.ecdsa_verify(public, message + b"!", signature))
            self.assertFalse(wp.ecdsa_verify(public, message, signature[:63] + bytes((signature[63] ^ 1,))))
            self.assertFalse(wp.ecdsa_verify(wp.p256_public_key(7), message, signature))

    def test_malformed_signatures_are_refused(self):
        public, message = wp.p256_public_key(42), b"payload"
        signature = wp.ecdsa_sign(42, message)
        r, s = signature[:32], signature[32:]
        for name, bad in {"empty": b"", "63 bytes": signature[:63], "65 bytes": signature + b"\x00",
                          "r = 0": bytes(32) + s, "s = 0": r + bytes(32),
                          "r = n": N.to_bytes(32, "big") + s, "s = n": r + N.to_bytes(32, "big")}.items():
            with self.subTest(name):
                self.assertFalse(wp.ecdsa_verify(public, message, bad))
        self.assertFalse(wp.ecdsa_verify(b"\x04" + bytes(64), message, signature))

    def test_our_signatures_are_openssls_deterministic_ones(self):
        """OpenSSL 3.2 and later implement RFC 6979 too: the same key and message must
        give the very same r and s, for random messages and for digests at or above n
        (where bits2octets reduces the digest but bits2int does not)."""
        rng = random.Random(3)
        for _ in range(20):
            scalar, message = rng.randrange(1, N), rng.randbytes(rng.randint(0, 100))
            der = their_key(scalar).sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
            r, s = decode_dss_signature(der)
            self.assertEqual(wp.ecdsa_sign(scalar, message), r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        for digest in (b"\xff" * 32, N.to_bytes(32, "big"), (N + 1).to_bytes(32, "big")):
            with self.subTest(digest=digest.hex()):
                der = their_key(12345).sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True))
                r, s = decode_dss_signature(der)
                self.assertEqual(wp._ecdsa_sign_digest(12345, digest), r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def test_signatures_are_deterministic(self):
        self.assertEqual(wp.ecdsa_sign(5, b"same"), wp.ecdsa_sign(5, b"same"))
        self.assertNotEqual(wp.ecdsa_sign(5, b"same"), wp.ecdsa_sign(6, b"same"))


# -- Web Push message encryption -------------------------------------------------------

def rfc8291_decrypt(body, ua_private, auth_secret):
    """RFC 8291 §3.4 and RFC 8188 §2, written against `cryptography`: the receiving
    user agent's side, independent of the code under test."""
    salt, (rs,), keyid_length = body[:16], struct.unpack(">I", body[16:20]), body[20]
    as_public = body[21:21 + keyid_length]
    record = body[21 + keyid_length:]
    assert len(record) <= rs, "one record, within the record size"
    secret = ua_private.exchange(ec.ECDH(), their_public_key(as_public))
    ua_public = their_public_bytes(ua_private.public_key())
    ikm = HKDF(hashes.SHA256(), 32, auth_secret, b"WebPush: info\x00" + ua_public + as_public).derive(secret)
    cek = HKDF(hashes.SHA256(), 16, salt, b"Content-Encoding: aes128gcm\x00").derive(ikm)
    nonce = HKDF(hashes.SHA256(), 12, salt, b"Content-Encoding: nonce\x00").derive(ikm)
    padded = AESGCM(cek).decrypt(nonce, record, None)
    unpadded = padded.rstrip(b"\x00")
    assert unpadded.endswith(b"\x02"), "the last record's delimiter"
    return unpadded[:-1]


class WebPushEncryptionTest(unittest.TestCase):
    # RFC 8291 Appendix A.
    PLAINTEXT = b"When I grow up, I want to be a watermelon"
    AS_PRIVATE = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
    AS_PUBLIC = "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
    UA_PRIVATE = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
    UA_PUBLIC = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
    SALT = "DGv6ra1nlYgDCS1FRnbzlw"
    AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
    ECDH_SECRET = "kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs"
    IKM = "S4lYMb_L0FxCeq0WhDx813KgSYqU26kOyzWUdsXYyrg"
    CEK = "oIhVW04MRdy2XN9CiKLxTg"
    NONCE = "4h_95klXJ5E_qnoN"
    BODY = ("DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6Tlz"
            "AC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN")

    def test_rfc_8291_appendix_a_byte_for_byte(self):
        body = wp.encrypt_push_message(self.PLAINTEXT, self.UA_PUBLIC, self.AUTH,
                                       ephemeral_key=int.from_bytes(unb64(self.AS_PRIVATE), "big"),
                                       salt=unb64(self.SALT))
        self.assertEqual(b64(body), self.BODY)

    def test_rfc_8291_appendix_a_intermediate_values(self):
        as_private = int.from_bytes(unb64(self.AS_PRIVATE), "big")
        ua_private = int.from_bytes(unb64(self.UA_PRIVATE), "big")
        self.assertEqual(b64(wp.p256_public_key(as_private)), self.AS_PUBLIC)
        self.assertEqual(b64(wp.p256_public_key(ua_private)), self.UA_PUBLIC)
        secret = wp.p256_ecdh(as_private, unb64(self.UA_PUBLIC))
        self.assertEqual(b64(secret), self.ECDH_SECRET)
        self.assertEqual(wp.p256_ecdh(ua_private, unb64(self.AS_PUBLIC)), secret)
        key_info = b"WebPush: info\x00" + unb64(self.UA_PUBLIC) + unb64(self.AS_PUBLIC)
        self.assertEqual(b64(wp.hkdf_sha256(unb64(self.AUTH), secret, key_info, 32)), self.IKM)
        cek, nonce = wp._push_keys(secret, unb64(self.AUTH), unb64(self.UA_PUBLIC), unb64(self.AS_PUBLIC),
                                   unb64(self.SALT))
        self.assertEqual((b64(cek), b64(nonce)), (self.CEK, self.NONCE))

    def test_the_rfc_example_decrypts_with_both_independent_receivers(self):
        ua_private = their_key(int.from_bytes(unb64(self.UA_PRIVATE), "big"))
        body = unb64(self.BODY)
        self.assertEqual(rfc8291_decrypt(body, ua_private, unb64(self.AUTH)), self.PLAINTEXT)
        self.assertEqual(http_ece.decrypt(body, private_key=ua_private, auth_secret=unb64(self.AUTH)), self.PLAINTEXT)

    def test_independent_receivers_decrypt_our_messages(self):
        rng = random.Random(8188)
        lengths = [0, 1, 15, 16, 17, 100, 1000, wp.PUSH_MAX_PLAINTEXT_BYTES] + [rng.randint(0, 3993) for _ in range(12)]
        for length in lengths:
            ua_private, auth = their_key(rng.randrange(1, N)), rng.randbytes(16)
            p256dh = b64(their_public_bytes(ua_private.public_key()))
            plaintext = rng.randbytes(length)
            with self.subTest(length=length):
                body = wp.encrypt_push_message(plaintext, p256dh, b64(auth))
                self.assertEqual(len(body), wp.PUSH_HEADER_BYTES + length + 1 + 16)
                self.assertLessEqual(len(body), wp.PUSH_MESSAGE_MAX_BYTES)
                self.assertEqual(rfc8291_decrypt(body, ua_private, auth), plaintext)
                self.assertEqual(http_ece.decrypt(body, private_key=ua_private, auth_secret=auth), plaintext)

    def test_header_carries_salt_record_size_and_a_fresh_ephemeral_key(self):
        ua_private = their_key(31337)
        p256dh, auth = b64(their_public_bytes(ua_private.public_key())), b64(bytes(range(16)))
        first = wp.encrypt_push_message(b"hi", p256dh, auth)
        second = wp.encrypt_push_message(b"hi", p256dh, auth)
        for body in (first, second):
            self.assertEqual(struct.unpack(">IB", body[16:21]), (4096, 65))
            wp.p256_decode_point(body[21:86])  # a valid point: the server's public key
        self.assertNotEqual(first[:16], second[:16], "a fresh salt each time")
        self.assertNotEqual(first[21:86], second[21:86], "a fresh ephemeral key each time")

    def test_a_message_too_long_for_one_record_is_refused(self):
        p256dh, auth = self.UA_PUBLIC, self.AUTH
        self.assertEqual(wp.PUSH_MAX_PLAINTEXT_BYTES, 3993)  # RFC 8291 §4
        self.assertEqual(len(wp.encrypt_push_message(bytes(3993), p256dh, auth)), 4096)
        with self.assertRaises(wp.WebPushError):
            wp.encrypt_push_message(bytes(3994), p256dh, auth)

    def test_keys_padded_or_not_are_read_and_bad_ones_refused_with_a_reason(self):
        public, auth = unb64(self.UA_PUBLIC), unb64(self.AUTH)
        padded = base64.urlsafe_b64encode
        self.assertEqual(wp.push_subscription_keys(padded(public).decode(), padded(auth).decode()), (public, auth))
        self.assertEqual(wp.push_subscription_keys(self.UA_PUBLIC, self.AUTH), (public, auth))
        off_curve = b64(public[:-1] + bytes((public[-1] ^ 1,)))
        for p256dh, auth_text, reason in [
                ("not base64!", self.AUTH, "p256dh"), (b64(public[:33]), self.AUTH, "65 bytes"),
                (off_curve, self.AUTH, "curve"), ("", self.AUTH, "65 bytes"), ("BCVxé", self.AUTH, "p256dh"),
                (self.UA_PUBLIC, b64(auth[:15]), "auth"), (self.UA_PUBLIC, b64(auth + b"x"), "auth"),
                (self.UA_PUBLIC, "A", "auth"), (None, self.AUTH, "p256dh is missing"),
                (self.UA_PUBLIC, None, "auth is missing")]:
            with self.subTest(p256dh=p256dh and p256dh[:12], auth=auth_text):
                with self.assertRaisesRegex(wp.WebPushError, reason):
                    wp.push_subscription_keys(p256dh, auth_text)
                with self.assertRaises(wp.WebPushError):
                    wp.encrypt_push_message(b"x", p256dh, auth_text)


# -- VAPID ---------------------------------------------------------------------------

def verify_jwt_with_openssl(token, public_key_bytes):
    header, claims, signature = token.split(".")
    raw = unb64(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    their_public_key(public_key_bytes).verify(der, (header + "." + claims).encode(), ec.ECDSA(hashes.SHA256()))
    return json.loads(unb64(header)), json.loads(unb64(claims))


class VapidTest(unittest.TestCase):
    ENDPOINT = "https://fcm.googleapis.com/fcm/send/dpH5lCsTSSM:APA91bHqjZxM0VImWWqDRN7U0a3AycjUf4O-byuxb_wJsKRaK"
    SUBJECT = "mailto:support@37signals.com"

    # RFC 8292 §2.4, Figure 1: the example token, and §3.2's key for it.
    RFC_TOKEN = ("eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9.eyJhdWQiOiJodHRwczovL3B1c2guZXhhbXBsZS5uZXQiLCJleHAiOjE0NTM1Mj"
                 "M3NjgsInN1YiI6Im1haWx0bzpwdXNoQGV4YW1wbGUuY29tIn0.i3CYb7t4xfxCDquptFOepC9GAu_HLGkMlMuCGSK2rpiUfnK9"
                 "ojFwDXb1JrErtmysazNjjvW2L9OkSSHzvoD1oA")
    RFC_KEY = "BA1Hxzyi1RUM1b5wjxsn7nGxAszw2u61m164i3MrAIxHF6YK5h4SDYic-dRuU_RCPCfA5aq9ojSwk5Y2EmClBPs"

    def test_rfc_8292_example_token_has_our_signing_input_and_verifies(self):
        signing_input, _, signature = self.RFC_TOKEN.rpartition(".")
        ours = wp._vapid_signing_input("https://push.example.net", "mailto:push@example.com", 1453523768)
        self.assertEqual(ours, signing_input)
        self.assertTrue(wp.ecdsa_verify(unb64(self.RFC_KEY), signing_input.encode(), unb64(signature)))
        self.assertFalse(wp.ecdsa_verify(unb64(self.RFC_KEY), signing_input.encode() + b"x", unb64(signature)))
        verify_jwt_with_openssl(self.RFC_TOKEN, unb64(self.RFC_KEY))

    def test_generated_keys_are_in_the_web_push_gems_format(self):
        key = wp.VapidKey.generate()
        public, private = key.public_key_base64, key.private_key_base64
        self.assertEqual((len(public), public[-1]), (88, "="))  # Base64.urlsafe_encode64 of 65 bytes
        self.assertEqual((len(private), private[-1]), (44, "="))
        self.assertNotRegex(public + private, r"[+/]")
        self.assertEqual(unb64(public.rstrip("=")), key.public_key)
        self.assertEqual(unb64(public.rstrip("="))[0], 4)
        loaded = wp.VapidKey.from_base64(public, private)
        self.assertEqual((loaded.private_key, loaded.public_key), (key.private_key, key.public_key))
        self.assertEqual(their_public_bytes(their_key(loaded.private_key).public_key()), key.public_key)

    def test_keys_from_the_gem_load_padded_unpadded_and_short(self):
        """The gem writes the scalar as OpenSSL's BN#to_s(2): no leading zero bytes."""
        scalar = 0x00AB << 240 | 0x1234  # its big-endian form starts with a zero byte
        key = wp.VapidKey(scalar)
        short_private = base64.urlsafe_b64encode(scalar.to_bytes(31, "big")).decode()
        for public, private in [(key.public_key_base64, key.private_key_base64),
                                (key.public_key_base64.rstrip("="), key.private_key_base64.rstrip("=")),
                                (key.public_key_base64, short_private)]:
            with self.subTest(private=private):
                self.assertEqual(wp.VapidKey.from_base64(public, private).private_key, scalar)

    def test_a_pair_that_does_not_match_or_is_not_a_key_is_refused(self):
        key, other = wp.VapidKey(1111), wp.VapidKey(2222)
        cases = [(key.public_key_base64, other.private_key_base64, "does not belong"),
                 ("nonsense", key.private_key_base64, "VAPID_PUBLIC_KEY"),
                 (b64(b"\x04" + bytes(64)), key.private_key_base64, "curve"),
                 (key.public_key_base64, b64(bytes(32)), "VAPID_PRIVATE_KEY"),
                 (key.public_key_base64, b64(N.to_bytes(32, "big")), "VAPID_PRIVATE_KEY"),
                 (key.public_key_base64, b64(bytes(33) + b"\x01"), "VAPID_PRIVATE_KEY"),
                 (key.public_key_base64, "", "VAPID_PRIVATE_KEY")]
        for public, private, reason in cases:
            with self.subTest(reason=reason, private=private[:10]):
                with self.assertRaisesRegex(wp.WebPushError, reason):
                    wp.VapidKey.from_base64(public, private)

    def test_the_private_key_never_shows_in_repr(self):
        key = wp.VapidKey.generate()
        self.assertNotIn(key.private_key_base64.rstrip("="), repr(key))
        self.assertNotIn(str(key.private_key), repr(key))

    def test_openssl_verifies_the_jwt_and_its_claims_follow_rfc_8292(self):
        key = wp.VapidKey.generate()
        signer = wp.VapidSigner(key, self.SUBJECT)
        header_value = signer.authorization(self.ENDPOINT, now=1_700_000_000)
        match = re.fullmatch(r"vapid t=([\w-]+\.[\w-]+\.[\w-]+), k=([\w-]+)", header_value)
        self.assertIsNotNone(match, header_value)
        token, k = match.groups()
        self.assertEqual(unb64(k), key.public_key)
        header, claims = verify_jwt_with_openssl(token, unb64(k))
        self.assertEqual(header, {"typ": "JWT", "alg": "ES256"})
        self.assertEqual(claims, {"aud": "https://fcm.googleapis.com", "exp": 1_700_000_000 + 12 * 3600,
                                  "sub": self.SUBJECT})
        self.assertLessEqual(claims["exp"] - 1_700_000_000, 24 * 3600)

    def test_audience_is_the_endpoints_origin(self):
        for endpoint, origin in [
                ("https://updates.push.services.mozilla.com/wpush/v2/gAAAA", "https://updates.push.services.mozilla.com"),
                ("https://WEB.push.apple.com/QGuQyavXutnMnhqH", "https://web.push.apple.com"),
                ("https://127.0.0.1:8443/push/1", "https://127.0.0.1:8443"),
                ("https://push.example:443/x", "https://push.example"),
                ("https://[::1]:9000/p", "https://[::1]:9000"),
                ("https://user@host.example/p?q#f", "https://host.example")]:
            with self.subTest(endpoint=endpoint):
                self.assertEqual(wp.push_origin(endpoint), origin)
        for endpoint in ("http://push.example/x", "ftp://x/y", "https:///nohost", "not a url", "https://h:99999/x", ""):
            with self.subTest(endpoint=endpoint), self.assertRaises(wp.WebPushError):
                wp.push_origin(endpoint)

    def test_a_token_is_reused_per_push_service_until_near_expiry(self):
        signer = wp.VapidSigner(wp.VapidKey(777), self.SUBJECT)
        start = 1_700_000_000
        first = signer.token("https://fcm.googleapis.com", now=start)
        # A token signed afresh would carry a later "exp"; the same one means it was reused.
        self.assertEqual(signer.token("https://fcm.googleapis.com", now=start + 3600), first)
        renew_at = start + wp.VAPID_TOKEN_LIFETIME - wp.VAPID_TOKEN_RENEW_BEFORE
        self.assertEqual(signer.token("https://fcm.googleapis.com", now=renew_at - 1), first)
        renewed = signer.token("https://fcm.googleapis.com", now=renew_at)
        self.assertNotEqual(renewed, first)
        _, claims = verify_jwt_with_openssl(renewed, signer.key.public_key)
        self.assertEqual(claims["exp"], renew_at + wp.VAPID_TOKEN_LIFETIME)
        other = signer.token("https://web.push.apple.com", now=start)
        self.assertEqual(verify_jwt_with_openssl(other, signer.key.public_key)[1]["aud"], "https://web.push.apple.com")

    def test_the_token_cache_is_bounded(self):
        signer = wp.VapidSigner(wp.VapidKey(778), self.SUBJECT)
        for i in range(wp.VAPID_TOKENS_KEPT + 5):
            signer.token("https://push%d.example" % i, now=1_700_000_000)
        self.assertEqual(len(signer._tokens), wp.VAPID_TOKENS_KEPT)
        self.assertNotIn("https://push0.example", signer._tokens)

    def test_subject_and_lifetime_follow_rfc_8292(self):
        key = wp.VapidKey(779)
        for subject in ("support@37signals.com", "http://example.com", ""):
            with self.subTest(subject=subject), self.assertRaises(wp.WebPushError):
                wp.VapidSigner(key, subject)
        wp.VapidSigner(key, "https://campfire.example/contact")
        with self.assertRaises(wp.WebPushError):
            wp.VapidSigner(key, self.SUBJECT, lifetime=25 * 3600)


# -- Campfire's payload ----------------------------------------------------------------

class PushPayloadTest(unittest.TestCase):
    def test_campfires_notification_json(self):
        payload = wp.push_payload("All Talk", "Jason: Hello there 👋", "/rooms/7", 3)
        self.assertEqual(json.loads(payload), {"title": "All Talk", "options": {
            "body": "Jason: Hello there 👋", "icon": "/account/logo", "data": {"path": "/rooms/7", "badge": 3}}})
        self.assertIn("👋".encode(), payload)  # UTF-8 as Ruby's JSON.generate writes it, not \u escapes

    def check_cut(self, body, title="All Talk"):
        payload = wp.push_payload(title, body, "/rooms/7", 12)
        self.assertLessEqual(len(payload), wp.PUSH_MAX_PLAINTEXT_BYTES)
        message = json.loads(payload.decode("utf-8"))
        cut = message["options"]["body"]
        self.assertTrue(cut.endswith("…"))
        self.assertTrue(body.startswith(cut[:-1]))
        # As long as it can be: a few more characters would not have fit.
        longer = wp._payload_json(title, body[:len(cut) + 8] + "…", "/rooms/7", 12, "/account/logo")
        self.assertGreater(len(longer), wp.PUSH_MAX_PLAINTEXT_BYTES)
        sealed = wp.encrypt_push_message(payload, WebPushEncryptionTest.UA_PUBLIC, WebPushEncryptionTest.AUTH)
        self.assertLessEqual(len(sealed), wp.PUSH_MESSAGE_MAX_BYTES)
        return cut[:-1]

    def test_long_bodies_are_cut_to_fit_one_push_message(self):
        for body in ("a" * 10_000, "é" * 5_000, "中文" * 3_000, "😀" * 2_000, '"\\' * 3_000, "\x01\n" * 3_000):
            with self.subTest(body=body[:4]):
                self.check_cut(body)

    def test_a_cut_never_splits_a_character(self):
        family = "👨\u200d👩\u200d👧\u200d👦"
        for unit in (family, "👍🏽", "🇫🇷", "e\u0301", "❤️"):
            body = "x" + unit * 4000
            with self.subTest(unit=unit):
                kept = self.check_cut(body)[1:]
                self.assertEqual(kept, unit * (len(kept) // len(unit)))

    def test_a_title_too_long_is_cut_too(self):
        payload = wp.push_payload("T" * 5000, "body", "/rooms/1", 0)
        message = json.loads(payload)
        self.assertLessEqual(len(payload), wp.PUSH_MAX_PLAINTEXT_BYTES)
        self.assertEqual(message["options"]["body"], "")
        self.assertTrue(message["title"].startswith("TTTT") and message["title"].endswith("…"))

    def test_short_text_is_untouched_and_lone_surrogates_do_not_fail(self):
        self.assertEqual(json.loads(wp.push_payload("Ann", "hi", "/rooms/2", 1))["options"]["body"], "hi")
        payload = wp.push_payload("Ann", "bad \udcff byte", "/rooms/2", 1)
        self.assertEqual(json.loads(payload)["options"]["body"], "bad ? byte")


if __name__ == "__main__":
    unittest.main()
