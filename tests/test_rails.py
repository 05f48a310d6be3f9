"""Rails' signed formats and bcrypt, checked against independent peers.

Peers:
  * Ruby's own OpenSSL, JSON, Base64, URI and Marshal (Debian's `ruby`): the scripts
    below derive keys and build or check envelopes following Rails' source, spelled
    out step by step (they do not load Rails).
  * bcrypt-ruby itself (Debian's `ruby-bcrypt`, the gem has_secure_password calls).
  * Python's `bcrypt` package (test-only).
  * Published vectors: PBKDF2-HMAC-SHA1 (RFC 6070), PBKDF2-HMAC-SHA256, and the
    OpenWall crypt_blowfish vectors bcrypt-ruby's own specs use.
  * Fixed vectors written by the Ruby scripts with a fixed SECRET_KEY_BASE, kept here as
    literals so the formats stay pinned on machines without Ruby.

A peer that is missing skips its tests, except when CI is set: then it fails.
"""

import hashlib
import hmac
import json
import os
import random
import shutil
import subprocess
import unittest

from tests.helpers import campfire as rails

RUBY = shutil.which("ruby")
RUBY_TIMEOUT_SECONDS = 60

# Fixed vectors: SECRET_KEY_BASE = sha512("campfire fixed vector") in hex (128 characters,
# the shape of `SecureRandom.hex(64)` in Campfire's script/admin/generate-secrets).
FIXED_SECRET_KEY_BASE = hashlib.sha512(b"campfire fixed vector").hexdigest()
FIXED_NOW = 1767225600.123456  # 2026-01-01T00:00:00.123456Z
FIXED_TOKEN = "Kq3vN8xWb2ZtRm5YpLc7HdJf"  # has_secure_token's shape: 24 base58 characters
# cookies.signed.permanent[:session_token] = FIXED_TOKEN at FIXED_NOW, as sent in Set-Cookie.
FIXED_SESSION_COOKIE = (
    "eyJfcmFpbHMiOnsibWVzc2FnZSI6IklrdHhNM1pPT0hoWFlqSmFkRkp0TlZsd1RHTTNTR1JLWmlJPSIsImV4cCI6"
    "IjIwNDYtMDEtMDFUMDA6MDA6MDAuMTIzWiIsInB1ciI6ImNvb2tpZS5zZXNzaW9uX3Rva2VuIn19"
    "--a48ebc55673afc34eb2dec0f3c447ccf475f5a5a")
# User 1's and user 42's attachable_sgid (Rails 7.1+ format).
FIXED_SGID_USER_1 = (
    "eyJfcmFpbHMiOnsiZGF0YSI6ImdpZDovL2NhbXBmaXJlL1VzZXIvMSIsInB1ciI6ImF0dGFjaGFibGUifX0="
    "--fdcaa3b9dede216a4aee67d251b506690789b39a")
FIXED_SGID_USER_42 = (
    "eyJfcmFpbHMiOnsiZGF0YSI6ImdpZDovL2NhbXBmaXJlL1VzZXIvNDIiLCJwdXIiOiJhdHRhY2hhYmxlIn19"
    "--11d4ad7ffae4a570d60f0f5a6d4dfc6e02c5af3d")
# User 1's attachable_sgid as the first ONCE releases wrote it (load_defaults 7.0:
# Marshal-serialized gid inside the legacy JSON envelope, "exp":null).
FIXED_ONCE_ERA_SGID_USER_1 = (
    "eyJfcmFpbHMiOnsibWVzc2FnZSI6IkJBaEpJaHBuYVdRNkx5OWpZVzF3Wm1seVpTOVZjMlZ5THpFR09nWkZWQT09"
    "IiwiZXhwIjpudWxsLCJwdXIiOiJhdHRhY2hhYmxlIn19--85ec148c3f228551ba58c6a57be714bafcee50cb")

# Rails' derivation, spelled out for Ruby (railties/lib/rails/application.rb key_generator,
# activesupport key_generator.rb, message_verifier.rb, messages/metadata.rb):
#   key    = PBKDF2-HMAC-SHA256(SECRET_KEY_BASE, salt, 1000 iterations, 64 bytes)
#   signed = encoded + "--" + hex(HMAC-SHA1(key, encoded))
RUBY_PRELUDE = r'''
require "openssl"; require "json"; require "base64"; require "uri"; require "time"
def rails_key(skb, salt, len = 64)
  OpenSSL::PKCS5.pbkdf2_hmac(skb, salt, 1000, len, OpenSSL::Digest.new("SHA256"))
end
def rails_sign(key, encoded)
  "#{encoded}--#{OpenSSL::HMAC.hexdigest("SHA1", key, encoded)}"
end
def rails_unsign(key, signed)
  encoded, digest = signed.split("--", 2)
  raise "mismatched digest" unless digest == OpenSSL::HMAC.hexdigest("SHA1", key, encoded)
  encoded
end
'''


