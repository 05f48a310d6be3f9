"""Off-site backups: AWS Signature Version 4, BACKUP_URL, and uploads to real servers.

Signatures are checked three ways: against the AWS SigV4 test suite and the
S3 API Reference's worked examples (published values), and against botocore's
signer as an independent peer on random requests. Transfers run against moto's
S3 server (a separate process on 127.0.0.1 that checks every signature), through
a proxy that injects failures, and against an HTTPS server with its own CA.

Test-only packages: botocore, boto3, moto[server], cryptography.
"""

import base64
import datetime
import hashlib
import http.client
import http.server
import importlib.util
import json
import logging
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request
from unittest import mock

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where campfire.py is

from tests.helpers import campfire as offsite  # noqa: E402
from tests.helpers import campfire  # noqa: E402

AwsCredentials, OffsiteCancelled, OffsiteClient, OffsiteConfigError = (
    campfire.AwsCredentials, campfire.OffsiteCancelled, campfire.OffsiteClient, campfire.OffsiteConfigError)
OffsiteFailed, OffsiteUnsupported, RetryPolicy, Cancellation = (
    campfire.OffsiteFailed, campfire.OffsiteUnsupported, campfire.RetryPolicy, campfire.Cancellation)

MiB = 1024 * 1024
# Retries are logged as warnings on the "campfire" logger; kept off the test output
# here, and checked where they matter.
_QUIET = logging.NullHandler()


def setUpModule():
    logging.getLogger("campfire").addHandler(_QUIET)
    logging.getLogger("campfire").propagate = False


FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)  # retries without real waits
DEADLINE = 60.0  # seconds any one transfer in these tests may take


class ProgressWatch:
    """A progress callback that remembers when bytes last moved."""

    def __init__(self):
        self.done = 0
        self.moved_at = time.monotonic()

    def __call__(self, done, total):
        self.done = done
        self.moved_at = time.monotonic()

    def stuck_for(self, seconds):
        """True once some bytes went out and then none for `seconds`: the worker
        is blocked inside a socket call, where only a shut-down socket wakes it."""
        return self.done > 0 and time.monotonic() - self.moved_at >= seconds


def wait_for(predicate, timeout=10.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


####
#### The AWS SigV4 test suite (aws-sig-v4-test-suite, as shipped in botocore's
#### tests/unit/auth/aws4_testsuite): request, canonical request, string to
#### sign, Authorization. Those whose path has '.', '..' or '//' segments are
#### left out: they test the path normalization S3 must not do.
####

SUITE_CREDENTIALS = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SUITE_STS_TOKEN_AFTER = (
    "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8Y"
    "UuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8"
    "YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2IC"
    "CR/oLxBA==")
SUITE_SESSION_TOKEN = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"

SUITE = {
    'get-vanilla': (
        'GET / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31',
    ),
    'get-vanilla-query': (
        'GET / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31',
    ),
    'get-vanilla-empty-query-key': (
        'GET /?Param1=value1 HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'GET\n/\nParam1=value1\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n1e24db194ed7d0eec2de28d7369675a243488e08526e8c1c73571282f7c517ab',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb',
    ),
    'get-vanilla-query-order-key': (
        'GET /?Param1=value2&Param1=Value1 HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'GET\n/\nParam1=Value1&Param1=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n704b4cef673542d84cdff252633f065e8daeba5f168b77116f8b1bcaf3d38f89',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1',
    ),
    'get-vanilla-query-order-key-case': (
        'GET /?Param2=value2&Param1=value1 HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500',
    ),
    'get-vanilla-query-order-value': (
        'GET /?Param1=value2&Param1=value1 HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'GET\n/\nParam1=value1&Param1=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nc968629d70850097a2d8781c9bf7edcb988b04cac14cca9be4acc3595f884606',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694',
    ),
    'get-vanilla-query-order-encoded': (
        'GET /?Param-3=Value3&Param=Value2&%E1%88%B4=Value1 HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z\n',
        'GET\n/\n%E1%88%B4=Value1&Param=Value2&Param-3=Value3\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n868294f5c38bd141c4972a373a76654f1418a8e4fc18b2e7903ae45e8ae0ec71',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac',
    ),
    'get-vanilla-query-unreserved': (
        'GET /?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'GET\n/\n-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nc30d4703d9f799439be92736156d47ccfb2d879ddf56f5befa6d1d6aab979177',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197',
    ),
    'get-vanilla-utf8-query': (
        'GET /?ሴ=bar HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'GET\n/\n%E1%88%B4=bar\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\neb30c5bed55734080471a834cc727ae56beb50e5f39d1bff6d0d38cb192a7073',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04',
    ),
    'get-utf8': (
        'GET /ሴ HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'GET\n/%E1%88%B4\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n2a0a97d02205e45ce2e994789806b19270cfbbb0921b278ccf58f5249ac42102',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85',
    ),
    'get-unreserved': (
        'GET /-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'GET\n/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n6a968768eefaa713e2a6b16b589a8ea192661f098f37349f4e2c0082757446f9',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f',
    ),
    'get-space': (
        'GET /example space/ HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'GET\n/example%20space/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n63ee75631ed7234ae61b5f736dfc7754cdccfedbff4b5128a915706ee9390d86',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741',
    ),
    'get-special-character': (
        'GET /example/$delete HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z\n',
        'GET\n/example/%24delete\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n4053e45b5cef7cec5e17f736b1c12b3faf0388fd4c0bd24326386f132039ce5c',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=a853c9b21b528b19643d00910d35b83a10c366a10833ceefb45edd6c80e40f27',
    ),
    'get-header-key-duplicate': (
        'GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:value2\nMy-Header1:value2\nMy-Header1:value1\nX-Amz-Date:20150830T123600Z',
        'GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value2,value2,value1\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\ndc7f04a3abfde8d472b0ab1a418b741b7c67174dad1551b4117b15527fbe966c',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea',
    ),
    'get-header-value-order': (
        'GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:value4\nMy-Header1:value1\nMy-Header1:value3\nMy-Header1:value2\nX-Amz-Date:20150830T123600Z',
        'GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value4,value1,value3,value2\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n31ce73cd3f3d9f66977ad3dd957dc47af14df92fcd8509f59b349e9137c58b86',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01',
    ),
    'get-header-value-trim': (
        'GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1: value1\nMy-Header2: "a   b   c"\nX-Amz-Date:20150830T123600Z',
        'GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:"a b c"\nx-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\na726db9b0df21c14f559d0a978e563112acb1b9e05476f0a6a1c7d68f28605c7',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736',
    ),
    'get-header-value-multiline': (
        'GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:value1\n  value2\n     value3\nX-Amz-Date:20150830T123600Z',
        'GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1 value2 value3\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\ne99419459a677bc11de234014be3c4e72c1ea5b454ceb58b613061f5d7a162e8',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=cfd34249e4b1c8d6b91ef74165d41a32e5fab3306300901bb65a51a73575eefd',
    ),
    'get-vanilla-with-session-token': (
        'GET / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\nx-amz-security-token:6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267\n\nhost;x-amz-date;x-amz-security-token\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n067b36aa60031588cea4a4cde1f21215227a047690c72247f1d70b32fbbfad2b',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8',
    ),
    'post-vanilla': (
        'POST / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b',
    ),
    'post-vanilla-query': (
        'POST /?Param1=value1 HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'POST\n/\nParam1=value1\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n9d659678c1756bb3113e2ce898845a0a79dbbc57b740555917687f1b3340fbbd',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11',
    ),
    'post-vanilla-empty-query-value': (
        'POST /?Param1=value1 HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'POST\n/\nParam1=value1\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n9d659678c1756bb3113e2ce898845a0a79dbbc57b740555917687f1b3340fbbd',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11',
    ),
    'post-header-key-case': (
        'POST / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b',
    ),
    'post-header-key-sort': (
        'POST / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:value1\nX-Amz-Date:20150830T123600Z',
        'POST\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n9368318c2967cf6de74404b30c65a91e8f6253e0a8659d6d5319f1a812f87d65',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c',
    ),
    'post-header-value-case': (
        'POST / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:VALUE1\nX-Amz-Date:20150830T123600Z',
        'POST\n/\n\nhost:example.amazonaws.com\nmy-header1:VALUE1\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nd51ced243e649e3de6ef63afbbdcbca03131a21a7103a1583706a64618606a93',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d',
    ),
    'post-x-www-form-urlencoded': (
        'POST / HTTP/1.1\nContent-Type:application/x-www-form-urlencoded\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z\n\nParam1=value1',
        'POST\n/\n\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n42a5e5bb34198acb3e84da4f085bb7927f2bc277ca766e6d19c73c2154021281',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a',
    ),
    'post-x-www-form-urlencoded-parameters': (
        'POST / HTTP/1.1\nContent-Type:application/x-www-form-urlencoded; charset=utf8\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z\n\nParam1=value1',
        'POST\n/\n\ncontent-type:application/x-www-form-urlencoded; charset=utf8\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n2e1cf7ed91881a30569e46552437e4156c823447bf1781b921b5d486c568dd1c',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe',
    ),
    'post-sts-header-before': (
        'POST / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z\nX-Amz-Security-Token:AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==',
        'POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\nx-amz-security-token:AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==\n\nhost;x-amz-date;x-amz-security-token\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nc237e1b440d4c63c32ca95b5b99481081cb7b13c7e40434868e71567c1a882f6',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead',
    ),
    'post-sts-header-after': (
        'POST / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z',
        'POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87',
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b',
    ),
}


def parse_suite_request(text):
    """A .req file: request line, headers (with obs-fold continuation lines), body."""
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    method, rest = lines[0].split(" ", 1)
    target = rest.rsplit(" ", 1)[0]
    path, _, query = target.partition("?")
    params = []
    if query:
        for pair in query.split("&"):
            name, _, value = pair.partition("=")
            params.append((urllib.parse.unquote(name), urllib.parse.unquote(value)))
    headers = []
    for line in lines[1:]:
        if not line:
            continue  # a trailing newline
        if line[:1] in (" ", "\t"):
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line)  # unfolded; the signer trims the spaces
        else:
            name, _, value = line.partition(":")
            headers.append((name, value))
    return method, path, params, headers, body.encode("utf-8")