def _require_peer(test, available, name):
    if available:
        return
    if os.environ.get("CI"):
        test.fail(name + " is required when CI is set")
    test.skipTest(name + " is not installed")


def ruby(test, script, *args, requires=()):
    """Run a Ruby script (after RUBY_PRELUDE) with args; its stdout, stripped."""
    _require_peer(test, RUBY, "ruby")
    command = [RUBY] + ["-r" + lib for lib in requires] + ["-e", RUBY_PRELUDE + script, "--", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUBY_TIMEOUT_SECONDS)
    if result.returncode != 0:
        test.fail("ruby failed: " + result.stderr)
    return result.stdout.strip()


def ruby_has(library):
    if not RUBY:
        return False
    result = subprocess.run([RUBY, "-e", "require %r" % library], capture_output=True,
                            timeout=RUBY_TIMEOUT_SECONDS)
    return result.returncode == 0


class KeyGeneratorTest(unittest.TestCase):
    def test_pbkdf2_sha1_rfc6070_vectors(self):
        # RFC 6070 section 2 (the digest Rails used before load_defaults 7.0).
        self.assertEqual(rails.rails_key("password", "salt", 20, "sha1", 1).hex(),
                         "0c60c80f961f0e71f3a9b524af6012062fe037a6")
        self.assertEqual(rails.rails_key("password", "salt", 20, "sha1", 4096).hex(),
                         "4b007901b765489abead49d926f721d065a429c1")

    def test_pbkdf2_sha256_published_vectors(self):
        self.assertEqual(rails.rails_key("password", "salt", 32, "sha256", 1).hex(),
                         "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b")
        self.assertEqual(rails.rails_key("password", "salt", 32, "sha256", 4096).hex(),
                         "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a")

    def test_keys_match_ruby_openssl_for_every_salt_rails_uses(self):
        salts = [("signed cookie", 64), ("authenticated encrypted cookie", 32),
                 ("signed_global_ids", 64), ("ActiveStorage", 64)]
        ours = [rails.rails_key(FIXED_SECRET_KEY_BASE, salt, size).hex() for salt, size in salts]
        theirs = ruby(self, '''
          skb = ARGV.shift
          ARGV.each_slice(2) { |salt, size| puts rails_key(skb, salt, size.to_i).unpack1("H*") }
        ''', FIXED_SECRET_KEY_BASE, *[str(part) for pair in salts for part in pair]).splitlines()
        self.assertEqual(ours, theirs)
        self.assertEqual(rails.signed_cookie_key(FIXED_SECRET_KEY_BASE).hex(), theirs[0])
        self.assertEqual(rails.signed_global_id_key(FIXED_SECRET_KEY_BASE).hex(), theirs[2])

    def test_the_secret_is_used_as_text_not_hex_decoded(self):
        as_text = hashlib.pbkdf2_hmac("sha256", FIXED_SECRET_KEY_BASE.encode(), b"signed cookie", 1000, 64)
        self.assertEqual(rails.signed_cookie_key(FIXED_SECRET_KEY_BASE), as_text)

    def test_empty_secret_is_refused(self):
        with self.assertRaises(ValueError):
            rails.signed_cookie_key("")


class SignedGlobalIdTest(unittest.TestCase):
    skb = FIXED_SECRET_KEY_BASE

    def test_fixed_vectors_verify_and_are_reproduced_exactly(self):
        self.assertEqual(rails.locate_signed_global_id(self.skb, FIXED_SGID_USER_1, now=FIXED_NOW),
                         ("campfire", "User", "1"))
        self.assertEqual(rails.locate_signed_global_id(self.skb, FIXED_SGID_USER_42, now=FIXED_NOW),
                         ("campfire", "User", "42"))
        self.assertEqual(rails.attachable_sgid(self.skb, "User", 1), FIXED_SGID_USER_1)
        self.assertEqual(rails.attachable_sgid(self.skb, "User", 42), FIXED_SGID_USER_42)

    def test_once_era_marshal_sgid_verifies(self):
        self.assertEqual(rails.locate_signed_global_id(self.skb, FIXED_ONCE_ERA_SGID_USER_1, now=FIXED_NOW),
                         ("campfire", "User", "1"))

    def test_ruby_reproduces_the_fixed_vectors(self):
        out = ruby(self, '''
          skb = ARGV[0]
          key = rails_key(skb, "signed_global_ids")
          [1, 42].each do |id|
            envelope = {"_rails" => {"data" => "gid://campfire/User/#{id}", "pur" => "attachable"}}
            puts rails_sign(key, Base64.urlsafe_encode64(JSON.generate(envelope)))
          end
          inner = Base64.urlsafe_encode64(Marshal.dump("gid://campfire/User/1"))
          legacy = {"_rails" => {"message" => inner, "exp" => nil, "pur" => "attachable"}}
          puts rails_sign(key, Base64.urlsafe_encode64(JSON.generate(legacy)))
        ''', self.skb).splitlines()
        self.assertEqual(out, [FIXED_SGID_USER_1, FIXED_SGID_USER_42, FIXED_ONCE_ERA_SGID_USER_1])

    def test_sgid_alphabet_is_url_safe_with_padding(self):
        # GlobalID::Verifier encodes with Base64.urlsafe_encode64 (padding kept).
        value = "gid://campfire/User/~~~~???"
        ours = rails.global_id_verifier(self.skb).generate(value, purpose="attachable")
        self.assertRegex(ours.split("--")[0], r"[-_]")
        theirs = ruby(self, '''
          envelope = {"_rails" => {"data" => ARGV[1], "pur" => "attachable"}}
          puts rails_sign(rails_key(ARGV[0], "signed_global_ids"), Base64.urlsafe_encode64(JSON.generate(envelope)))
        ''', self.skb, value)
        self.assertEqual(ours, theirs)
        self.assertEqual(rails.global_id_verifier(self.skb).verify(theirs, purpose="attachable", now=0), value)

    def test_ruby_verifies_ours(self):
        ids = [1, 7, 123456789]
        sgids = [rails.attachable_sgid(self.skb, "User", user_id) for user_id in ids]
        out = ruby(self, '''
          skb = ARGV.shift
          key = rails_key(skb, "signed_global_ids")
          ARGV.each do |sgid|
            envelope = JSON.parse(Base64.urlsafe_decode64(rails_unsign(key, sgid)))
            raise "purpose" unless envelope["_rails"]["pur"] == "attachable"
            raise "expiry" if envelope["_rails"].key?("exp")
            puts envelope["_rails"]["data"]
          end
        ''', self.skb, *sgids).splitlines()
        self.assertEqual(out, ["gid://campfire/User/%d" % user_id for user_id in ids])

    def test_ruby_signed_sgids_with_expiry_are_checked(self):
        out = ruby(self, '''
          skb, now = ARGV[0], Time.at(ARGV[1].to_f).utc
          key = rails_key(skb, "signed_global_ids")
          [now + 3600, now - 1].each do |exp|
            envelope = {"_rails" => {"data" => "gid://campfire/User/5", "exp" => exp.iso8601(3), "pur" => "attachable"}}
            puts rails_sign(key, Base64.urlsafe_encode64(JSON.generate(envelope)))
          end
        ''', self.skb, str(FIXED_NOW)).splitlines()
        self.assertEqual(rails.locate_signed_global_id(self.skb, out[0], now=FIXED_NOW), ("campfire", "User", "5"))
        self.assertIsNone(rails.locate_signed_global_id(self.skb, out[1], now=FIXED_NOW))

    def test_expiring_sgid_we_sign_carries_rails_expiry(self):
        sgid = rails.sign_global_id(self.skb, "User", 3, expires_at=FIXED_NOW + 60)
        envelope = json.loads(rails.urlsafe_decode64(sgid.split("--")[0]))
        self.assertEqual(envelope["_rails"]["exp"], "2026-01-01T00:01:00.123Z")
        self.assertIsNotNone(rails.locate_signed_global_id(self.skb, sgid, now=FIXED_NOW + 59))
        self.assertIsNone(rails.locate_signed_global_id(self.skb, sgid, now=FIXED_NOW + 60.2))

    def test_tampered_wrong_key_and_wrong_purpose_are_refused(self):
        sgid = FIXED_SGID_USER_1
        flipped = sgid[:-1] + ("0" if sgid[-1] != "0" else "1")
        self.assertIsNone(rails.locate_signed_global_id(self.skb, flipped, now=FIXED_NOW))
        self.assertIsNone(rails.locate_signed_global_id("another" + self.skb, sgid, now=FIXED_NOW))
        self.assertIsNone(rails.locate_signed_global_id(self.skb, sgid, purpose="default", now=FIXED_NOW))
        swapped = FIXED_SGID_USER_42.split("--")[0] + "--" + sgid.split("--")[1]
        self.assertIsNone(rails.locate_signed_global_id(self.skb, swapped, now=FIXED_NOW))
        for garbage in ["", "--", "x" * 50, "abc--" + "0" * 40, "é" * 60, sgid + "00", "x" * 10000]:
            self.assertIsNone(rails.locate_signed_global_id(self.skb, garbage, now=FIXED_NOW))

    def test_seeded_garbage_never_raises(self):
        generator = random.Random(17)
        alphabet = "ABCxyz019+/=-_-{}\"é\x00"
        for _ in range(500):
            text = "".join(generator.choice(alphabet) for _ in range(generator.randrange(0, 120)))
            self.assertIsNone(rails.locate_signed_global_id(self.skb, text, now=FIXED_NOW))
            rails.peek_global_id(text)  # only documented results: a tuple or None

    def test_globalid_old_self_described_format_is_read(self):
        # GlobalID before Rails' metadata: a signed JSON {"gid","purpose","expires_at"}.
        out = ruby(self, '''
          key = rails_key(ARGV[0], "signed_global_ids")
          body = {"gid" => "gid://campfire/User/9", "purpose" => "attachable", "expires_at" => nil}
          puts rails_sign(key, Base64.urlsafe_encode64(JSON.generate(body)))
        ''', self.skb)
        self.assertEqual(rails.locate_signed_global_id(self.skb, out, now=FIXED_NOW), ("campfire", "User", "9"))
        self.assertIsNone(rails.locate_signed_global_id(self.skb, out, purpose="other", now=FIXED_NOW))

    def test_peek_reads_like_campfire_without_the_signature(self):
        # test/lib/rails_ext/action_text_attachables_test.rb builds a Rails 7 sgid this way.
        out = ruby(self, '''
          marshaled = Base64.urlsafe_encode64(Marshal.dump("gid://campfire/User/12"))
          payload = {"_rails" => {"message" => marshaled, "exp" => nil, "pur" => "attachable"}}
          puts "#{Base64.strict_encode64(JSON.generate(payload))}--invalidsignature"
        ''')
        self.assertEqual(rails.peek_global_id(out), ("campfire", "User", "12"))
        self.assertIsNone(rails.locate_signed_global_id(self.skb, out, now=FIXED_NOW))
        self.assertEqual(rails.peek_global_id(FIXED_SGID_USER_42), ("campfire", "User", "42"))
        self.assertIsNone(rails.peek_global_id("not base64!--x"))