class SigV4TestSuite(unittest.TestCase):
    def sign_vector(self, name):
        req, creq, sts, authz = SUITE[name]
        method, path, params, headers, body = parse_suite_request(req)
        amz = [v for n, v in headers if n.lower() == "x-amz-date"][0]
        token = [v for n, v in headers if n.lower() == "x-amz-security-token"]
        headers = [(n, v) for n, v in headers if n.lower() not in ("x-amz-date", "x-amz-security-token")]
        sign_token = True
        if name == "get-vanilla-with-session-token":
            token = [SUITE_SESSION_TOKEN]
        elif name == "post-sts-header-after":
            token, sign_token = [SUITE_STS_TOKEN_AFTER], False
        credentials = AwsCredentials(*SUITE_CREDENTIALS, token[0] if token else None)
        signed = offsite.sigv4_sign(method, path, params, headers, credentials=credentials, region="us-east-1",
                                    service="service", amz_date=amz, payload_hash=hashlib.sha256(body).hexdigest(),
                                    sign_session_token=sign_token)
        return signed, creq, sts, authz

    def test_every_vector_gives_the_published_canonical_request_string_to_sign_and_authorization(self):
        self.assertGreaterEqual(len(SUITE), 8)
        for name in SUITE:
            with self.subTest(vector=name):
                signed, creq, sts, authz = self.sign_vector(name)
                self.assertEqual(signed.canonical_request, creq)
                self.assertEqual(signed.string_to_sign, sts)
                self.assertEqual(dict(signed.headers)["Authorization"], authz)

    def test_a_session_token_added_after_signing_is_sent_but_not_signed(self):
        signed, _, _, authz = self.sign_vector("post-sts-header-after")
        self.assertIn(("X-Amz-Security-Token", SUITE_STS_TOKEN_AFTER), signed.headers)
        self.assertNotIn("x-amz-security-token", signed.canonical_request)
        self.assertEqual(dict(signed.headers)["Authorization"], authz)

    def test_the_request_target_is_what_was_signed(self):
        signed, _, _, _ = self.sign_vector("get-vanilla-query-order-encoded")
        self.assertEqual(signed.target, "/?%E1%88%B4=Value1&Param=Value2&Param-3=Value3")
        signed, _, _, _ = self.sign_vector("get-space")
        self.assertEqual(signed.target, "/example%20space/")

    def test_a_changed_input_changes_the_signature(self):
        req, _, _, authz = SUITE["get-vanilla"]
        signed = offsite.sigv4_sign("GET", "/", [], [("Host", "example.amazonaws.com")],
                                    credentials=AwsCredentials("AKIDEXAMPLE", "another secret"),
                                    region="us-east-1", service="service", amz_date="20150830T123600Z",
                                    payload_hash=offsite.EMPTY_SHA256)
        self.assertNotEqual(dict(signed.headers)["Authorization"], authz)

    def test_the_signer_refuses_headers_it_owns_and_a_missing_host(self):
        creds = AwsCredentials("AK", "SK")
        for headers in ([("X-Amz-Date", "x")], [("Host", "h"), ("Authorization", "x")],
                        [("Host", "h"), ("x-amz-content-sha256", "x")], [("Host", "h"), ("Bad Name", "x")],
                        [("Host", "h"), ("X-Header", "a\r\nb")]):
            with self.subTest(headers=headers), self.assertRaises(ValueError):
                offsite.sigv4_sign("GET", "/", [], headers, credentials=creds, region="us-east-1",
                                   service="s3", amz_date="20150830T123600Z", payload_hash=offsite.EMPTY_SHA256)
        with self.assertRaises(ValueError):
            offsite.sigv4_sign("GET", "/", [], [("Host", "h")], credentials=creds, region="us-east-1",
                               service="s3", amz_date="2015-08-30", payload_hash=offsite.EMPTY_SHA256)


####
#### The worked examples of the Amazon S3 API Reference, "Signature Calculations
#### for the Authorization Header: Transferring Payload in a Single Chunk" and
#### "Authenticating Requests: Using Query Parameters".
####

S3_DOC_CREDENTIALS = AwsCredentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
S3_DOC_HOST = "examplebucket.s3.amazonaws.com"
S3_DOC_DATE = "20130524T000000Z"