class SignedCookieTest(unittest.TestCase):
    skb = FIXED_SECRET_KEY_BASE

    def test_fixed_vector_is_reproduced_and_verifies(self):
        value, expires_at = rails.rails_session_cookie(self.skb, FIXED_TOKEN, now=FIXED_NOW)
        self.assertEqual(value, FIXED_SESSION_COOKIE)
        self.assertAlmostEqual(expires_at, 2398377600.123456, places=3)  # 2046-01-01T00:00:00.123456Z
        self.assertEqual(rails.verify_rails_session_cookie(self.skb, FIXED_SESSION_COOKIE, now=FIXED_NOW), FIXED_TOKEN)

    def test_ruby_reproduces_the_fixed_vector(self):
        out = ruby(self, '''
          skb, token = ARGV[0], ARGV[1]
          now = Time.at(1767225600, 123456, :usec).utc
          # 20.years.from_now: the same calendar date and time twenty years on
          exp = Time.utc(now.year + 20, now.month, now.day, now.hour, now.min, now.sec + Rational(now.usec, 1_000_000))
          # the :json cookie serializer, then the legacy metadata envelope (NullSerializer)
          message = Base64.strict_encode64(JSON.generate(token))
          envelope = {"_rails" => {"message" => message, "exp" => exp.iso8601(3), "pur" => "cookie.session_token"}}
          signed = rails_sign(rails_key(skb, "signed cookie"), Base64.strict_encode64(JSON.generate(envelope)))
          puts URI.encode_www_form_component(signed)
        ''', self.skb, FIXED_TOKEN)
        self.assertEqual(out, FIXED_SESSION_COOKIE)

    def test_ruby_verifies_ours(self):
        now = 1780000000.5
        value, expires_at = rails.rails_session_cookie(self.skb, "tokenABC123", now=now)
        out = ruby(self, '''
          skb, raw, now = ARGV[0], ARGV[1], Time.at(ARGV[2].to_f).utc
          signed = URI.decode_www_form_component(raw)
          envelope = JSON.parse(Base64.strict_decode64(rails_unsign(rails_key(skb, "signed cookie"), signed)))
          rails = envelope["_rails"]
          raise "purpose" unless rails["pur"] == "cookie.session_token"
          raise "expired" unless now < Time.iso8601(rails["exp"])
          puts rails["exp"]
          puts JSON.parse(Base64.strict_decode64(rails["message"]))
        ''', self.skb, value, str(now)).splitlines()
        self.assertEqual(out, ["2046-05-28T20:26:40.500Z", "tokenABC123"])
        self.assertEqual(rails.parse_iso8601(out[0]), int(expires_at * 1000) / 1000)

    def test_ruby_signed_cookies_are_accepted_and_bad_ones_refused(self):
        out = ruby(self, '''
          skb, now = ARGV[0], Time.at(ARGV[1].to_f).utc
          sign = lambda do |key_skb, value, exp, purpose|
            message = Base64.strict_encode64(JSON.generate(value))
            envelope = {"_rails" => {"message" => message, "exp" => exp&.iso8601(3), "pur" => purpose}}
            URI.encode_www_form_component(rails_sign(rails_key(key_skb, "signed cookie"), Base64.strict_encode64(JSON.generate(envelope))))
          end
          puts sign.(skb, "good+/=token", now + 86400, "cookie.session_token")
          puts sign.(skb, "expired", now - 1, "cookie.session_token")
          puts sign.("other" + skb, "otherkey", now + 86400, "cookie.session_token")
          puts sign.(skb, "othername", now + 86400, "cookie.last_room")
          puts sign.(skb, "noexpiry", nil, "cookie.session_token")
          # a cookie written before use_cookies_with_metadata: no envelope at all
          puts URI.encode_www_form_component(rails_sign(rails_key(skb, "signed cookie"), Base64.strict_encode64(JSON.generate("bare"))))
        ''', self.skb, str(FIXED_NOW)).splitlines()
        check = [rails.verify_rails_session_cookie(self.skb, raw, now=FIXED_NOW) for raw in out]
        self.assertEqual(check, ["good+/=token", None, None, None, "noexpiry", "bare"])
        self.assertEqual(rails.verify_signed_cookie(self.skb, "last_room", rails.cookie_unescape(out[3]),
                                                    now=FIXED_NOW), "othername")

    def test_tampering_is_refused(self):
        raw = FIXED_SESSION_COOKIE
        for bad in [raw[:-1] + "0", raw.replace("eyJ", "eyK", 1), raw + "0", raw[:-42] + "-" + raw[-40:],
                    "", "--", "%", "%ZZ" + raw, raw.replace("--", "%2D%2D%2D")]:
            self.assertIsNone(rails.verify_rails_session_cookie(self.skb, bad, now=FIXED_NOW), bad)

    def test_a_marshal_cookie_reads_as_nothing(self):
        # Under cookies_serializer :json a Marshal-serialized value is not loaded.
        out = ruby(self, '''
          skb = ARGV[0]
          message = Base64.strict_encode64(Marshal.dump("marshaled"))
          envelope = {"_rails" => {"message" => message, "exp" => nil, "pur" => "cookie.session_token"}}
          puts URI.encode_www_form_component(rails_sign(rails_key(skb, "signed cookie"), Base64.strict_encode64(JSON.generate(envelope))))
        ''', self.skb)
        self.assertIsNone(rails.verify_rails_session_cookie(self.skb, out, now=FIXED_NOW))

    def test_permanent_expiry_keeps_the_calendar_date(self):
        # ActiveSupport's Time#advance(years:) moves by Date#>>, which keeps the day of the
        # month and clamps it to the month's end: 2080-02-29 + 20 years is 2100-02-28.
        cases = [((2024, 2, 29, 12, 0, 0), "2044-02-29T12:00:00.000Z"),
                 ((2080, 2, 29, 12, 0, 0), "2100-02-28T12:00:00.000Z"),
                 ((2019, 3, 1, 23, 59, 59), "2039-03-01T23:59:59.000Z")]
        for parts, expected in cases:
            start = rails.datetime.datetime(*parts, tzinfo=rails.datetime.timezone.utc).timestamp()
            self.assertEqual(rails._iso8601_ms(rails._utc_moment(rails.permanent_expiry(start))), expected)


class CodecPeerTest(unittest.TestCase):
    """The hand-written pieces (escaping, base64 variants, Marshal) against Ruby's own."""

    def test_cookie_escape_matches_uri_encode_www_form_component(self):
        texts = ["".join(chr(c) for c in range(32, 127)), "a b+c/d=e%f", "é✓🔥", "\t\n"]
        out = ruby(self, 'ARGV.each { |t| puts URI.encode_www_form_component(t) }', *texts).splitlines()
        self.assertEqual([rails.cookie_escape(t) for t in texts], out)

    def test_cookie_unescape_matches_uri_decode_www_form_component(self):
        texts = ["a+b%2Bc%2F%3D", "%C3%A9x", "plain", "%zz", "100%", "%4"]
        out = json.loads(ruby(self, '''
          puts JSON.generate(ARGV.map { |t| URI.decode_www_form_component(t) rescue t })
        ''', *texts))
        self.assertEqual([rails.cookie_unescape(t) for t in texts], out)

    def test_base64_variants_accept_and_refuse_like_ruby(self):
        samples = ["eA==", "eA", "eA=", "e A=", "eHl6", "-_-_", "+/+/", "a-_b+/c=", "", "====", "eHk",
                   "eHk=", "eA==eA==", "_w", "_w=="]
        out = json.loads(ruby(self, '''
          res = ARGV.map do |s|
            strict = (Base64.strict_decode64(s).unpack1("H*") rescue nil)
            url = (Base64.urlsafe_decode64(s).unpack1("H*") rescue nil)
            [strict, url]
          end
          puts JSON.generate(res)
        ''', *samples))
        for sample, (strict, url) in zip(samples, out):
            for decode, expected in ((rails.strict_decode64, strict), (rails.urlsafe_decode64, url)):
                try:
                    ours = decode(sample).hex()
                except ValueError:
                    ours = None
                self.assertEqual(ours, expected, (decode.__name__, sample))

    def test_marshal_reader_matches_ruby_marshal(self):
        script = '''
          values = [nil, true, false, 0, 1, -1, 122, 123, -123, -124, 255, 256, -256, 65535, 65536,
                    2**30 - 1, -(2**30), "", "plain", "é✓", "bin\\xff".b, "ascii".encode("US-ASCII"),
                    "gid://campfire/User/1", :sym, [:sym, :sym, "x"], {"a" => 1, "b" => [nil, "c"]},
                    "latin1".encode("ISO-8859-1")]
          values.each { |v| puts Marshal.dump(v).unpack1("H*") }
        '''
        dumps = [bytes.fromhex(line) for line in ruby(self, script).splitlines()]
        expected = [None, True, False, 0, 1, -1, 122, 123, -123, -124, 255, 256, -256, 65535, 65536,
                    2 ** 30 - 1, -(2 ** 30), "", "plain", "é✓", "bin\xff", "ascii",
                    "gid://campfire/User/1", "sym", ["sym", "sym", "x"], {"a": 1, "b": [None, "c"]},
                    "latin1"]
        self.assertEqual([rails.marshal_load(d) for d in dumps], expected)

    def test_marshal_reader_refuses_objects_and_bad_data(self):
        dumps = ruby(self, '''
          puts Marshal.dump(1.5).unpack1("H*")
          puts Marshal.dump(Time.at(0)).unpack1("H*")
          puts Marshal.dump(Struct.new(:a).new(1)).unpack1("H*") rescue puts "0408"
          puts Marshal.dump(2**70).unpack1("H*")
        ''').splitlines()
        for hex_dump in dumps + ["", "0409", "04085b", "04082206", "0408220568656c6c6f00"]:
            with self.assertRaises(ValueError):
                rails.marshal_load(bytes.fromhex(hex_dump))

    def test_json_encode_matches_activesupport_escaping(self):
        value = {"_rails": {"data": "a<b>&c \"q\" é\n\u2028", "pur": "x"}}
        # ActiveSupport::JSON.encode = JSON.generate, then <, > and & as \\u003c, \\u003e, \\u0026.
        out = ruby(self, '''
          v = JSON.parse(ARGV[0])
          puts JSON.generate(v).gsub(/[<>&]/, "<" => "\\\\u003c", ">" => "\\\\u003e", "&" => "\\\\u0026")
        ''', json.dumps(value))
        self.assertEqual(rails.rails_json(value), out)