class S3DocumentedExamples(unittest.TestCase):
    def sign(self, method, path, params, headers, payload_hash):
        return offsite.sigv4_sign(method, path, params, [("Host", S3_DOC_HOST)] + headers,
                                  credentials=S3_DOC_CREDENTIALS, region="us-east-1", service="s3",
                                  amz_date=S3_DOC_DATE, payload_hash=payload_hash)

    def test_get_object_with_a_range(self):
        signed = self.sign("GET", "/test.txt", [], [("Range", "bytes=0-9")], offsite.EMPTY_SHA256)
        self.assertEqual(signed.canonical_request, "\n".join([
            "GET", "/test.txt", "", "host:examplebucket.s3.amazonaws.com", "range:bytes=0-9",
            "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "x-amz-date:20130524T000000Z", "", "host;range;x-amz-content-sha256;x-amz-date",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]))
        self.assertEqual(signed.string_to_sign, "AWS4-HMAC-SHA256\n20130524T000000Z\n"
                         "20130524/us-east-1/s3/aws4_request\n"
                         "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972")
        self.assertEqual(dict(signed.headers)["Authorization"],
                         "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                         "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
                         "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")

    def test_put_object_with_a_dollar_in_the_key(self):
        body = b"Welcome to Amazon S3."
        payload_hash = hashlib.sha256(body).hexdigest()
        self.assertEqual(payload_hash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        signed = self.sign("PUT", "/test$file.text", [], [("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                                                          ("x-amz-storage-class", "REDUCED_REDUNDANCY")],
                           payload_hash)
        self.assertEqual(signed.target, "/test%24file.text")
        self.assertTrue(signed.string_to_sign.endswith(
            "9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d"))
        self.assertEqual(dict(signed.headers)["Authorization"],
                         "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                         "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class, "
                         "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")

    def test_get_bucket_lifecycle_a_parameter_without_a_value(self):
        signed = self.sign("GET", "/", [("lifecycle", "")], [], offsite.EMPTY_SHA256)
        self.assertEqual(signed.canonical_request.split("\n")[2], "lifecycle=")
        self.assertTrue(signed.string_to_sign.endswith(
            "9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca"))
        self.assertEqual(dict(signed.headers)["Authorization"],
                         "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                         "SignedHeaders=host;x-amz-content-sha256;x-amz-date, "
                         "Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")

    def test_list_objects_parameters_sorted(self):
        signed = self.sign("GET", "/", [("prefix", "J"), ("max-keys", "2")], [], offsite.EMPTY_SHA256)
        self.assertEqual(signed.target, "/?max-keys=2&prefix=J")
        self.assertTrue(signed.string_to_sign.endswith(
            "df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7"))
        self.assertEqual(dict(signed.headers)["Authorization"],
                         "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                         "SignedHeaders=host;x-amz-content-sha256;x-amz-date, "
                         "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")

    def test_presigned_get(self):
        url = offsite.sigv4_presign("GET", S3_DOC_HOST, "/test.txt", credentials=S3_DOC_CREDENTIALS,
                                    region="us-east-1", service="s3", amz_date=S3_DOC_DATE, expires=86400)
        self.assertEqual(url, "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                         "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
                         "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
                         "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")

    def test_presigned_expiry_is_bounded(self):
        for expires in (0, 7 * 24 * 3600 + 1):
            with self.assertRaises(ValueError):
                offsite.sigv4_presign("GET", S3_DOC_HOST, "/test.txt", credentials=S3_DOC_CREDENTIALS,
                                      region="us-east-1", service="s3", amz_date=S3_DOC_DATE, expires=expires)

    def test_signing_key_derivation(self):
        # The key is HMAC-SHA256 chained over date, region, service, "aws4_request":
        # checked step by step here, independently of signing_key's loop.
        import hmac
        k = hmac.new(b"AWS4" + S3_DOC_CREDENTIALS.secret_access_key.encode(), b"20130524", "sha256").digest()
        for part in (b"us-east-1", b"s3", b"aws4_request"):
            k = hmac.new(k, part, "sha256").digest()
        self.assertEqual(offsite.signing_key(S3_DOC_CREDENTIALS.secret_access_key, "20130524", "us-east-1", "s3"), k)

    def test_uri_encoding_rules(self):
        self.assertEqual(offsite.uri_encode("a b+c/d~e_f.g-h*ä"), "a%20b%2Bc%2Fd~e_f.g-h%2A%C3%A4")
        self.assertEqual(offsite.uri_encode("/a b/./../c//d", keep_slash=True), "/a%20b/./../c//d")
        self.assertEqual(offsite.canonical_query_string([("b", "2"), ("a", "x y"), ("a", "x+y"), ("c", "")]),
                         "a=x%20y&a=x%2By&b=2&c=")


####
#### botocore's signer as a peer, on random requests.
####

class BotocorePeer(unittest.TestCase):
    SEGMENT_CHARS = ("abcXYZ019-_.~ +=&?#%$@:;,'!*()[]{}\"<>|\\^`é€ሴ😀\u00a0\t" + "a" * 20)

    def setUp(self):
        try:
            import botocore.auth
            import botocore.awsrequest
            import botocore.credentials
            import botocore.utils
        except ImportError:
            self.skipTest("botocore is not installed (pip install botocore)")
        self.botocore = botocore
        self.rng = random.Random(20240517)

    def random_text(self, alphabet, low, high):
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(low, high)))

    def random_request(self):
        rng = self.rng
        segments = [self.random_text(self.SEGMENT_CHARS, 0, 12) for _ in range(rng.randint(1, 5))]
        path = "/" + "/".join(segments)
        params = []
        for _ in range(rng.randint(0, 6)):
            name = self.random_text(self.SEGMENT_CHARS.replace("\t", ""), 1, 8)
            params.append((name, self.random_text(self.SEGMENT_CHARS, 0, 10)))
            if rng.random() < 0.2:
                params.append((name, self.random_text(self.SEGMENT_CHARS, 0, 10)))  # a repeated name
        headers, seen = [], {"host", "authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"}
        seen |= set(self.botocore.auth.SIGNED_HEADERS_BLACKLIST)
        token_chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
        for _ in range(rng.randint(0, 5)):
            name = rng.choice(["X-Amz-Meta-", "Content-", "X-"]) + self.random_text(token_chars, 1, 10)
            if name.lower() in seen:
                continue
            seen.add(name.lower())
            value = "".join(rng.choice(["a", "B", "7", " ", "  ", "\"", ",", ";", "=", "é"])
                            for _ in range(rng.randint(0, 16)))
            headers.append((name, value))
        body = os.urandom(rng.randint(0, 300))
        token = self.random_text(token_chars, 20, 60) if rng.random() < 0.3 else None
        region = rng.choice(["us-east-1", "eu-west-3", "ap-southeast-2", "auto"])
        return rng.choice(["GET", "PUT", "POST", "DELETE", "HEAD"]), path, params, headers, body, token, region

    def test_same_authorization_as_botocore_on_random_requests(self):
        when = datetime.datetime(2024, 5, 17, 13, 14, 15)
        host = "bucket.s3.example.test:9000"
        for case in range(300):
            method, path, params, headers, body, token, region = self.random_request()
            with self.subTest(case=case, path=path, params=params, headers=headers):
                creds = AwsCredentials("AKIDPEER%04d" % case, "secret/%d+key" % case, token)
                payload_hash = hashlib.sha256(body).hexdigest()
                mine = offsite.sigv4_sign(method, path, params, [("Host", host)] + headers, credentials=creds,
                                          region=region, service="s3", amz_date="20240517T131415Z",
                                          payload_hash=payload_hash)
                url = "http://%s%s" % (host, self.botocore.utils.percent_encode(path, safe="/~"))
                request = self.botocore.awsrequest.AWSRequest(method=method, url=url, data=body,
                                                              headers=dict(headers), params=list(params))
                signer = self.botocore.auth.S3SigV4Auth(
                    self.botocore.credentials.Credentials(creds.access_key_id, creds.secret_access_key, token),
                    "s3", region)
                with mock.patch("botocore.auth.get_current_datetime", return_value=when):
                    signer.add_auth(request)
                mine_headers = dict(mine.headers)
                self.assertEqual(mine_headers["Authorization"], request.headers["Authorization"])
                self.assertEqual(mine_headers["X-Amz-Content-SHA256"], request.headers["X-Amz-Content-SHA256"])
                self.assertEqual(mine_headers["X-Amz-Date"], request.headers["X-Amz-Date"])
                self.assertEqual(mine_headers.get("X-Amz-Security-Token"), request.headers.get("X-Amz-Security-Token"))

    def test_unsigned_payload_matches_botocore(self):
        when = datetime.datetime(2024, 5, 17, 13, 14, 15)
        creds = AwsCredentials("AKIDPEER", "secret")
        request = self.botocore.awsrequest.AWSRequest(
            method="PUT", url="https://s3.example.test/b/k%20y", data=b"x" * 100,
            headers={"Content-MD5": "x"}, params=[("partNumber", "3"), ("uploadId", "a~b c")])
        request.context["has_streaming_input"] = True  # botocore then sends UNSIGNED-PAYLOAD over TLS
        signer = self.botocore.auth.S3SigV4Auth(self.botocore.credentials.Credentials("AKIDPEER", "secret"),
                                                "s3", "eu-west-1")
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            signer.add_auth(request)
        self.assertEqual(request.headers["X-Amz-Content-SHA256"], "UNSIGNED-PAYLOAD")
        # botocore signed Content-MD5 too: sign the same headers on our side.
        mine = offsite.sigv4_sign("PUT", "/b/k y", [("partNumber", "3"), ("uploadId", "a~b c")],
                                  [("Host", "s3.example.test"), ("Content-MD5", "x")], credentials=creds,
                                  region="eu-west-1", service="s3", amz_date="20240517T131415Z",
                                  payload_hash=offsite.UNSIGNED_PAYLOAD)
        self.assertEqual(dict(mine.headers)["Authorization"], request.headers["Authorization"])

    def test_presigned_urls_match_botocore(self):
        when = datetime.datetime(2024, 5, 17, 13, 14, 15)
        for case in range(60):
            _, path, _, _, _, token, region = self.random_request()
            expires = self.rng.randint(1, 7 * 24 * 3600)
            method = self.rng.choice(["GET", "PUT"])
            with self.subTest(case=case, path=path):
                creds = AwsCredentials("AKIDPRESIGN", "secret%d" % case, token)
                mine = offsite.sigv4_presign(method, "bucket.s3.example.test", path, credentials=creds,
                                             region=region, service="s3", amz_date="20240517T131415Z",
                                             expires=expires)
                url = "https://bucket.s3.example.test" + self.botocore.utils.percent_encode(path, safe="/~")
                request = self.botocore.awsrequest.AWSRequest(method=method, url=url)
                signer = self.botocore.auth.S3SigV4QueryAuth(
                    self.botocore.credentials.Credentials(creds.access_key_id, creds.secret_access_key, token),
                    "s3", region, expires=expires)
                with mock.patch("botocore.auth.get_current_datetime", return_value=when):
                    signer.add_auth(request)
                theirs = urllib.parse.urlsplit(request.url)
                ours = urllib.parse.urlsplit(mine)
                self.assertEqual(ours.path, theirs.path)
                self.assertEqual(urllib.parse.parse_qs(ours.query), urllib.parse.parse_qs(theirs.query))


####
#### BACKUP_URL and the AWS_* variables.
####

KEYS = {"AWS_ACCESS_KEY_ID": "AKIDCONFIG", "AWS_SECRET_ACCESS_KEY": "config-secret-value"}


class BackupUrl(unittest.TestCase):
    def test_s3_on_aws_is_virtual_hosted_in_the_region(self):
        target = offsite.parse_backup_url("s3://team-backups/campfire/hourly", dict(KEYS, AWS_REGION="eu-west-3"))
        self.assertIsInstance(target, offsite.S3Target)
        self.assertEqual((target.bucket, target.prefix, target.region), ("team-backups", "campfire/hourly/", "eu-west-3"))
        self.assertEqual((target.scheme, target.host, target.port), ("https", "team-backups.s3.eu-west-3.amazonaws.com", 443))
        self.assertEqual(target.host_header, "team-backups.s3.eu-west-3.amazonaws.com")
        self.assertEqual(target.object_path("campfire/hourly/a.tar"), "/campfire/hourly/a.tar")
        self.assertEqual(target.bucket_path(), "/")
        self.assertIsNone(target.credentials.session_token)

    def test_region_precedence_and_default(self):
        self.assertEqual(offsite.parse_backup_url("s3://b1b/", KEYS).region, "us-east-1")
        both = dict(KEYS, AWS_REGION="eu-north-1", AWS_DEFAULT_REGION="ap-south-1")
        self.assertEqual(offsite.parse_backup_url("s3://b1b", both).region, "eu-north-1")
        self.assertEqual(offsite.parse_backup_url("s3://b1b", dict(KEYS, AWS_DEFAULT_REGION="ap-south-1")).region,
                         "ap-south-1")
        self.assertEqual(offsite.parse_backup_url("s3://b1b", dict(KEYS, AWS_REGION="cn-north-1")).host,
                         "b1b.s3.cn-north-1.amazonaws.com.cn")

    def test_a_bucket_with_dots_is_path_style(self):
        target = offsite.parse_backup_url("s3://backups.example.com/x", KEYS)
        self.assertTrue(target.path_style)
        self.assertEqual(target.host, "s3.us-east-1.amazonaws.com")
        self.assertEqual(target.object_path("x/a.tar"), "/backups.example.com/x/a.tar")

    def test_an_endpoint_means_path_style_and_the_service_specific_variable_wins(self):
        env = dict(KEYS, AWS_ENDPOINT_URL="https://general.example", AWS_ENDPOINT_URL_S3="http://127.0.0.1:9000/s3/",
                   AWS_SESSION_TOKEN="session-token-value", AWS_REGION="auto")
        target = offsite.parse_backup_url("s3://bucket/", env)
        self.assertEqual((target.scheme, target.host, target.port, target.base_path, target.path_style),
                         ("http", "127.0.0.1", 9000, "/s3", True))
        self.assertEqual(target.host_header, "127.0.0.1:9000")
        self.assertEqual(target.object_path("a.tar"), "/s3/bucket/a.tar")
        self.assertEqual(target.bucket_path(), "/s3/bucket")
        self.assertEqual(target.prefix, "")
        self.assertEqual(target.credentials.session_token, "session-token-value")
        general = offsite.parse_backup_url("s3://bucket/p", dict(KEYS, AWS_ENDPOINT_URL="https://[::1]:8443"))
        self.assertEqual((general.host, general.port, general.host_header), ("::1", 8443, "[::1]:8443"))

    def test_missing_credentials_say_which(self):
        for env, missing in (({}, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set"),
                             ({"AWS_ACCESS_KEY_ID": "AK"}, "AWS_SECRET_ACCESS_KEY is not set"),
                             ({"AWS_ACCESS_KEY_ID": " ", "AWS_SECRET_ACCESS_KEY": "s"}, "AWS_ACCESS_KEY_ID is not set")):
            with self.subTest(env=env), self.assertRaises(OffsiteConfigError) as caught:
                offsite.parse_backup_url("s3://bucket/prefix", env)
            self.assertIn(missing, str(caught.exception))

    def test_malformed_urls_are_refused_with_a_reason(self):
        cases = {
            "": "empty", "s3://": "no bucket", "s3:///prefix": "no bucket", "s3://-bad/": "not a bucket name",
            "s3://bad_bucket!/x": "not a bucket name", "s3://a/x?versioning": "no ?query",
            "s3://key:secret@bucket/x": "takes no credentials", "ftp://host/x": "must start with s3:// or https://",
            "http://dav.example/backups/": "must use https://", "https:///x": "names no host",
            "https://dav.example:99999/x": "bad port", "https://dav.example/a b/": "must encode",
            "https://dav.example/x#frag": "no #fragment", "s3://bucket/a\nb": "control character",
            "backups": "must start with",
        }
        for url, reason in cases.items():
            with self.subTest(url=url), self.assertRaises(OffsiteConfigError) as caught:
                offsite.parse_backup_url(url, KEYS)
            self.assertIn(reason, str(caught.exception))

    def test_bad_region_and_endpoint_are_refused(self):
        for env, reason in ((dict(KEYS, AWS_REGION="EU West"), "not a region"),
                            (dict(KEYS, AWS_ENDPOINT_URL_S3="ftp://store"), "must be http(s)://"),
                            (dict(KEYS, AWS_ENDPOINT_URL_S3="http://store:0x50"), "bad port"),
                            (dict(KEYS, AWS_ENDPOINT_URL="http://u:p@store"), "takes no credentials")):
            with self.subTest(env=env), self.assertRaises(OffsiteConfigError) as caught:
                offsite.parse_backup_url("s3://bucket/x", env)
            self.assertIn(reason, str(caught.exception))

    def test_https_targets(self):
        target = offsite.parse_backup_url("https://me:p%40ss@dav.example:8443/remote.php/dav/files/me/backups")
        self.assertIsInstance(target, offsite.HttpsTarget)
        self.assertEqual((target.host, target.port, target.username, target.password), ("dav.example", 8443, "me", "p@ss"))
        self.assertEqual(target.target_for("campfire 1.tar"), "/remote.php/dav/files/me/backups/campfire%201.tar")
        self.assertEqual(offsite.parse_backup_url("https://dav.example/b/").target_for("a.tar"), "/b/a.tar")
        self.assertEqual(offsite.parse_backup_url("https://dav.example").target_for("a.tar"), "/a.tar")
        self.assertFalse(target.supports_retention)
        presigned = offsite.parse_backup_url("https://bucket.s3.amazonaws.com/backups/latest.tar?X-Amz-Algorithm="
                                             "AWS4-HMAC-SHA256&X-Amz-Signature=abc123")
        self.assertTrue(presigned.presigned)
        self.assertEqual(presigned.target_for("a.tar"),
                         "/backups/latest.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc123")
        self.assertEqual(presigned.describe(), "https://bucket.s3.amazonaws.com/backups/latest.tar")

    def test_no_secret_shows_in_descriptions_or_reprs(self):
        env = dict(KEYS, AWS_SESSION_TOKEN="session-token-value")
        s3 = offsite.parse_backup_url("s3://bucket/p", env)
        dav = offsite.parse_backup_url("https://me:hunter2secret@dav.example/b?token=query-secret")
        for text in (repr(s3), s3.describe(), repr(dav), dav.describe()):
            for secret in ("config-secret-value", "session-token-value", "hunter2secret", "query-secret"):
                self.assertNotIn(secret, text)

    def test_backup_names(self):
        for good in ("campfire-20240517T131415Z.tar.gz", "a", "x+y_z.1"):
            self.assertEqual(offsite.check_backup_name(good), good)
        for bad in ("", "../x", "a/b", ".hidden", "a b", "x" * 256, "é.tar", None):
            with self.subTest(name=bad), self.assertRaises(ValueError):
                offsite.check_backup_name(bad)


####
#### Retry policy and part planning (pure functions).
####

class RetryPolicyAndParts(unittest.TestCase):
    def test_backoff_doubles_to_a_cap_with_full_jitter(self):
        policy = RetryPolicy(attempts=10, base_delay=1.0, max_delay=60.0)
        self.assertEqual([offsite.retry_delay(policy, n, rnd=lambda: 0.999999) // 1 for n in range(1, 9)],
                         [0, 1, 3, 7, 15, 31, 59, 59])
        self.assertEqual(offsite.retry_delay(policy, 5, rnd=lambda: 0.0), 0.0)
        rng = random.Random(1)
        delays = [offsite.retry_delay(policy, 4, rnd=rng.random) for _ in range(1000)]
        self.assertTrue(all(0 <= d < 8 for d in delays))
        self.assertGreater(max(delays) - min(delays), 6)  # spread out, not in lockstep

    def test_retry_after_is_a_floor_and_is_capped(self):
        policy = RetryPolicy(base_delay=1.0, max_delay=60.0, retry_after_max=300.0)
        self.assertEqual(offsite.retry_delay(policy, 1, retry_after=7, rnd=lambda: 0.5), 7)
        self.assertEqual(offsite.retry_delay(policy, 1, retry_after=86400, rnd=lambda: 0.5), 300)
        self.assertEqual(offsite.retry_after_seconds("120", now=0), 120)
        now = 1_700_000_000
        self.assertEqual(offsite.retry_after_seconds(
            time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 42)), now=now), 42)
        self.assertEqual(offsite.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=now), 0)
        for junk in (None, "", "soon", "-5", "1.5"):
            self.assertIsNone(offsite.retry_after_seconds(junk, now=now))

    def test_parts_cover_the_file_exactly(self):
        for size in (16 * MiB + 1, 40 * MiB, 100 * MiB - 3):
            parts = offsite._plan_parts(size, 16 * MiB)
            self.assertEqual([p[0] for p in parts], list(range(1, len(parts) + 1)))
            self.assertEqual(sum(p[2] for p in parts), size)
            self.assertTrue(all(p[1] == sum(q[2] for q in parts[:i]) for i, p in enumerate(parts)))
            self.assertTrue(all(p[2] == 16 * MiB for p in parts[:-1]))

    def test_parts_grow_to_stay_within_ten_thousand(self):
        size = 1024 ** 4  # 1 TiB would be 65,536 parts of 16 MiB
        parts = offsite._plan_parts(size, 16 * MiB)
        self.assertLessEqual(len(parts), 10_000)
        self.assertEqual(parts[0][2] % MiB, 0)
        self.assertEqual(sum(p[2] for p in parts), size)
        with self.assertRaises(OffsiteFailed):
            offsite._plan_parts(5 * 1024 ** 4 + 1, 16 * MiB)

    def test_part_size_must_fit_s3(self):
        target = offsite.parse_backup_url("s3://bucket/x", KEYS)
        for bad in (5 * MiB - 1, 5 * 1024 ** 3 + 1):
            with self.assertRaises(ValueError):
                OffsiteClient(target, part_bytes=bad)


####
#### Servers for the transfer tests: moto's S3 (another process), a proxy that
#### injects failures in front of it, and an HTTPS server with its own CA.
####

MOTO_BOOT = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the test closes our stdin (or dies)
server.stop()
"""


class MotoS3:
    """moto's S3 in server mode, checking signatures: its first three calls
    (unauthenticated) make an IAM user whose access key the tests use."""
    _instance = None

    @classmethod
    def get(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        try:
            import boto3
        except ImportError:
            boto3 = None
        if boto3 is None or importlib.util.find_spec("moto") is None:
            raise unittest.SkipTest("moto[server] and boto3 are not installed")
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "HTTP_PROXY", "HTTPS_PROXY"):
            env.pop(name, None)
        self.process = subprocess.Popen([sys.executable, "-c", MOTO_BOOT], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.process.kill()
            raise RuntimeError("moto_server did not start")
        self.port = int(line)
        self.endpoint = "http://127.0.0.1:%d" % self.port
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="campfire-backups")
        iam.put_user_policy(UserName="campfire-backups", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="campfire-backups")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                               aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)
        self.buckets = 0

    def new_bucket(self):
        self.buckets += 1
        name = "campfire-test-%d" % self.buckets
        self.s3.create_bucket(Bucket=name)
        return name

    def environ(self, endpoint=None, secret=None):
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": secret or self.secret_key,
                "AWS_ENDPOINT_URL_S3": endpoint or self.endpoint, "AWS_REGION": "us-east-1"}

    def stop(self):
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


def tearDownModule():
    logging.getLogger("campfire").removeHandler(_QUIET)
    logging.getLogger("campfire").propagate = True
    if MotoS3._instance is not None:
        MotoS3._instance.stop()
        MotoS3._instance = None


class FaultProxy:
    """A forwarding proxy before moto. `plan(method, path, query, n)` (n counts
    the same method, path and query from 1) returns None to forward, a
    (status, headers, body) to answer instead, "drop" to close without an
    answer, or "stall" to hold the request unread until released."""

    def __init__(self, upstream_port, plan):
        self.upstream_port = upstream_port
        self.plan = plan
        self.log = []                      # (monotonic time, method, path, query, outcome)
        self.counts = {}
        self.lock = threading.Lock()
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.close_after_each = False      # hang up after every answer, without saying so
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self.server.daemon_threads = True
        self.server.proxy = self
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = "http://127.0.0.1:%d" % self.server.server_address[1]

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def requests(self, method=None, query_has=None):
        with self.lock:
            return [entry for entry in self.log if (method is None or entry[1] == method)
                    and (query_has is None or query_has in entry[3])]


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade"}

    def log_message(self, *args):
        pass

    def handle_one(self):
        proxy = self.server.proxy
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        key = (self.command, parts.path, parts.query)
        with proxy.lock:
            proxy.counts[key] = n = proxy.counts.get(key, 0) + 1
        action = proxy.plan(self.command, parts.path, query, n)
        length = int(self.headers.get("Content-Length") or 0)
        if action == "stall":
            with proxy.lock:
                proxy.log.append((time.monotonic(), self.command, parts.path, parts.query, "stall"))
            proxy.stalled.set()
            proxy.release.wait(DEADLINE)
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        if action == "drop":
            with proxy.lock:
                proxy.log.append((time.monotonic(), self.command, parts.path, parts.query, "drop"))
            self.close_connection = True
            return
        if action is not None:
            status, headers, payload = action
            headers = list(headers.items())
        else:
            upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=DEADLINE)
            forwarded = {k: v for k, v in self.headers.items() if k.lower() not in self.HOP_BY_HOP}
            if self.command in ("PUT", "POST") or length:
                forwarded["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body if length or self.command in ("PUT", "POST")
                             else None, headers=forwarded)
            response = upstream.getresponse()
            status, payload = response.status, response.read()
            upstream.close()
            headers = [(name, value) for name, value in response.getheaders()
                       if name.lower() not in self.HOP_BY_HOP and name.lower() not in ("server", "date")]
        # Logged before the answer is sent, so a client that has its answer
        # finds its request in the log.
        with proxy.lock:
            proxy.log.append((time.monotonic(), self.command, parts.path, parts.query, status))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        if proxy.close_after_each:
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one


def s3_error(code, message="injected"):
    return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code><Message>%s</Message></Error>"
            % (code, message)).encode()


def write_file(directory, name, size, seed=None):
    """A file of `size` random bytes (from a seed, so cheap to compare), written in blocks."""
    path = os.path.join(directory, name)
    rng = random.Random(seed if seed is not None else size)
    with open(path, "wb") as f:
        left = size
        while left:
            block = rng.randbytes(min(left, MiB))
            f.write(block)
            left -= len(block)
    return path


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


####
#### Transfers to moto's S3.
####

class S3Transfers(unittest.TestCase):
    def setUp(self):
        self.moto = MotoS3.get()
        self.bucket = self.moto.new_bucket()
        self.dir = tempfile.mkdtemp(prefix="offsite-test-")
        self.addCleanup(shutil.rmtree, self.dir)

    def client(self, prefix="backups/hourly", endpoint=None, secret=None, **options):
        target = offsite.parse_backup_url("s3://%s/%s" % (self.bucket, prefix),
                                          self.moto.environ(endpoint=endpoint, secret=secret))
        options.setdefault("retry", FAST)
        return OffsiteClient(target, **options)

    def stored(self, key):
        return self.moto.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def proxy(self, plan):
        proxy = FaultProxy(self.moto.port, plan)
        self.addCleanup(proxy.stop)
        return proxy

    def test_a_small_file_goes_in_one_signed_put_and_reads_back_the_same(self):
        path = write_file(self.dir, "small.tar", 123_457)
        calls = []
        result = self.client().upload(path, "campfire-1.tar", progress=lambda d, t: calls.append((d, t)))
        self.assertEqual((result.size, result.parts, result.location),
                         (123_457, 0, "s3://%s/backups/hourly/campfire-1.tar" % self.bucket))
        with open(path, "rb") as f:
            self.assertEqual(self.stored("backups/hourly/campfire-1.tar"), f.read())
        self.assertEqual(calls[-1], (123_457, 123_457))
        self.assertTrue(all(t == 123_457 for _, t in calls))

    def test_an_empty_file_uploads(self):
        path = write_file(self.dir, "empty", 0)
        self.client(prefix="").upload(path, "empty.tar")
        self.assertEqual(self.stored("empty.tar"), b"")

    def test_a_40_mib_file_goes_in_parts_and_reads_back_the_same(self):
        path = write_file(self.dir, "big.tar", 40 * MiB + 12_345)
        calls = []
        result = self.client(part_bytes=5 * MiB).upload(path, "big.tar", progress=lambda d, t: calls.append(d))
        self.assertEqual(result.parts, 9)
        head = self.moto.s3.head_object(Bucket=self.bucket, Key="backups/hourly/big.tar")
        self.assertEqual(head["ContentLength"], 40 * MiB + 12_345)
        self.assertTrue(head["ETag"].strip('"').endswith("-9"), head["ETag"])  # S3's mark of a multipart object
        self.assertEqual(hashlib.sha256(self.stored("backups/hourly/big.tar")).hexdigest(), file_sha256(path))
        self.assertEqual(calls, sorted(calls))
        self.assertEqual(calls[-1], 40 * MiB + 12_345)
        self.assertEqual(self.moto.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []), [])

    def test_the_default_part_size_with_an_unsigned_payload(self):
        path = write_file(self.dir, "big.tar", 33 * MiB)
        result = self.client(sign_payload=False).upload(path, "big.tar")
        self.assertEqual(result.parts, 3)  # 16 + 16 + 1 MiB
        self.assertEqual(hashlib.sha256(self.stored("backups/hourly/big.tar")).hexdigest(), file_sha256(path))

    def test_list_with_pagination_and_delete(self):
        path = write_file(self.dir, "x", 1000)
        client = self.client(list_page_keys=2)
        names = ["b-%d.tar" % i for i in range(5)]
        for name in names:
            client.upload(path, name)
        # Neighbours the listing must not return: a deeper "folder", another prefix.
        self.moto.s3.put_object(Bucket=self.bucket, Key="backups/hourly/older/x.tar", Body=b"x")
        self.moto.s3.put_object(Bucket=self.bucket, Key="backups/hourly-not/x.tar", Body=b"x")
        self.moto.s3.put_object(Bucket=self.bucket, Key="backups/hourly/", Body=b"")
        proxy = self.proxy(lambda *a: None)
        listed = self.client(endpoint=proxy.endpoint, list_page_keys=2).list_backups()
        self.assertEqual(sorted(b.name for b in listed), names)
        self.assertTrue(all(b.size == 1000 for b in listed))
        self.assertTrue(all(abs(b.modified - time.time()) < 600 for b in listed))
        pages = proxy.requests("GET", "list-type=2")
        self.assertGreaterEqual(len(pages), 3)  # 2 keys a page, 5 backups and the neighbours
        self.assertTrue(all("continuation-token=" in page[3] for page in pages[1:]))
        client.delete_backup("b-1.tar")
        client.delete_backup("b-1.tar")  # already gone: still fine
        self.assertEqual(sorted(b.name for b in client.list_backups()), ["b-0.tar", "b-2.tar", "b-3.tar", "b-4.tar"])
        keys = {o["Key"] for o in self.moto.s3.list_objects_v2(Bucket=self.bucket)["Contents"]}
        self.assertIn("backups/hourly/older/x.tar", keys)

    def test_temporary_credentials_sign_their_session_token(self):
        import boto3
        common = dict(endpoint_url=self.moto.endpoint, region_name="us-east-1",
                      aws_access_key_id=self.moto.access_key, aws_secret_access_key=self.moto.secret_key)
        iam, sts = boto3.client("iam", **common), boto3.client("sts", **common)
        role_name = "backups-%s" % self.bucket
        role = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"},
                                                     "Action": "sts:AssumeRole"}]}))
        iam.put_role_policy(RoleName=role_name, PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        temporary = sts.assume_role(RoleArn=role["Role"]["Arn"], RoleSessionName="backups")["Credentials"]
        env = {"AWS_ACCESS_KEY_ID": temporary["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": temporary["SecretAccessKey"],
               "AWS_SESSION_TOKEN": temporary["SessionToken"], "AWS_ENDPOINT_URL_S3": self.moto.endpoint}
        path = write_file(self.dir, "t.tar", 7 * MiB)
        client = OffsiteClient(offsite.parse_backup_url("s3://%s/temp" % self.bucket, env), part_bytes=5 * MiB,
                               retry=FAST)
        self.assertEqual(client.upload(path, "t.tar").parts, 2)
        self.assertEqual([b.name for b in client.list_backups()], ["t.tar"])
        self.assertEqual(hashlib.sha256(self.stored("temp/t.tar")).hexdigest(), file_sha256(path))
        without = dict(env, AWS_SESSION_TOKEN="")
        with self.assertRaises(OffsiteFailed) as caught:
            OffsiteClient(offsite.parse_backup_url("s3://%s/temp" % self.bucket, without),
                          retry=FAST).upload(path, "u.tar")
        self.assertEqual(caught.exception.code, "InvalidAccessKeyId")  # the token was what made the key valid

    def test_a_wrong_secret_fails_at_once_with_s3s_code(self):
        path = write_file(self.dir, "x", 10)
        proxy = self.proxy(lambda *a: None)
        with self.assertRaises(OffsiteFailed) as caught:
            self.client(endpoint=proxy.endpoint, secret="not-the-secret").upload(path, "x.tar")
        error = caught.exception
        self.assertEqual((error.status, error.code, error.attempts, error.retryable),
                         (403, "SignatureDoesNotMatch", 1, False))
        self.assertNotIn("not-the-secret", str(error))
        self.assertEqual(len(proxy.requests("PUT")), 1)

    def test_a_missing_bucket_is_a_clear_error(self):
        path = write_file(self.dir, "x", 10)
        target = offsite.parse_backup_url("s3://no-such-bucket-here/x", self.moto.environ())
        with self.assertRaises(OffsiteFailed) as caught:
            OffsiteClient(target, retry=FAST).upload(path, "x.tar")
        self.assertEqual((caught.exception.status, caught.exception.code), (404, "NoSuchBucket"))
        self.assertIn("no-such-bucket-here", str(caught.exception))

    def test_transient_500_and_503_are_retried(self):
        def plan(method, path, query, n):
            if method == "PUT" and query.get("partNumber") == ["2"] and n <= 2:
                return (500, {}, s3_error("InternalError")) if n == 1 else (503, {}, s3_error("SlowDown"))
            if method == "POST" and "uploads" in query and n == 1:
                return "drop"
            return None
        proxy = self.proxy(plan)
        path = write_file(self.dir, "big.tar", 12 * MiB)
        calls = []
        with self.assertLogs("campfire", "WARNING") as logs:
            result = self.client(endpoint=proxy.endpoint, part_bytes=5 * MiB).upload(
                path, "big.tar", progress=lambda d, t: calls.append(d))
        self.assertEqual(len(logs.records), 3)
        self.assertIn("UploadPart 2", logs.output[1])
        self.assertIn("500", logs.output[1])
        self.assertEqual(result.parts, 3)
        self.assertEqual(hashlib.sha256(self.stored("backups/hourly/big.tar")).hexdigest(), file_sha256(path))
        self.assertEqual([e[4] for e in proxy.requests("PUT", "partNumber=2")], [500, 503, 200])
        self.assertEqual([e[4] for e in proxy.requests("POST", "uploads")], ["drop", 200])
        self.assertEqual(calls[-1], 12 * MiB)

    def test_429_waits_for_retry_after(self):
        def plan(method, path, query, n):
            if method == "PUT" and n == 1:
                return (429, {"Retry-After": "1"}, s3_error("SlowDown"))
            return None
        proxy = self.proxy(plan)
        path = write_file(self.dir, "x", 1000)
        self.client(endpoint=proxy.endpoint).upload(path, "x.tar")
        first, second = proxy.requests("PUT")
        self.assertEqual((first[4], second[4]), (429, 200))
        self.assertGreaterEqual(second[0] - first[0], 1.0)

    def test_a_server_that_keeps_failing_is_tried_a_bounded_number_of_times(self):
        proxy = self.proxy(lambda method, path, query, n: (503, {}, s3_error("ServiceUnavailable")))
        path = write_file(self.dir, "x", 1000)
        started = time.monotonic()
        with self.assertRaises(OffsiteFailed) as caught:
            self.client(endpoint=proxy.endpoint).upload(path, "x.tar")
        self.assertEqual((caught.exception.attempts, caught.exception.retryable, caught.exception.status),
                         (FAST.attempts, True, 503))
        self.assertIn("after 4 attempts", str(caught.exception))
        self.assertEqual(len(proxy.requests("PUT")), FAST.attempts)
        self.assertLess(time.monotonic() - started, 10)

    def test_a_refused_connection_is_retried_then_reported(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: nothing listens there
        path = write_file(self.dir, "x", 10)
        with self.assertRaises(OffsiteFailed) as caught:
            self.client(endpoint="http://127.0.0.1:%d" % port).upload(path, "x.tar")
        self.assertEqual(caught.exception.attempts, FAST.attempts)
        self.assertIn("Connection refused", str(caught.exception))

    def test_a_failing_part_aborts_the_multipart_upload(self):
        def plan(method, path, query, n):
            if method == "PUT" and query.get("partNumber") == ["3"]:
                return (403, {}, s3_error("AccessDenied", "no more parts for you"))
            return None
        proxy = self.proxy(plan)
        path = write_file(self.dir, "big.tar", 16 * MiB)
        with self.assertRaises(OffsiteFailed) as caught:
            self.client(endpoint=proxy.endpoint, part_bytes=5 * MiB).upload(path, "big.tar")
        self.assertEqual((caught.exception.status, caught.exception.code), (403, "AccessDenied"))
        self.assertIn("UploadPart 3", str(caught.exception))
        self.assertEqual(len(proxy.requests("PUT", "partNumber=3")), 1)  # a 403 is final
        aborts = proxy.requests("DELETE", "uploadId=")
        self.assertEqual([e[4] for e in aborts], [204])
        self.assertEqual(self.moto.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []), [])
        self.assertNotIn("Contents", self.moto.s3.list_objects_v2(Bucket=self.bucket))
        self.assertFalse(proxy.requests("POST", "uploadId="))  # never completed

    def test_complete_answering_200_with_an_error_is_retried(self):
        def plan(method, path, query, n):
            if method == "POST" and "uploadId" in query and n == 1:
                return (200, {"Content-Type": "application/xml"}, s3_error("InternalError"))
            return None
        proxy = self.proxy(plan)
        path = write_file(self.dir, "big.tar", 6 * MiB)
        self.client(endpoint=proxy.endpoint, part_bytes=5 * MiB).upload(path, "big.tar")
        self.assertEqual(len(proxy.requests("POST", "uploadId=")), 2)
        self.assertEqual(hashlib.sha256(self.stored("backups/hourly/big.tar")).hexdigest(), file_sha256(path))

    def test_a_kept_alive_connection_the_server_dropped_is_reopened_without_a_retry(self):
        proxy = self.proxy(lambda *a: None)
        proxy.close_after_each = True
        path = write_file(self.dir, "big.tar", 11 * MiB)
        result = self.client(endpoint=proxy.endpoint, part_bytes=5 * MiB,
                             retry=RetryPolicy(attempts=1)).upload(path, "big.tar")
        self.assertEqual(result.parts, 3)
        self.assertEqual(hashlib.sha256(self.stored("backups/hourly/big.tar")).hexdigest(), file_sha256(path))
        self.assertEqual(len(proxy.requests("PUT")), 3)

    def test_a_bucket_in_another_region_says_which(self):
        proxy = self.proxy(lambda method, path, query, n: (301, {"x-amz-bucket-region": "eu-west-1"},
                                                           s3_error("PermanentRedirect", "use the right endpoint")))
        path = write_file(self.dir, "x", 10)
        with self.assertRaises(OffsiteFailed) as caught:
            self.client(endpoint=proxy.endpoint).upload(path, "x.tar")
        self.assertEqual((caught.exception.status, caught.exception.attempts), (301, 1))
        self.assertIn("set AWS_REGION=eu-west-1", str(caught.exception))

    def test_a_skewed_clock_is_named_and_a_servers_message_is_one_bounded_line(self):
        message = "The difference between the request time and the current time is too large.\n" + "x" * 5000
        proxy = self.proxy(lambda method, path, query, n: (403, {}, s3_error("RequestTimeTooSkewed", message)))
        path = write_file(self.dir, "x", 10)
        with self.assertRaises(OffsiteFailed) as caught:
            self.client(endpoint=proxy.endpoint).upload(path, "x.tar")
        text = str(caught.exception)
        self.assertIn("clock is off by more than 15 minutes", text)
        self.assertNotIn("\n", text)
        self.assertLess(len(text), 600)

    def test_a_listing_with_a_doctype_is_refused(self):
        evil = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
                b'<ListBucketResult><Contents><Key>&b;</Key></Contents></ListBucketResult>')
        proxy = self.proxy(lambda method, path, query, n: (200, {}, evil) if method == "GET" else None)
        with self.assertRaises(OffsiteFailed) as caught:
            self.client(endpoint=proxy.endpoint).list_backups()
        self.assertIn("other than XML", str(caught.exception))

    def test_cancel_from_another_thread_stops_a_stalled_part_and_aborts(self):
        proxy = self.proxy(lambda method, path, query, n:
                           "stall" if method == "PUT" and query.get("partNumber") == ["2"] else None)
        path = write_file(self.dir, "big.tar", 12 * MiB)
        client = self.client(endpoint=proxy.endpoint, part_bytes=5 * MiB)
        cancellation = Cancellation()
        progress = ProgressWatch()
        outcome = []

        def work():
            try:
                outcome.append(client.upload(path, "big.tar", progress=progress, cancellation=cancellation))
            except BaseException as error:
                outcome.append(error)
        worker = threading.Thread(target=work)
        worker.start()
        self.assertTrue(proxy.stalled.wait(DEADLINE))
        self.assertTrue(wait_for(lambda: progress.stuck_for(0.5), DEADLINE))  # blocked past part 1
        self.assertGreater(progress.done, 5 * MiB)
        cancelled_at = time.monotonic()
        cancellation.cancel()
        worker.join(DEADLINE)
        self.assertFalse(worker.is_alive())
        self.assertLess(time.monotonic() - cancelled_at, 5)
        self.assertIsInstance(outcome[0], OffsiteCancelled)
        self.assertEqual([e[4] for e in proxy.requests("DELETE", "uploadId=")], [204])
        self.assertEqual(self.moto.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []), [])

    def test_cancel_during_a_retry_wait_ends_it_at_once(self):
        proxy = self.proxy(lambda method, path, query, n: (503, {"Retry-After": "120"}, s3_error("SlowDown")))
        path = write_file(self.dir, "x", 1000)
        client = self.client(endpoint=proxy.endpoint, retry=RetryPolicy(attempts=3, base_delay=0.01))
        cancellation = Cancellation()
        outcome = []
        worker = threading.Thread(target=lambda: outcome.append(
            self._catch(client.upload, path, "x.tar", cancellation=cancellation)))
        worker.start()
        self.assertTrue(wait_for(lambda: proxy.requests("PUT"), DEADLINE))
        cancellation.cancel()
        worker.join(5)
        self.assertFalse(worker.is_alive())
        self.assertIsInstance(outcome[0], OffsiteCancelled)
        self.assertEqual(len(proxy.requests("PUT")), 1)

    def test_a_cancelled_cancellation_sends_nothing(self):
        proxy = self.proxy(lambda *a: None)
        cancellation = Cancellation()
        cancellation.cancel()
        path = write_file(self.dir, "x", 10)
        with self.assertRaises(OffsiteCancelled):
            self.client(endpoint=proxy.endpoint).upload(path, "x.tar", cancellation=cancellation)
        self.assertEqual(proxy.log, [])

    @staticmethod
    def _catch(function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except BaseException as error:
            return error


####
#### HTTPS PUT targets, against a local HTTPS server whose CA is made here.
####

def make_ca(directory, name):
    """A CA and a server certificate for 127.0.0.1 and localhost, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "%s test CA" % name)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {}
    for kind, data in (("ca", ca.public_bytes(serialization.Encoding.PEM)),
                       ("cert", cert.public_bytes(serialization.Encoding.PEM)),
                       ("key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))):
        paths[kind] = os.path.join(directory, "%s-%s.pem" % (name, kind))
        with open(paths[kind], "wb") as f:
            f.write(data)
    return paths


class HttpsSink:
    """An HTTPS server that takes PUTs, hashing each body as it streams in.
    `plan(n)` may answer the n-th PUT with (status, headers) instead."""

    def __init__(self, cert, key, plan=None, username=None, password=None, host="127.0.0.1", stall=False):
        self.received = []                 # (path, headers, length, sha256)
        self.stall = stall                 # hold every PUT unread until released
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.connections = 0
        self.handshake_failures = 0
        self.plan = plan or (lambda n: None)
        self.credentials = (username, password)
        self.lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        sink = self

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, address = super().get_request()
                with sink.lock:
                    sink.connections += 1
                return sock, address

            def finish_request(self, request, client_address):
                request.settimeout(DEADLINE)
                try:
                    tls = context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    with sink.lock:
                        sink.handshake_failures += 1
                    return
                try:
                    self.RequestHandlerClass(tls, client_address, self)
                finally:
                    tls.close()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_PUT(self):
                if sink.stall:
                    sink.stalled.set()
                    sink.release.wait(DEADLINE)
                    self.close_connection = True
                    return
                with sink.lock:
                    n = sum(1 for _ in sink.received) + 1
                length = int(self.headers["Content-Length"])
                digest, left = hashlib.sha256(), length
                while left:
                    chunk = self.rfile.read(min(left, MiB))
                    if not chunk:
                        return
                    digest.update(chunk)
                    left -= len(chunk)
                with sink.lock:
                    sink.received.append((self.path, dict(self.headers), length, digest.hexdigest()))
                answer = sink.plan(n)
                if answer is None and sink.credentials != (None, None):
                    expected = "Basic " + base64.b64encode(("%s:%s" % sink.credentials).encode()).decode()
                    if self.headers.get("Authorization") != expected:
                        answer = (401, {"WWW-Authenticate": 'Basic realm="dav"'})
                status, headers = answer or (201, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = Server((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class HttpsTransfers(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs_dir = tempfile.mkdtemp(prefix="offsite-ca-")
        cls.good = make_ca(cls.certs_dir, "good")
        cls.other = make_ca(cls.certs_dir, "other")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certs_dir)

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="offsite-test-")
        self.addCleanup(shutil.rmtree, self.dir)

    def sink(self, **options):
        sink = HttpsSink(self.good["cert"], self.good["key"], **options)
        self.addCleanup(sink.stop)
        return sink

    def client(self, url, ca, **options):
        # The client reads the CA store when it is made: SSL_CERT_FILE is read then.
        with mock.patch.dict(os.environ, {"SSL_CERT_FILE": ca}):
            os.environ.pop("SSL_CERT_DIR", None)
            options.setdefault("retry", FAST)
            return OffsiteClient(offsite.parse_backup_url(url), **options)

    def test_the_file_is_put_after_the_url_with_basic_auth(self):
        sink = self.sink(username="campfire", password="p@ss word")
        path = write_file(self.dir, "b.tar", 3 * MiB + 7)
        url = "https://campfire:p%%40ss%%20word@127.0.0.1:%d/dav/backups/" % sink.port
        calls = []
        result = self.client(url, self.good["ca"]).upload(path, "campfire-1.tar",
                                                          progress=lambda d, t: calls.append((d, t)))
        [(request_path, headers, length, digest)] = sink.received
        self.assertEqual(request_path, "/dav/backups/campfire-1.tar")
        self.assertEqual((length, digest), (3 * MiB + 7, file_sha256(path)))
        self.assertEqual(headers["Content-Type"], "application/octet-stream")
        self.assertEqual(result.location, "https://127.0.0.1:%d/dav/backups/campfire-1.tar" % sink.port)
        self.assertEqual(calls[-1], (3 * MiB + 7, 3 * MiB + 7))

    def test_wrong_basic_auth_is_final(self):
        sink = self.sink(username="campfire", password="right")
        path = write_file(self.dir, "b.tar", 1000)
        with self.assertRaises(OffsiteFailed) as caught:
            self.client("https://campfire:wrong@127.0.0.1:%d/dav/" % sink.port, self.good["ca"]).upload(path, "b.tar")
        self.assertEqual((caught.exception.status, caught.exception.attempts), (401, 1))
        self.assertNotIn("wrong", str(caught.exception))

    def test_a_presigned_url_is_put_as_it_is(self):
        sink = self.sink()
        path = write_file(self.dir, "b.tar", 2000)
        query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20240517%2Fus-east-1%2Fs3%2Faws4_request" \
                "&X-Amz-Signature=0123abcd"
        self.client("https://127.0.0.1:%d/bucket/latest.tar?%s" % (sink.port, query),
                    self.good["ca"]).upload(path, "campfire-2.tar")
        [(request_path, headers, length, digest)] = sink.received
        self.assertEqual(request_path, "/bucket/latest.tar?" + query)
        self.assertNotIn("Authorization", headers)
        self.assertNotIn("Content-Type", headers)
        self.assertEqual(digest, file_sha256(path))

    def test_a_503_is_retried_and_the_body_sent_again(self):
        sink = self.sink(plan=lambda n: (503, {"Retry-After": "0"}) if n == 1 else None)
        path = write_file(self.dir, "b.tar", MiB)
        self.client("https://127.0.0.1:%d/dav/" % sink.port, self.good["ca"]).upload(path, "b.tar")
        self.assertEqual(len(sink.received), 2)
        self.assertTrue(all(r[3] == file_sha256(path) for r in sink.received))

    def test_an_untrusted_certificate_fails_once_and_clearly(self):
        sink = self.sink()
        path = write_file(self.dir, "b.tar", 1000)
        with self.assertRaises(OffsiteFailed) as caught:
            self.client("https://127.0.0.1:%d/dav/" % sink.port, self.other["ca"]).upload(path, "b.tar")
        message = str(caught.exception)
        self.assertIn("certificate", message)
        self.assertIn("SSL_CERT_FILE", message)
        self.assertEqual(caught.exception.attempts, 1)
        self.assertTrue(wait_for(lambda: sink.handshake_failures == 1))
        self.assertEqual((sink.connections, sink.received), (1, []))

    def test_the_host_name_is_checked(self):
        sink = self.sink(host="127.0.0.2")
        path = write_file(self.dir, "b.tar", 10)
        # The certificate names 127.0.0.1 and localhost, not 127.0.0.2 (also loopback).
        with self.assertRaises(OffsiteFailed) as caught:
            self.client("https://127.0.0.2:%d/dav/" % sink.port, self.good["ca"]).upload(path, "b.tar")
        self.assertIn("certificate", str(caught.exception))

    def test_cancel_stops_a_stalled_tls_upload(self):
        sink = self.sink(stall=True)
        path = write_file(self.dir, "b.tar", 32 * MiB)  # more than the socket buffers hold
        client = self.client("https://127.0.0.1:%d/dav/" % sink.port, self.good["ca"])
        cancellation = Cancellation()
        progress = ProgressWatch()
        outcome = []

        def work():
            try:
                outcome.append(client.upload(path, "b.tar", progress=progress, cancellation=cancellation))
            except BaseException as error:
                outcome.append(error)
        worker = threading.Thread(target=work)
        worker.start()
        self.assertTrue(sink.stalled.wait(DEADLINE))
        self.assertTrue(wait_for(lambda: progress.stuck_for(0.5), DEADLINE))  # blocked in a TLS send
        self.assertLess(progress.done, 32 * MiB)
        cancelled_at = time.monotonic()
        cancellation.cancel()
        worker.join(DEADLINE)
        self.assertFalse(worker.is_alive())
        self.assertLess(time.monotonic() - cancelled_at, 5)
        self.assertIsInstance(outcome[0], OffsiteCancelled)

    def test_an_https_target_cannot_apply_retention(self):
        client = self.client("https://127.0.0.1:9/dav/", self.good["ca"])
        for call in (client.list_backups, lambda: client.delete_backup("a.tar"),
                     lambda: client.presigned_url("a.tar", 60)):
            with self.assertRaises(OffsiteUnsupported) as caught:
                call()
            self.assertIn("retention", str(caught.exception))


####
#### Memory: a 256 MiB file streams through a fixed buffer.
####

MEMORY_CHILD = """
import json, os, sys
sys.path.insert(0, %(here)r)
import campfire as offsite

def status(field):
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])  # KiB

client = offsite.OffsiteClient(offsite.parse_backup_url(os.environ["TEST_BACKUP_URL"]),
                               retry=offsite.RetryPolicy(attempts=2, base_delay=0.01))
client.upload(%(warm)r, "warm.bin")  # the TLS context, the connection and the code paths, once
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the resident size now (Linux 4.0+)
before = status("VmRSS")
result = client.upload(%(big)r, "big.bin")
print(json.dumps({"before_kib": before, "after_kib": status("VmHWM"), "size": result.size, "parts": result.parts}))
"""


@unittest.skipUnless(os.path.exists("/proc/self/clear_refs"), "needs Linux's /proc/self/clear_refs")
class Memory(unittest.TestCase):
    SIZE = 256 * MiB
    GROWTH_LIMIT_KIB = 4 * 1024  # "a few MiB": the 256 KiB block, TLS and hash state, and slack

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="offsite-mem-")
        self.addCleanup(shutil.rmtree, self.dir)
        self.big = os.path.join(self.dir, "big.bin")
        with open(self.big, "wb") as f:
            f.truncate(self.SIZE)  # sparse: no disk used, all zeros
        self.warm = write_file(self.dir, "warm.bin", 1000)

    def run_child(self, env):
        code = MEMORY_CHILD % {"here": HERE, "warm": self.warm, "big": self.big}
        done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True,
                              text=True, timeout=300)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        report = json.loads(done.stdout.strip().splitlines()[-1])
        if os.environ.get("OFFSITE_TEST_VERBOSE"):
            print("\nresident %(before_kib)d KiB before, peak %(after_kib)d KiB during" % report, file=sys.stderr)
        return report

    def test_s3_multipart_of_256_mib_keeps_rss_flat(self):
        moto = MotoS3.get()
        bucket = moto.new_bucket()
        report = self.run_child(dict(moto.environ(), TEST_BACKUP_URL="s3://%s/mem" % bucket))
        self.assertEqual((report["size"], report["parts"]), (self.SIZE, 16))
        self.assertLess(report["after_kib"] - report["before_kib"], self.GROWTH_LIMIT_KIB, report)
        head = moto.s3.head_object(Bucket=bucket, Key="mem/big.bin")
        self.assertEqual(head["ContentLength"], self.SIZE)

    def test_https_put_of_256_mib_keeps_rss_flat(self):
        certs = make_ca(self.dir, "mem")
        sink = HttpsSink(certs["cert"], certs["key"])
        self.addCleanup(sink.stop)
        env = {"SSL_CERT_FILE": certs["ca"], "TEST_BACKUP_URL": "https://127.0.0.1:%d/dav/" % sink.port}
        report = self.run_child(env)
        self.assertEqual(report["size"], self.SIZE)
        self.assertLess(report["after_kib"] - report["before_kib"], self.GROWTH_LIMIT_KIB, report)
        zeros, block = hashlib.sha256(), bytes(MiB)
        for _ in range(self.SIZE // MiB):
            zeros.update(block)
        self.assertEqual(sink.received[-1][2:], (self.SIZE, zeros.hexdigest()))


if __name__ == "__main__":
    unittest.main()


####
#### The server's automatic backups, copied to moto's S3.
####

class ServerCopiesBackupsOffsite(unittest.TestCase):
    def setUp(self):
        from tests.helpers import LiveServer, first_run_cookie
        self.moto = MotoS3.get()
        self.bucket = self.moto.new_bucket()
        self.dir = tempfile.mkdtemp(prefix="offsite-server-")
        self.addCleanup(shutil.rmtree, self.dir)

        def start(secret=None):
            target = campfire.parse_backup_url("s3://%s/team" % self.bucket, self.moto.environ(secret=secret))
            server = LiveServer(backup_target=target)
            self.addCleanup(server.stop)
            server.app.offsite.retry = FAST
            first_run_cookie(server.port)
            return server
        self.start = start

    def run_backup(self, server):
        future = server.call(server.app.backups.run_now)
        self.assertTrue(wait_for(future.done, timeout=DEADLINE))
        return server.call(server.app.backups.summary)

    def keys(self):
        listing = self.moto.s3.list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def test_each_backup_goes_offsite_self_contained_and_restores(self):
        old = [campfire.backup_file_name(time.time() - 40 * 24 * 3600 - hour * 3600) for hour in range(30)]
        for name in old + ["notes.txt"]:
            self.moto.s3.put_object(Bucket=self.bucket, Key="team/" + name, Body=b"x")
        server = self.start()
        summary = self.run_backup(server)
        self.assertTrue(summary["ok"], summary)
        self.assertEqual(summary["offsite"]["last_copy"], summary["last_backup"])
        # Retention there as here (tested on its own in test_backups.py), over the names found
        # there: of 31 hourlies, the newest 24 hours' and older days' last stay. Others' files stay.
        everything = {name: campfire.backup_time(name) for name in old + [summary["last_backup"]]}
        kept = campfire.backups_to_keep(everything)
        self.assertLess(len(kept), 31)
        self.assertEqual(self.keys(), sorted(["team/" + name for name in kept] + ["team/notes.txt"]))
        copy = os.path.join(self.dir, "downloaded.tar")
        self.moto.s3.download_file(self.bucket, "team/" + summary["last_backup"], copy)
        restored = os.path.join(self.dir, "restored")
        manifest, aside = campfire.restore_backup(campfire.Config(storage_path=restored), copy)
        self.assertTrue(manifest["contents_in_archive"])
        self.assertIsNone(aside)
        with open(os.path.join(server.storage, "secret_key_base")) as a, \
                open(os.path.join(restored, "secret_key_base")) as b:
            self.assertEqual(a.read(), b.read())
        self.assertEqual([name for name in os.listdir(os.path.join(server.storage, "backups"))
                          if name.startswith(".backup-")], [])  # the outgoing copy is removed

    def test_a_refused_copy_is_reported_and_keeps_the_local_backup(self):
        server = self.start(secret="not-the-secret")
        with self.assertLogs("campfire", "ERROR") as logged:
            summary = self.run_backup(server)
        self.assertIn("OFF-SITE COPY FAILED", "\n".join(logged.output))
        self.assertFalse(summary["ok"])
        self.assertFalse(summary["last_failed"])   # the local backup itself is fine
        self.assertIn(summary["last_backup"], os.listdir(os.path.join(server.storage, "backups")))
        self.assertIn("SignatureDoesNotMatch", summary["offsite"]["last_error"])
        self.assertNotIn("not-the-secret", json.dumps(summary))
        self.assertEqual(self.keys(), [])