class MessageVerifierTest(unittest.TestCase):
    key = bytes(range(64))

    def test_json_serializer_round_trip_and_ruby_check(self):
        verifier = rails.MessageVerifier(self.key)
        message = verifier.generate({"id": 5, "name": "é"}, purpose="p", expires_at=FIXED_NOW + 10)
        self.assertEqual(verifier.verify(message, purpose="p", now=FIXED_NOW), {"id": 5, "name": "é"})
        with self.assertRaises(rails.InvalidMessage):
            verifier.verify(message, purpose="q", now=FIXED_NOW)
        with self.assertRaises(rails.InvalidMessage):
            verifier.verify(message, purpose="p", now=FIXED_NOW + 10)
        with self.assertRaises(rails.InvalidMessage):
            verifier.verify(message, now=FIXED_NOW)  # no purpose given, one signed
        out = ruby(self, '''
          key = [ARGV[0]].pack("H*")
          env = JSON.parse(Base64.strict_decode64(rails_unsign(key, ARGV[1])))
          puts JSON.generate([env["_rails"]["data"], env["_rails"]["pur"], env["_rails"]["exp"]])
        ''', self.key.hex(), message)
        self.assertEqual(json.loads(out), [{"id": 5, "name": "é"}, "p", "2026-01-01T00:00:10.123Z"])

    def test_without_metadata_the_bare_value_is_signed(self):
        verifier = rails.MessageVerifier(self.key)
        message = verifier.generate("data")
        self.assertEqual(rails.strict_decode64(message.split("--")[0]), b'"data"')
        self.assertEqual(verifier.verify(message, now=0), "data")
        with self.assertRaises(rails.InvalidMessage):
            verifier.verify(message, purpose="p", now=0)

    def test_strict_verifier_also_reads_url_safe_messages(self):
        # MessageVerifier#decode (Rails 7.2+) falls back to the other alphabet.
        out = ruby(self, '''
          key = [ARGV[0]].pack("H*")
          puts rails_sign(key, Base64.urlsafe_encode64(JSON.generate({"_rails" => {"data" => "???>>>", "pur" => "x"}}), padding: false))
        ''', self.key.hex())
        self.assertEqual(rails.MessageVerifier(self.key).verify(out, purpose="x", now=0), "???>>>")

    def test_sha256_digest_option(self):
        verifier = rails.MessageVerifier(self.key, digest="sha256")
        message = verifier.generate("x")
        encoded, digest = message.split("--")
        self.assertEqual(digest, hmac.new(self.key, encoded.encode(), hashlib.sha256).hexdigest())
        self.assertEqual(verifier.verify(message, now=0), "x")


class BcryptTest(unittest.TestCase):
    # OpenWall crypt_blowfish vectors, as bcrypt-ruby's spec/bcrypt/engine_spec.rb lists them.
    VECTORS = [
        (b"U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"),
        (b"U*U*", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.VGOzA784oUp/Z0DY336zx7pLYAy0lwK"),
        (b"U*U*U", "$2a$05$XXXXXXXXXXXXXXXXXXXXXOAcXxm9kjPGEMsLznoKqmqw7tc8WCx4a"),
        (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789chars after 72 are ignored",
         "$2a$05$abcdefghijklmnopqrstuu5s2v8.iXieOjg/.AySBTTZIIVFJeBui"),
        (b"\xff\xff\xa3", "$2y$05$/OK.fbVrR/bpIqNJ5ianF.CE5elHaaO4EbggVDjb8P19RukzXSM3e"),
        (b"\xff\xff\xa3", "$2a$05$/OK.fbVrR/bpIqNJ5ianF.nqd1wy.pTMdcvrRWxyiGL2eMz.2a85."),
        (b"\xff\xff\xa3", "$2b$05$/OK.fbVrR/bpIqNJ5ianF.CE5elHaaO4EbggVDjb8P19RukzXSM3e"),
        (b"\xa3", "$2a$05$/OK.fbVrR/bpIqNJ5ianF.Sa7shbm4.OzKpvFnX1pQLmQW96oUlCq"),
        (b"\xff\xa3" b"34" b"\xff\xff\xff\xa3" b"345", "$2a$05$/OK.fbVrR/bpIqNJ5ianF.ZC1JEJ8Z4gPfpe1JOr/oyPXTWl9EFd."),
        (b"\xaa" * 72 + b"chars after 72 are ignored as usual", "$2a$05$/OK.fbVrR/bpIqNJ5ianF.swQOIzjOiJ9GHEPuhEkvqrUyvWhEMx6"),
        (b"", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.7uG0VCzI2bS7j6ymqJi9CdcdxiRTWNy"),
        (b"a", "$2a$06$m0CrhHm10qJ3lXRY.5zDGO3rS2KdeeWLuGmsfGlMfOxih58VYVfxe"),
        (b"a", "$2b$06$ehKGYiS4wt2HAr7KQXS5z.OaRjB4jHO7rBHJKlGXbqEH3QVJfO7iO"),
    ]

    def setUp(self):
        if not rails.bcrypt_supported():
            if os.environ.get("CI"):
                self.fail("this system's crypt(3) cannot make bcrypt digests")
            self.skipTest("this system's crypt(3) cannot make bcrypt digests")

    def test_openwall_vectors(self):
        for password, digest in self.VECTORS:
            self.assertIs(rails.bcrypt_check(password, digest), True, digest)
            self.assertIs(rails.bcrypt_check(password + b"x" if len(password) < 72 else b"nope", digest), False)

    def test_new_digests_look_like_bcrypt_ruby_ones(self):
        digest = rails.bcrypt_hash("secret123456")
        self.assertTrue(digest.startswith("$2a$12$"), digest)
        self.assertTrue(rails.is_bcrypt_digest(digest))
        self.assertIs(rails.bcrypt_check("secret123456", digest), True)
        self.assertNotEqual(rails.bcrypt_hash("secret123456", 4), rails.bcrypt_hash("secret123456", 4))

    def test_malformed_digests_and_costs(self):
        for bad in ["", "$2a$04$short", "$scrypt$x", None, "$2a$04$" + "!" * 53]:
            self.assertIs(rails.bcrypt_check("x", bad), False)
        for cost in (3, 32):
            with self.assertRaises(ValueError):
                rails.bcrypt_hash("x", cost)
        # bcrypt-ruby refuses a NUL in a password (StringValueCStr), so no digest matches one.
        self.assertIs(rails.bcrypt_check("a\0b", rails.bcrypt_hash("a", 4)), False)
        with self.assertRaises(ValueError):
            rails.bcrypt_hash("a\0b", 4)

    def test_bcrypt_ruby_checks_ours_and_we_check_its(self):
        _require_peer(self, ruby_has("bcrypt"), "ruby-bcrypt")
        passwords = ["secret123456", "päss wörd ✓", "x" * 80, "'\"$\\"]
        ours = [rails.bcrypt_hash(p, 4) for p in passwords]
        out = json.loads(ruby(self, '''
          pairs = JSON.parse(ARGV[0])
          checks = pairs.map { |pw, d| [BCrypt::Password.new(d) == pw, BCrypt::Password.new(d) == pw + "!"] }
          made = pairs.map { |pw, _| BCrypt::Password.create(pw, cost: 4).to_s }
          puts JSON.generate([checks, made])
        ''', json.dumps(list(zip(passwords, ours))), requires=["bcrypt"]))
        checks, made = out
        # Past 72 bytes nothing counts: "x" * 80 + "!" matches the digest of "x" * 80.
        self.assertEqual(checks, [[True, len(p.encode()) > 72] for p in passwords])
        for password, digest in zip(passwords, made):
            self.assertTrue(digest.startswith("$2a$04$"))
            self.assertIs(rails.bcrypt_check(password, digest), True)
            self.assertIs(rails.bcrypt_check(password + "!", digest), False if len(password) < 72 else True)

    def test_bcrypt_ruby_default_cost_is_ours(self):
        _require_peer(self, ruby_has("bcrypt"), "ruby-bcrypt")
        self.assertEqual(ruby(self, "puts BCrypt::Engine.cost", requires=["bcrypt"]), str(rails.BCRYPT_COST))

    def test_python_bcrypt_package_agrees_both_ways(self):
        try:
            import bcrypt
        except ImportError:
            bcrypt = None
        _require_peer(self, bcrypt, "the bcrypt package")
        for password in [b"secret123456", "ünïcode".encode(), b"y" * 72]:
            ours = rails.bcrypt_hash(password, 4)
            self.assertTrue(bcrypt.checkpw(password, ours.encode()))
            self.assertFalse(bcrypt.checkpw(password + b"!" if len(password) < 72 else b"z", ours.encode()))
            theirs = bcrypt.hashpw(password, bcrypt.gensalt(4, prefix=b"2a")).decode()
            self.assertIs(rails.bcrypt_check(password, theirs), True)


if __name__ == "__main__":
    unittest.main()
