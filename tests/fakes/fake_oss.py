#!/usr/bin/env python3
"""Loopback fake of Alibaba Cloud OSS that VERIFIES every upload, for ossvend's tests.

ossvend hands out upload rights (STS credentials, PostObject forms, presigned PUT
URLs); this fake is what those rights are spent on.  It accepts an upload only if
real OSS would, judged independently of ossvend's own signer:

* header auth V1 (``Authorization: OSS ak:sig``) and V4 (``OSS4-HMAC-SHA256``),
  presigned URLs V1 (``OSSAccessKeyId/Expires/Signature[/security-token]``) and V4
  (``x-oss-*`` query, ``x-oss-date + x-oss-expires``, at most 604800 s) -- the
  canonicalisation and HMAC come from alibabacloud-oss-v2 1.4.1's own signer classes
  (private methods, hence the exact pin in requirements.txt), fed with what arrived;
* PostObject V1 and V4 forms: policy signature, ``expiration``, every condition form
  (``{field: value}``, ``eq``, ``starts-with``, ``in``, ``not-in``,
  ``content-length-range``), the V4 required conditions and date rules, ``file``
  last, ``${filename}``, ``success_action_status`` / ``success_action_redirect``;
* the STS security token (exactly the issued one, in the place each scheme puts
  it), the credential's Expiration, and the session policy passed to AssumeRole
  (action ``oss:PutObject`` on ``acs:oss:*:*:<bucket>/<key>``).
Spec: ../shared/spec/signing.md sections 7-10 and 13; peers.md sections 4, 5, 7.

Usage (needs the repo's .venv, made by scripts/test-deps)
-----
    .venv/bin/python tests/fakes/fake_oss.py --port 0 [--data-dir DIR] [--sts URL]
        [--key AK:SECRET[:TOKEN] ...] [--key-policy AK=JSON|@FILE ...]
        [--region REGION] [--max-body-bytes N]

``--key``         a static credential, repeatable; with TOKEN every request made with
                  it must carry exactly that security token (an STS-style key).
``--key-policy``  attaches a session policy (RAM policy JSON, inline or ``@path``) to a
                  ``--key`` AccessKeyId, enforced as for STS credentials.
``--sts URL``     unknown AccessKeyIds are looked up at ``GET URL/_fake/issued/<ak>``
                  (fake_sts.py's test-only endpoint: secret, token, Expiration and
                  AssumeRole Policy); answers are cached, 404 = InvalidAccessKeyId.
``--region``      if given, V4 scopes must name it (default: any region).
``--data-dir``    where object bytes are stored (default: a temp dir removed at exit).

The first stdout line is exactly ``listening on 127.0.0.1:<port>``; then one line per
request with its verdict (never a secret, token or signature).

Routing: path-style ``/<bucket>/<key>`` (and ``/<bucket>`` for PostObject).  ali-oss
with an IP endpoint sends ``Host: <bucket>.oss-<region>.aliyuncs.com`` and may leave
the bucket out of the path; when the Host names a bucket and the path's first segment
is not that bucket, the whole path is the key.  Signatures never cover the Host.

Operations (all authenticated the same way; action checked against session policies):
    PUT    /<b>/<k>                         PutObject                oss:PutObject
    POST   /<b>  multipart/form-data        PostObject               oss:PutObject
    POST   /<b>/<k>?uploads                 InitiateMultipartUpload  oss:PutObject
    PUT    /<b>/<k>?partNumber=N&uploadId=U UploadPart               oss:PutObject
    POST   /<b>/<k>?uploadId=U              CompleteMultipartUpload  oss:PutObject
    DELETE /<b>/<k>?uploadId=U              AbortMultipartUpload     oss:AbortMultipartUpload
    GET|HEAD /<b>/<k>                       GetObject                oss:GetObject
    DELETE /<b>/<k>                         DeleteObject             oss:DeleteObject
    OPTIONS *                               CORS preflight (always allowed)
Anything else is authenticated, then answered 501 NotImplemented.  Every answer
carries CORS headers (Origin echoed; ETag and x-oss-request-id exposed).  Errors are
OSS XML ``<Error><Code/><Message/><RequestId/>...</Error>``; SignatureDoesNotMatch
also carries the server's ``<StringToSign>`` (and ``<CanonicalRequest>`` for V4).

Session policies: Allow/Deny statements with ``Action``/``NotAction`` and
``Resource``/``NotResource`` (string or list, ``*``/``?`` wildcards, actions
case-insensitive); a matching Deny wins, else a matching Allow is needed.  The region
and account fields of a resource pattern are not compared (the fake has neither).
A statement with a ``Condition`` cannot be evaluated here: an Allow with one is
ignored, a Deny with one applies.  Static keys without ``--key-policy`` and STS
credentials issued without a Policy are unrestricted.  ``x-oss-object-acl`` on
PutObject, InitiateMultipartUpload or a PostObject form works like PutObjectACL: the
session policy must also allow oss:PutObjectAcl on the object (an unknown ACL name is
400 InvalidArgument).

Test-only control API (JSON):
    GET  /_fake/objects   -> {"objects": [{"bucket", "key", "size", "md5", "etag",
                              "content_type", "auth"}]}  auth: v1-header | v4-header |
                              v1-query | v4-query | post-v1 | post-v4 | multipart
    GET  /_fake/object/<bucket>/<key>  -> the stored bytes (404 JSON if absent)
    GET  /_fake/requests  -> {"requests": [{"method", "path", "query", "bucket", "key",
                              "status", "verdict", "auth", "access_key_id"}]}  verdict:
                              "OK" or the error Code; auth: the scheme tried (also on
                              failures, null if none); query: parameter names only
    POST /_fake/reset     -> forgets objects, uploads and requests (keeps credentials)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import calendar
import collections
import dataclasses
import datetime
import email.utils
import hashlib
import hmac
import json
import os
import queue
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from urllib.parse import quote, unquote, unquote_plus, urlsplit
from xml.sax.saxutils import escape

try:
    from alibabacloud_oss_v2.signer.v1 import SignerV1
    from alibabacloud_oss_v2.signer.v4 import SignerV4
    from alibabacloud_oss_v2.types import HttpRequest, SigningContext
except ImportError:  # pragma: no cover - environment problem, explained to the user
    sys.exit("fake_oss.py needs alibabacloud-oss-v2: run scripts/test-deps, then use .venv/bin/python")

BIND_HOST = "127.0.0.1"  # loopback only, by design: never expose the fake
SDK_VERSION = "1.4.1"     # the signer internals used below are those of this release
MAX_SKEW = 900            # seconds: Date / x-oss-date window, V4 PostObject future limit
V4_MAX_EXPIRES = 604800   # seconds: presigned V4 and PostObject V4 validity cap (7 days)
DEFAULT_MAX_BODY = 1 << 30
MAX_REQUEST_LOG = 100_000
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
V4_ALGORITHM = "OSS4-HMAC-SHA256"
V4_TERMINATOR = "aliyun_v4_request"

# Code -> (HTTP status, default message), as real OSS answers them.
ERRORS: dict[str, tuple[int, str]] = {
    "AccessDenied": (403, "You have no right to access this object."),
    "InvalidAccessKeyId": (403, "The OSS Access Key Id you provided does not exist in our records."),
    "InvalidSecurityToken": (403, "The security token you provided is invalid."),
    "SecurityTokenExpired": (403, "The security token you provided has expired."),
    "SignatureDoesNotMatch": (403, "The request signature we calculated does not match the signature "
                                   "you provided. Check your key and signing method."),
    "RequestTimeTooSkewed": (403, "The difference between the request time and the current time is too large."),
    "InvalidArgument": (400, "Invalid argument."),
    "InvalidBucketName": (400, "The specified bucket is not valid."),
    "InvalidObjectName": (400, "The specified object name is not valid."),
    "InvalidPolicyDocument": (400, "Invalid Policy."),
    "MalformedPOSTRequest": (400, "The body of your POST request is not well-formed multipart/form-data."),
    "MalformedXML": (400, "The XML you provided was not well-formed or did not validate against our "
                          "published schema."),
    "EntityTooLarge": (400, "Your proposed upload exceeds the maximum allowed size."),
    "EntityTooSmall": (400, "Your proposed upload is smaller than the minimum allowed size."),
    "InvalidDigest": (400, "The Content-MD5 you specified was invalid."),
    "InvalidPart": (400, "One or more of the specified parts could not be found or the specified entity "
                         "tag might not have matched the part's entity tag."),
    "InvalidPartOrder": (400, "The list of parts was not in ascending order."),
    "NoSuchKey": (404, "The specified key does not exist."),
    "NoSuchUpload": (404, "The specified upload does not exist. The upload ID may be invalid, or the "
                          "upload may have been aborted or completed."),
    "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
    "InternalError": (500, "We encountered an internal error. Please try again."),
    "NotImplemented": (501, "A header you provided implies functionality that is not implemented."),
}

# V1 sub-resources (spec 7; oss2 2.19.1's list, which signs x-oss-process unlike v2's).
# alibabacloud-oss-v2 checks its own shorter list plus SigningContext.sub_resource.
V1_SUBRESOURCES = frozenset("""
    acl uploads uploadId partNumber location logging website referer lifecycle cors delete
    append position security-token tagging symlink restore versions versioning versionId
    policy requestPayment stat bucketInfo objectInfo objectMeta qos qosInfo live comp status
    vod startTime endTime x-oss-process x-oss-async-process callback callback-var encryption
    x-oss-traffic-limit x-oss-request-payer sequential inventory inventoryId continuation-token
    worm wormId wormExtend replication replicationLocation replicationProgress
    transferAcceleration cname metaQuery resourceGroup style styleName regionList group link
    asyncFetch x-oss-ac-source-ip x-oss-ac-subnet-mask x-oss-ac-vpc-id x-oss-ac-forward-allow
    x-oss-write-get-object-response bucketArchiveDirectRead httpsConfig redundancyTransition
    x-oss-target-redundancy-type x-oss-redundancy-transition-taskid accessPoint
    accessPointPolicy publicAccessBlock x-oss-access-point-name requesterQosInfo qosRequester
    resourcePoolInfo resourcePool resourcePoolBuckets response-content-type
    response-content-language response-expires response-cache-control
    response-content-disposition response-content-encoding
""".split())

# Query parameters that select an operation (anything else on an object is a plain read/write).
OPERATION_PARAMS = V1_SUBRESOURCES - {"security-token"} - {n for n in V1_SUBRESOURCES if n.startswith("response-")}

BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
VHOST_RE = re.compile(r"^([a-z0-9][a-z0-9-]{1,61}[a-z0-9])\.oss-[a-z0-9-]+\.aliyuncs\.com(?::\d+)?$", re.I)
ISO_BASIC_RE = re.compile(r"^\d{8}T\d{6}Z$")
ISO_EXTENDED_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,9})?Z$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


class OssError(Exception):
    """An OSS error answer: Code, HTTP status, Message and optional extra XML elements."""

    def __init__(self, code: str, message: str | None = None, status: int | None = None,
                 extra: dict[str, str] | None = None):
        default_status, default_message = ERRORS.get(code, (400, code))
        super().__init__(f"{code}: {message or default_message}")
        self.code = code
        self.status = status or default_status
        self.message = message or default_message
        self.extra = extra or {}
        # How the failed request was authenticated, when known (for logs and /_fake/requests).
        self.auth: str | None = None
        self.access_key_id: str | None = (extra or {}).get("OSSAccessKeyId")

    def tag(self, auth: str | None, access_key_id: str | None = None) -> "OssError":
        self.auth = self.auth or auth
        self.access_key_id = self.access_key_id or access_key_id
        return self


# ---------------------------------------------------------------------------
# Small parsing helpers
# ---------------------------------------------------------------------------

def pct(value: str) -> str:
    """RFC 3986 percent-encoding (unreserved kept), as OSS V4 canonicalisation wants."""
    return quote(value, safe="")


def parse_iso_basic(value: str, what: str) -> float:
    """``20240301T080000Z`` -> unix seconds, else 400 InvalidArgument."""
    if not ISO_BASIC_RE.match(value or ""):
        raise OssError("InvalidArgument", f"{what} must look like 20240301T080000Z, got {value!r}.")
    try:
        return calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise OssError("InvalidArgument", f"{what} is not a valid date: {value!r}.")


def parse_iso_extended(value) -> float | None:
    """``2024-03-01T08:00:00[.000]Z`` -> unix seconds, or None if malformed."""
    m = ISO_EXTENDED_RE.match(value) if isinstance(value, str) else None
    if not m:
        return None
    try:
        whole = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    return whole + (float(m.group(2)) if m.group(2) else 0.0)


def parse_http_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time string comparison that tolerates non-ASCII input."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def request_id() -> str:
    return secrets.token_hex(12).upper()  # OSS request ids: 24 upper-case hex digits


def etag_of(md5_hex: str) -> str:
    return f'"{md5_hex.upper()}"'


def xml_doc(root: str, children: list[tuple[str, str]]) -> bytes:
    inner = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in children)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>{inner}</{root}>'.encode()


# ---------------------------------------------------------------------------
# Credentials: static keys and credentials issued by the fake STS
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Credential:
    access_key_id: str
    secret: str
    token: str | None = None          # required security token (STS-style credential)
    expiration: float | None = None   # unix seconds; None = never expires
    policy: dict | None = None        # session policy; None = unrestricted
    policy_error: str | None = None   # a policy was attached but is unusable: deny everything


def parse_session_policy(text: str | None) -> tuple[dict | None, str | None]:
    """Return (policy, error).  An unusable policy denies everything, as a safety net."""
    if text is None:
        return None, None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return None, f"session policy is not JSON: {exc}"
    if not isinstance(doc, dict) or not isinstance(doc.get("Statement"), (list, dict)):
        return None, "session policy has no Statement"
    return doc, None


class Keyring:
    """Resolves AccessKeyIds to credentials and checks token and expiry."""

    def __init__(self, static: dict[str, Credential], sts_url: str | None, log):
        self._static = dict(static)
        self._sts_url = sts_url.rstrip("/") if sts_url else None
        self._cache: dict[str, Credential] = {}
        self._lock = threading.Lock()
        self._log = log
        # Never route loopback lookups through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def authenticate(self, access_key_id: str, token: str | None, now: float) -> Credential:
        """The credential for this key if the presented token and the clock allow it."""
        cred = self.lookup(access_key_id)
        if cred.token is None:
            if token:
                raise OssError("InvalidSecurityToken",
                               "A security token was sent with a permanent AccessKey.")
        elif not token:
            raise OssError("InvalidSecurityToken", "The security token is missing for temporary credentials.")
        elif not same_secret(token, cred.token):
            raise OssError("InvalidSecurityToken", "The security token you provided is invalid.")
        if cred.expiration is not None and now >= cred.expiration:
            raise OssError("SecurityTokenExpired")
        return cred

    def lookup(self, access_key_id: str) -> Credential:
        if not access_key_id:
            raise OssError("InvalidAccessKeyId", "The OSS Access Key Id is empty.")
        found = self._static.get(access_key_id)
        if found:
            return found
        if not self._sts_url:
            raise OssError("InvalidAccessKeyId")
        with self._lock:
            found = self._cache.get(access_key_id)
        if found:
            return found
        found = self._fetch(access_key_id)
        with self._lock:
            self._cache[access_key_id] = found
        return found

    def _fetch(self, access_key_id: str) -> Credential:
        url = f"{self._sts_url}/_fake/issued/{quote(access_key_id, safe='')}"
        try:
            with self._opener.open(url, timeout=5) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # not cached: a later AssumeRole could still issue it
                raise OssError("InvalidAccessKeyId")
            raise OssError("InternalError", f"fake STS lookup answered HTTP {exc.code}", 500)
        except (OSError, ValueError) as exc:
            raise OssError("InternalError", f"fake STS lookup failed: {exc}", 500)
        secret, token = doc.get("AccessKeySecret"), doc.get("SecurityToken")
        expiration = parse_iso_extended(doc.get("Expiration"))
        policy_text = doc.get("Policy")
        if not isinstance(secret, str) or not isinstance(token, str) or expiration is None \
                or not (policy_text is None or isinstance(policy_text, str)):
            raise OssError("InternalError", "fake STS lookup returned an unexpected document", 500)
        policy, error = parse_session_policy(policy_text)
        self._log(f"sts: learned {access_key_id} exp={doc['Expiration']} "
                  f"policy={'yes' if policy_text is not None else 'no'}")
        return Credential(access_key_id, secret, token, expiration, policy, error)


# ---------------------------------------------------------------------------
# Session policy evaluation (RAM policy subset)
# ---------------------------------------------------------------------------

def wildcard_match(pattern: str, value: str, case_sensitive: bool = True) -> bool:
    """RAM wildcards: ``*`` any run of characters (``/`` and ``:`` included), ``?`` one."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.S | (0 if case_sensitive else re.I)) is not None


def resource_matches(pattern: str, bucket: str, key: str | None) -> bool:
    """``acs:oss:<region>:<account>:<path>``; region and account are not compared."""
    path = bucket if key is None else f"{bucket}/{key}"
    fields = pattern.split(":", 4)
    if len(fields) == 5:
        return wildcard_match(fields[0], "acs") and wildcard_match(fields[1], "oss") \
            and wildcard_match(fields[4], path)
    return wildcard_match(pattern, f"acs:oss:*:*:{path}")


def as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def statement_applies(st: dict, action: str, bucket: str, key: str | None) -> bool:
    def any_action(names):
        return any(isinstance(n, str) and wildcard_match(n, action, case_sensitive=False) for n in as_list(names))

    def any_resource(patterns):
        return any(isinstance(p, str) and resource_matches(p, bucket, key) for p in as_list(patterns))

    if "NotAction" in st:
        if any_action(st["NotAction"]):
            return False
    elif not any_action(st.get("Action")):
        return False
    if "NotResource" in st:
        if any_resource(st["NotResource"]):
            return False
    elif not any_resource(st.get("Resource")):
        return False
    return True


def policy_allows(policy: dict, action: str, bucket: str, key: str | None) -> bool:
    allowed = False
    for st in as_list(policy.get("Statement")):
        if not isinstance(st, dict):
            continue
        effect = str(st.get("Effect", "")).lower()
        if st.get("Condition"):
            if effect == "allow":
                continue  # cannot evaluate conditions here: never grant on one
        if not statement_applies(st, action, bucket, key):
            continue
        if effect == "deny":
            return False
        if effect == "allow":
            allowed = True
    return allowed


def authorize(cred: Credential, action: str, bucket: str, key: str | None) -> None:
    if cred.policy_error:
        raise OssError("AccessDenied", f"You are denied by session policy ({cred.policy_error}).")
    if cred.policy is not None and not policy_allows(cred.policy, action, bucket, key):
        target = bucket if key is None else f"{bucket}/{key}"
        raise OssError("AccessDenied", f"You are denied by session policy: {action} on {target}.")


OBJECT_ACLS = ("private", "public-read", "public-read-write", "default")


def authorize_object_acl(cred: Credential, acl: str | None, bucket: str, key: str) -> None:
    """x-oss-object-acl on a write has the effect of PutObjectACL (OSS PutObjectACL doc),
    so a RAM user or STS session needs oss:PutObjectAcl besides the write itself."""
    if acl is None:
        return
    if acl not in OBJECT_ACLS:
        raise OssError("InvalidArgument", f"x-oss-object-acl {acl!r} is not one of {', '.join(OBJECT_ACLS)}.")
    authorize(cred, "oss:PutObjectAcl", bucket, key)


# ---------------------------------------------------------------------------
# Header and query authentication, delegated to alibabacloud-oss-v2's signer
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Incoming:
    """One object/bucket request as the verifiers see it."""
    method: str
    pairs: list[tuple[str, str]]   # decoded query parameters, in order
    headers: dict[str, str]        # lower-case names
    bucket: str | None
    key: str | None
    body: bytes

    @property
    def query(self) -> dict[str, str]:
        return dict(self.pairs)

    def signing_request(self, drop: tuple[str, ...] = ()) -> HttpRequest:
        """An SDK HttpRequest whose URL carries the query re-encoded canonically.

        The SDK canonicalises the query as it finds it in the URL, so wire-encoding
        differences (``%2f`` vs ``%2F``, unencoded ``~``) are normalised first; a ``+``
        counts as a space, so an unencoded ``+`` in a token or signature breaks it.
        """
        query = "&".join(pct(n) + (f"={pct(v)}" if v else "") for n, v in self.pairs if n not in drop)
        return HttpRequest(self.method, "http://oss.invalid/" + ("?" + query if query else ""),
                           headers=dict(self.headers))

    def signing_context(self, request: HttpRequest, region: str | None = None,
                        product: str | None = None) -> SigningContext:
        ctx = SigningContext(product=product, region=region, bucket=self.bucket, key=self.key, request=request)
        ctx.sub_resource = V1_SUBRESOURCES
        return ctx


@dataclasses.dataclass(frozen=True)
class V4Scope:
    access_key_id: str
    day: str
    region: str
    product: str

    @property
    def text(self) -> str:
        return f"{self.day}/{self.region}/{self.product}/{V4_TERMINATOR}"


class Verifier:
    """Authenticates requests; returns (auth kind, credential) or raises OssError."""

    def __init__(self, keyring: Keyring, region: str | None):
        self.keyring = keyring
        self.region = region
        self.v1 = SignerV1()
        self.v4 = SignerV4()

    # -- dispatch -------------------------------------------------------------
    def authenticate(self, req: Incoming, now: float) -> tuple[str, Credential]:
        auth = req.headers.get("authorization", "")
        q = req.query
        if auth.startswith(V4_ALGORITHM):
            kind, check = "v4-header", lambda: self._v4_header(req, auth, now)
            claimed = re.search(r"Credential=([^/,\s]*)", auth)
            claimed = claimed.group(1) if claimed else None
        elif auth.startswith("OSS "):
            kind, check = "v1-header", lambda: self._v1_header(req, auth, now)
            claimed = auth[4:].rpartition(":")[0].strip()
        elif auth:
            raise OssError("InvalidArgument", "Unsupported Authorization type.")
        elif "x-oss-signature-version" in q or "x-oss-credential" in q or "x-oss-signature" in q:
            kind, check = "v4-query", lambda: self._v4_query(req, now)
            claimed = q.get("x-oss-credential", "").split("/")[0]
        elif "OSSAccessKeyId" in q or "Signature" in q:
            kind, check = "v1-query", lambda: self._v1_query(req, now)
            claimed = q.get("OSSAccessKeyId")
        else:
            raise OssError("AccessDenied", "Anonymous access is forbidden for this operation.")
        try:
            return kind, check()
        except OssError as err:
            raise err.tag(kind, claimed or None)

    # -- V1 -------------------------------------------------------------------
    def _v1_header(self, req: Incoming, auth: str, now: float) -> Credential:
        ak, sep, signature = auth[4:].strip().rpartition(":")
        if not sep or not ak or not signature:
            raise OssError("InvalidArgument", "Authorization header is malformed; expected 'OSS ak:signature'.")
        # alibabacloud-oss-v2's V1 mode sends the token as a bare 'security-token'
        # header (spec 7, peers.md 5); it is accepted when x-oss-security-token is absent.
        token = req.headers.get("x-oss-security-token", req.headers.get("security-token"))
        cred = self.keyring.authenticate(ak, token, now)
        date = req.headers.get("x-oss-date") or req.headers.get("date")
        if not date:
            raise OssError("AccessDenied", "The request has no Date header.")
        sent = parse_http_date(date)
        if sent is None:
            raise OssError("AccessDenied", f"The Date header is not an RFC 1123 date: {date!r}.")
        if abs(now - sent) > MAX_SKEW:
            raise OssError("RequestTimeTooSkewed")
        self._check_v1_signature(req, req.signing_request(), cred, signature, None)
        return cred

    def _v1_query(self, req: Incoming, now: float) -> Credential:
        q = req.query
        missing = [n for n in ("OSSAccessKeyId", "Expires", "Signature") if not q.get(n)]
        if missing:
            raise OssError("AccessDenied", f"Presigned URL lacks {', '.join(missing)}.")
        cred = self.keyring.authenticate(q["OSSAccessKeyId"], q.get("security-token"), now)
        if not q["Expires"].isdigit():
            raise OssError("InvalidArgument", "Expires must be unix seconds.")
        if now > int(q["Expires"]):
            raise OssError("AccessDenied", "Request has expired.",
                           extra={"Expires": q["Expires"], "ServerTime": str(int(now))})
        self._check_v1_signature(req, req.signing_request(drop=("Signature",)), cred, q["Signature"], q["Expires"])
        return cred

    def _check_v1_signature(self, req: Incoming, request: HttpRequest, cred: Credential,
                            given: str, date: str | None) -> None:
        to_sign = self.v1._calc_string_to_sign(req.signing_context(request), date=date)
        expected = self.v1._calc_signature(cred.secret, to_sign)
        if not same_secret(given, expected):
            raise OssError("SignatureDoesNotMatch",
                           extra={"OSSAccessKeyId": cred.access_key_id, "StringToSign": to_sign})

    # -- V4 -------------------------------------------------------------------
    def scope(self, credential: str) -> V4Scope:
        fields = credential.split("/")
        if len(fields) != 5 or not all(fields) or fields[4] != V4_TERMINATOR:
            raise OssError("InvalidArgument", "Credential must be <ak>/<yyyymmdd>/<region>/oss/aliyun_v4_request.")
        ak, day, region, product, _ = fields
        if not re.fullmatch(r"\d{8}", day):
            raise OssError("InvalidArgument", f"Invalid date in the credential scope: {day!r}.")
        if product not in ("oss", "oss-cloudbox"):
            raise OssError("InvalidArgument", f"Invalid product in the credential scope: {product!r}.")
        if self.region and region != self.region:
            raise OssError("InvalidArgument", f"Invalid region in the credential scope: {region!r}, "
                                              f"expected {self.region!r}.")
        return V4Scope(ak, day, region, product)

    def _v4_header(self, req: Incoming, auth: str, now: float) -> Credential:
        # Both "Credential=..,AdditionalHeaders=..,Signature=.." (v2, ali-oss) and
        # "Credential=.., Signature=.., AdditionalHeaders=.." (oss2) are accepted.
        fields: dict[str, str] = {}
        for item in auth[len(V4_ALGORITHM):].split(","):
            name, sep, value = item.strip().partition("=")
            if sep:
                fields[name] = value.strip()
        if not fields.get("Credential") or not fields.get("Signature"):
            raise OssError("InvalidArgument", "Authorization header lacks Credential or Signature.")
        scope = self.scope(fields["Credential"])
        cred = self.keyring.authenticate(scope.access_key_id, req.headers.get("x-oss-security-token"), now)
        xdate = req.headers.get("x-oss-date")
        if not xdate:
            raise OssError("InvalidArgument", "V4 requests need an x-oss-date header.")
        sent = parse_iso_basic(xdate, "x-oss-date")
        if xdate[:8] != scope.day:
            raise OssError("InvalidArgument", "The date in the credential scope is not the date of x-oss-date.")
        if abs(now - sent) > MAX_SKEW:
            raise OssError("RequestTimeTooSkewed")
        payload = req.headers.get("x-oss-content-sha256")
        if not payload:
            raise OssError("InvalidArgument", "V4 requests need an x-oss-content-sha256 header.")
        if payload != UNSIGNED_PAYLOAD and (not HEX64_RE.match(payload)
                                            or payload != hashlib.sha256(req.body).hexdigest()):
            raise OssError("InvalidDigest", "x-oss-content-sha256 does not match the payload.")
        self._check_v4_signature(req, req.signing_request(), scope, cred, xdate,
                                 fields.get("AdditionalHeaders"), fields["Signature"])
        return cred

    def _v4_query(self, req: Incoming, now: float) -> Credential:
        q = req.query
        if q.get("x-oss-signature-version") != V4_ALGORITHM:
            raise OssError("InvalidArgument", f"x-oss-signature-version must be {V4_ALGORITHM}.")
        missing = [n for n in ("x-oss-credential", "x-oss-date", "x-oss-expires", "x-oss-signature") if not q.get(n)]
        if missing:
            raise OssError("InvalidArgument", f"Presigned URL lacks {', '.join(missing)}.")
        scope = self.scope(q["x-oss-credential"])
        cred = self.keyring.authenticate(scope.access_key_id, q.get("x-oss-security-token"), now)
        signed_at = parse_iso_basic(q["x-oss-date"], "x-oss-date")
        if q["x-oss-date"][:8] != scope.day:
            raise OssError("InvalidArgument", "The date in the credential scope is not the date of x-oss-date.")
        expires = q["x-oss-expires"]
        if not expires.isdigit() or not 1 <= int(expires) <= V4_MAX_EXPIRES:
            raise OssError("InvalidArgument", f"x-oss-expires must be 1..{V4_MAX_EXPIRES} seconds, got {expires!r}.")
        if signed_at - now > MAX_SKEW:
            raise OssError("RequestTimeTooSkewed", "x-oss-date is in the future.")
        if now > signed_at + int(expires):
            raise OssError("AccessDenied", "Request has expired.",
                           extra={"Expires": str(int(signed_at) + int(expires)), "ServerTime": str(int(now))})
        self._check_v4_signature(req, req.signing_request(drop=("x-oss-signature",)), scope, cred,
                                 q["x-oss-date"], q.get("x-oss-additional-headers"), q["x-oss-signature"])
        return cred

    def _check_v4_signature(self, req: Incoming, request: HttpRequest, scope: V4Scope, cred: Credential,
                            xdate: str, additional: str | None, given: str) -> None:
        ctx = req.signing_context(request, scope.region, scope.product)
        names = {n.strip().lower() for n in additional.split(";") if n.strip()} if additional else None
        extra_headers = self.v4._common_additional_headers(request, names)
        canonical = self.v4._calc_canonical_request(ctx, extra_headers)
        to_sign = self.v4._calc_string_to_sign(xdate, scope.text, canonical)
        expected = self.v4._calc_signature(cred.secret, scope.day, scope.region, scope.product, to_sign)
        if not same_secret(given, expected):
            raise OssError("SignatureDoesNotMatch",
                           extra={"OSSAccessKeyId": cred.access_key_id, "StringToSign": to_sign,
                                  "CanonicalRequest": canonical})

    # -- PostObject signatures ------------------------------------------------
    def post_signature_v1(self, secret: str, policy_b64: str) -> str:
        return self.v1._calc_signature(secret, policy_b64)

    def post_signature_v4(self, secret: str, scope: V4Scope, policy_b64: str) -> str:
        return self.v4._calc_signature(secret, scope.day, scope.region, scope.product, policy_b64)


# ---------------------------------------------------------------------------
# PostObject: multipart/form-data parsing and policy checks (no SDK has these)
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class FormPart:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


DISPOSITION_PARAM_RE = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def header_param(value: str, name: str) -> str | None:
    for m in DISPOSITION_PARAM_RE.finditer(value):
        if m.group(1).lower() == name:
            raw = m.group(2).strip()
            return re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
    return None


def parse_multipart(content_type: str, body: bytes) -> list[FormPart]:
    boundary = header_param(content_type, "boundary")
    if not boundary:
        raise OssError("MalformedPOSTRequest", "multipart/form-data without a boundary.")
    delim = b"--" + boundary.encode("latin-1")
    start = body.find(delim)
    if start < 0:
        raise OssError("MalformedPOSTRequest", "The boundary does not occur in the body.")
    pos, parts = start + len(delim), []
    while True:
        if body[pos:pos + 2] == b"--":
            return parts
        if body[pos:pos + 2] != b"\r\n":
            raise OssError("MalformedPOSTRequest", "Expected CRLF after a boundary.")
        end = body.find(b"\r\n" + delim, pos + 2)
        if end < 0:
            raise OssError("MalformedPOSTRequest", "The closing boundary is missing.")
        head, sep, data = body[pos + 2:end].partition(b"\r\n\r\n")
        if not sep:
            raise OssError("MalformedPOSTRequest", "A form part has no header block.")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name = header_param(disposition, "name")
        if not disposition.lower().startswith("form-data") or name is None:
            raise OssError("MalformedPOSTRequest", "A form part lacks Content-Disposition: form-data; name=...")
        parts.append(FormPart(name, header_param(disposition, "filename"), headers.get("content-type"), data))
        pos = end + 2 + len(delim)


@dataclasses.dataclass
class PostUpload:
    kind: str                 # post-v1 | post-v4
    cred: Credential
    key: str
    data: bytes
    content_type: str
    fields: dict[str, str]    # lower-case names


def split_form(parts: list[FormPart]) -> tuple[dict[str, str], FormPart]:
    fields: dict[str, str] = {}
    file_part = None
    for index, part in enumerate(parts):
        name = part.name.lower()
        if name == "file":
            if index != len(parts) - 1:
                raise OssError("InvalidArgument", "The file field must be the last field of the form.")
            file_part = part
        elif name not in fields:  # field names are case-insensitive; the first one counts
            fields[name] = part.data.decode("utf-8", "replace")
    if file_part is None:
        raise OssError("InvalidArgument", "The form has no file field.")
    return fields, file_part


def decode_policy(policy_b64: str) -> dict:
    try:
        doc = json.loads(base64.b64decode(policy_b64, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise OssError("InvalidPolicyDocument", f"Invalid Policy: the policy is not base64 JSON ({exc}).")
    if not isinstance(doc, dict) or "expiration" not in doc or "conditions" not in doc:
        raise OssError("InvalidPolicyDocument", "Invalid Policy: expiration and conditions are both required.")
    if not isinstance(doc["conditions"], list):
        raise OssError("InvalidPolicyDocument", "Invalid Policy: conditions must be a list.")
    return doc


def exact_conditions(conditions: list) -> dict[str, str]:
    """Field -> value for the exact-match conditions ({f: v} and ["eq", "$f", v])."""
    found: dict[str, str] = {}
    for cond in conditions:
        if isinstance(cond, dict):
            found.update({str(k).lower(): v for k, v in cond.items()})
        elif isinstance(cond, list) and len(cond) == 3 and str(cond[0]).lower() == "eq" \
                and isinstance(cond[1], str):
            found[cond[1].lstrip("$").lower()] = cond[2]
    return found


def check_conditions(conditions: list, values: dict[str, str], size: int) -> None:
    """Evaluate every policy condition in order; raise on the first that fails."""
    def bad(why):
        return OssError("InvalidPolicyDocument", f"Invalid Policy: {why}: {json.dumps(cond)}")

    def failed():
        return OssError("AccessDenied", f"Invalid according to Policy: Policy Condition failed: {json.dumps(cond)}")

    for cond in conditions:
        if isinstance(cond, dict):
            if not cond:
                raise bad("empty condition")
            for name, want in cond.items():
                if not isinstance(want, str):
                    raise bad("an exact-match value must be a string")
                if values.get(str(name).lower(), "") != want:
                    raise failed()
            continue
        if not isinstance(cond, list) or not cond or not isinstance(cond[0], str):
            raise bad("a condition must be an object or a list starting with an operator")
        op = cond[0].lower()
        if op == "content-length-range":
            if len(cond) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) for n in cond[1:]):
                raise bad("content-length-range needs two integers")
            low, high = cond[1], cond[2]
            if size > high:
                raise OssError("EntityTooLarge", f"Your proposed upload exceeds the maximum allowed size "
                                                 f"({size} > {high} bytes).")
            if size < low:
                raise OssError("EntityTooSmall", f"Your proposed upload is smaller than the minimum allowed size "
                                                 f"({size} < {low} bytes).")
            continue
        if op not in ("eq", "starts-with", "in", "not-in"):
            raise bad(f"unknown operator {cond[0]!r}")
        if len(cond) != 3 or not isinstance(cond[1], str) or not cond[1].startswith("$"):
            raise bad("expected [op, \"$field\", value]")
        have = values.get(cond[1][1:].lower(), "")
        want = cond[2]
        if op in ("eq", "starts-with"):
            if not isinstance(want, str):
                raise bad(f"{op} needs a string value")
            ok = have == want if op == "eq" else have.startswith(want)
        else:
            if not isinstance(want, list) or not all(isinstance(w, str) for w in want):
                raise bad(f"{op} needs a list of strings")
            ok = (have in want) == (op == "in")
        if not ok:
            raise failed()


def verify_post_object(verifier: Verifier, bucket: str, parts: list[FormPart], now: float) -> PostUpload:
    """PostObject V1/V4 (spec 10): signature, expiry, conditions.  Session policy is the caller's."""
    fields, file_part = split_form(parts)
    v4 = "x-oss-signature-version" in fields or "x-oss-credential" in fields
    claimed = fields.get("x-oss-credential", "").split("/")[0] if v4 else fields.get("ossaccesskeyid")
    try:
        return _verify_post_fields(verifier, bucket, fields, file_part, v4, now)
    except OssError as err:
        raise err.tag("post-v4" if v4 else "post-v1", claimed or None)


def _verify_post_fields(verifier: Verifier, bucket: str, fields: dict[str, str], file_part: FormPart,
                        v4: bool, now: float) -> PostUpload:
    policy_b64 = fields.get("policy")
    if not policy_b64:
        if v4 or "ossaccesskeyid" in fields or "signature" in fields:
            raise OssError("InvalidArgument", "The form has a signature but no policy field.")
        raise OssError("AccessDenied", "Anonymous PostObject is forbidden (no policy and signature).")
    token = fields.get("x-oss-security-token")

    if v4:
        if fields.get("x-oss-signature-version") != V4_ALGORITHM:
            raise OssError("InvalidArgument", f"x-oss-signature-version must be {V4_ALGORITHM}.")
        missing = [n for n in ("x-oss-credential", "x-oss-date", "x-oss-signature") if not fields.get(n)]
        if missing:
            raise OssError("InvalidArgument", f"The form lacks {', '.join(missing)}.")
        scope = verifier.scope(fields["x-oss-credential"])
        cred = verifier.keyring.authenticate(scope.access_key_id, token, now)
        expected = verifier.post_signature_v4(cred.secret, scope, policy_b64)
        given = fields["x-oss-signature"]
        kind = "post-v4"
    else:
        if not fields.get("ossaccesskeyid") or not fields.get("signature"):
            raise OssError("InvalidArgument", "The form lacks OSSAccessKeyId or Signature.")
        cred = verifier.keyring.authenticate(fields["ossaccesskeyid"], token, now)
        expected = verifier.post_signature_v1(cred.secret, policy_b64)
        given = fields["signature"]
        kind = "post-v1"
    if not same_secret(given, expected):
        raise OssError("SignatureDoesNotMatch", extra={"OSSAccessKeyId": cred.access_key_id,
                                                       "StringToSign": policy_b64})

    policy = decode_policy(policy_b64)
    expires_at = parse_iso_extended(policy["expiration"])
    if expires_at is None:
        raise OssError("InvalidPolicyDocument",
                       f"Invalid Policy: expiration must be like 2024-03-01T08:00:00.000Z, got {policy['expiration']!r}.")
    if now > expires_at:
        raise OssError("AccessDenied", "Request has expired.",
                       extra={"Expires": policy["expiration"], "ServerTime": str(int(now))})

    conditions = policy["conditions"]
    if v4:
        signed_at = parse_iso_basic(fields["x-oss-date"], "x-oss-date")
        if fields["x-oss-date"][:8] != scope.day:
            raise OssError("InvalidArgument", "The date in x-oss-credential is not the date of x-oss-date.")
        if signed_at - now > MAX_SKEW:
            raise OssError("RequestTimeTooSkewed", "x-oss-date is more than 15 minutes in the future.")
        if expires_at - signed_at > V4_MAX_EXPIRES or now > signed_at + V4_MAX_EXPIRES:
            raise OssError("InvalidPolicyDocument", "Invalid Policy: a V4 policy is valid for at most "
                                                    "7 days after x-oss-date.")
        required = ["x-oss-signature-version", "x-oss-credential", "x-oss-date"]
        if cred.token is not None:
            required.append("x-oss-security-token")
        exact = exact_conditions(conditions)
        absent = [name for name in required if name not in exact]
        if absent:
            raise OssError("InvalidPolicyDocument", "Invalid Policy: a V4 policy must hold exact-match conditions "
                                                    f"for {', '.join(absent)}.")

    key_template = fields.get("key", "")
    if not key_template:
        raise OssError("InvalidArgument", "The form has no key field.")
    values = dict(fields)
    values["bucket"] = bucket  # the bucket condition is checked against the addressed bucket
    check_conditions(conditions, values, len(file_part.data))

    key = key_template.replace("${filename}", os.path.basename((file_part.filename or "").replace("\\", "/")))
    content_type = fields.get("content-type") or file_part.content_type or "application/octet-stream"
    return PostUpload(kind, cred, key, file_part.data, content_type, fields)


# ---------------------------------------------------------------------------
# Storage: bytes on disk, metadata in memory
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class StoredObject:
    bucket: str
    key: str
    size: int
    md5: str            # hex of the content
    etag: str           # as served, quoted
    content_type: str
    auth: str
    path: str
    last_modified: float

    def public(self) -> dict:
        return {"bucket": self.bucket, "key": self.key, "size": self.size, "md5": self.md5,
                "etag": self.etag, "content_type": self.content_type, "auth": self.auth}


@dataclasses.dataclass
class Upload:
    bucket: str
    key: str
    content_type: str
    parts: dict[int, tuple[str, str, int]] = dataclasses.field(default_factory=dict)  # n -> (path, md5, size)


class Store:
    def __init__(self, root: str):
        self.root = root
        self._objects_dir = os.path.join(root, "objects")
        self._parts_dir = os.path.join(root, "parts")
        os.makedirs(self._objects_dir, exist_ok=True)
        os.makedirs(self._parts_dir, exist_ok=True)
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], StoredObject] = {}
        self._uploads: dict[str, Upload] = {}
        self._requests: collections.deque[dict] = collections.deque(maxlen=MAX_REQUEST_LOG)

    # -- files ------------------------------------------------------------------
    def _write(self, directory: str, name: str, chunks) -> tuple[str, str, int]:
        """Write atomically; return (path, md5 hex, size)."""
        path = os.path.join(directory, name)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        md5, size = hashlib.md5(), 0
        with open(tmp, "wb") as f:
            for chunk in chunks:
                md5.update(chunk)
                size += len(chunk)
                f.write(chunk)
        os.replace(tmp, path)
        return path, md5.hexdigest(), size

    @staticmethod
    def _object_name(bucket: str, key: str) -> str:
        return hashlib.sha256(f"{bucket}\0{key}".encode()).hexdigest()

    # -- objects ----------------------------------------------------------------
    def put(self, bucket: str, key: str, chunks, content_type: str, auth: str,
            etag: str | None = None) -> StoredObject:
        path, md5, size = self._write(self._objects_dir, self._object_name(bucket, key), chunks)
        obj = StoredObject(bucket, key, size, md5, etag or etag_of(md5), content_type, auth, path, time.time())
        with self._lock:
            self._objects.pop((bucket, key), None)  # re-insert: the listing is in write order
            self._objects[(bucket, key)] = obj
        return obj

    def get(self, bucket: str, key: str) -> tuple[StoredObject, bytes] | None:
        with self._lock:
            obj = self._objects.get((bucket, key))
        if obj is None:
            return None
        try:
            with open(obj.path, "rb") as f:
                return obj, f.read()
        except FileNotFoundError:  # deleted or reset concurrently
            return None

    def delete(self, bucket: str, key: str) -> None:
        with self._lock:
            obj = self._objects.pop((bucket, key), None)
        if obj:
            try:
                os.remove(obj.path)
            except FileNotFoundError:
                pass

    def objects(self) -> list[dict]:
        with self._lock:
            return [o.public() for o in self._objects.values()]

    # -- multipart --------------------------------------------------------------
    def create_upload(self, bucket: str, key: str, content_type: str) -> str:
        upload_id = uuid.uuid4().hex.upper()
        with self._lock:
            self._uploads[upload_id] = Upload(bucket, key, content_type)
        return upload_id

    def _upload(self, upload_id: str, bucket: str, key: str) -> Upload:
        with self._lock:
            upload = self._uploads.get(upload_id)
        if upload is None or (upload.bucket, upload.key) != (bucket, key):
            raise OssError("NoSuchUpload")
        return upload

    def put_part(self, upload_id: str, bucket: str, key: str, number: int, data: bytes) -> str:
        upload = self._upload(upload_id, bucket, key)
        path, md5, size = self._write(self._parts_dir, f"{upload_id}.{number}", [data])
        with self._lock:
            upload.parts[number] = (path, md5, size)
        return etag_of(md5)

    def complete(self, upload_id: str, bucket: str, key: str,
                 chosen: list[tuple[int, str]] | None) -> StoredObject:
        upload = self._upload(upload_id, bucket, key)
        with self._lock:
            parts = dict(upload.parts)
        if chosen is None:  # x-oss-complete-all: yes
            chosen = [(n, etag_of(parts[n][1])) for n in sorted(parts)]
        if not chosen:
            raise OssError("MalformedXML", "CompleteMultipartUpload lists no parts.")
        numbers = [n for n, _ in chosen]
        if numbers != sorted(set(numbers)):
            raise OssError("InvalidPartOrder")
        for number, etag in chosen:
            if number not in parts or etag.strip('"').upper() != parts[number][1].upper():
                raise OssError("InvalidPart", f"Part {number} is missing or its ETag does not match.")

        def chunks():
            for number, _ in chosen:
                with open(parts[number][0], "rb") as f:
                    while chunk := f.read(1 << 20):
                        yield chunk

        digests = b"".join(bytes.fromhex(parts[n][1]) for n in numbers)
        etag = f'"{hashlib.md5(digests).hexdigest().upper()}-{len(numbers)}"'
        obj = self.put(bucket, key, chunks(), upload.content_type, "multipart", etag)
        self.abort(upload_id, bucket, key)
        return obj

    def abort(self, upload_id: str, bucket: str, key: str) -> None:
        self._upload(upload_id, bucket, key)
        with self._lock:
            upload = self._uploads.pop(upload_id, None)
        for path, _, _ in (upload.parts.values() if upload else ()):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass

    # -- requests and reset -----------------------------------------------------
    def record(self, entry: dict) -> None:
        with self._lock:
            self._requests.append(entry)

    def requests(self) -> list[dict]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._objects.clear()
            self._uploads.clear()
            self._requests.clear()
            for directory in (self._objects_dir, self._parts_dir):
                for name in os.listdir(directory):
                    try:
                        os.remove(os.path.join(directory, name))
                    except FileNotFoundError:
                        pass


# ---------------------------------------------------------------------------
# Logging that can never stall the server (same design as fake_sts.py)
# ---------------------------------------------------------------------------

class StdoutLog:
    """Background-thread stdout writer; a full queue drops lines, a closed pipe stops logging."""

    def __init__(self, capacity: int = 10000):
        self._queue: queue.Queue[str] = queue.Queue(capacity)
        threading.Thread(target=self._drain, name="log", daemon=True).start()

    def __call__(self, line: str) -> None:
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            pass

    def _drain(self) -> None:
        while True:
            line = self._queue.get()
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                return


# ---------------------------------------------------------------------------
# HTTP layer
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    verdict: str = "OK"
    auth: str | None = None
    access_key_id: str | None = None
    note: str = ""           # for the log line only; never secrets


class BodyTooLarge(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries Content-Length
    server_version = "AliyunOSS"
    sys_version = ""
    timeout = 120                  # idle keep-alive connections release their thread

    # set by make_server()
    verifier: Verifier
    store: Store
    log: StdoutLog
    max_body: int

    # -- entry points -----------------------------------------------------------
    def do_OPTIONS(self):
        reply = Reply(200, headers={"Access-Control-Max-Age": "600"})
        self._finish(reply, urlsplit(self.path).path, [], None)

    def do_GET(self):
        self._dispatch()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _dispatch(self) -> None:
        now = time.time()
        url = urlsplit(self.path)
        pairs = [(unquote_plus(n), unquote_plus(v))
                 for n, _, v in (p.partition("=") for p in url.query.split("&") if p)]
        path = unquote(url.path)
        try:
            body = self._read_body()
        except BodyTooLarge:
            self.close_connection = True  # the rest of the body is never read
            return self._finish(self._error(OssError("EntityTooLarge")), path, pairs, None)
        except ValueError as exc:
            self.close_connection = True
            return self._finish(self._error(OssError("InvalidArgument", str(exc))), path, pairs, None)
        if path.startswith("/_fake/"):
            return self._control(path, body)
        req = self._incoming(path, pairs, body)
        try:
            reply = self._operate(req, now)
        except OssError as err:
            reply = self._error(err)
        except Exception as exc:  # a bug in the fake: say so instead of dropping the connection
            reply = self._error(OssError("InternalError", f"fake OSS bug: {type(exc).__name__}: {exc}"))
        self._finish(reply, path, pairs, req)

    def _incoming(self, path: str, pairs, body: bytes) -> Incoming:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            lname = name.lower()
            headers[lname] = f"{headers[lname]},{value}" if lname in headers else value
        rest = path[1:] if path.startswith("/") else path
        first, _, tail = rest.partition("/")
        vhost = VHOST_RE.match(headers.get("host", ""))
        if vhost and first != vhost.group(1).lower():
            bucket, key = vhost.group(1).lower(), rest  # ali-oss: bucket only in the Host header
        else:
            bucket, key = first, tail
        return Incoming(self.command, pairs, headers, bucket or None, key or None, body)

    # -- operations ---------------------------------------------------------------
    def _operate(self, req: Incoming, now: float) -> Reply:
        method, q = req.method, req.query
        ops = {n for n, _ in req.pairs if n in OPERATION_PARAMS}
        is_form = req.headers.get("content-type", "").lower().startswith("multipart/form-data")

        if req.bucket is None:
            self.verifier.authenticate(req, now)
            raise OssError("NotImplemented", "Service-level operations are not implemented by the fake.")
        if not BUCKET_RE.match(req.bucket):
            raise OssError("InvalidBucketName", f"The specified bucket is not valid: {req.bucket!r}.")

        if method == "POST" and req.key is None and not ops and is_form:
            return self._post_object(req, now)
        if method == "POST" and req.key is not None and not ops and is_form:
            raise OssError("MethodNotAllowed", "PostObject goes to the bucket (/<bucket>), not to an object path.")

        if req.key is None:
            self.verifier.authenticate(req, now)
            raise OssError("NotImplemented", "Bucket-level operations are not implemented by the fake.")
        check_key(req.key)

        if method == "PUT" and not ops:
            return self._put_object(req, now)
        if method == "POST" and ops == {"uploads"}:
            return self._initiate(req, now)
        if method == "PUT" and ops == {"partNumber", "uploadId"}:
            return self._upload_part(req, now, q)
        if method == "POST" and ops == {"uploadId"}:
            return self._complete(req, now, q)
        if method == "DELETE" and ops == {"uploadId"}:
            reply = self._authorized(req, now, "oss:AbortMultipartUpload")
            self.store.abort(q["uploadId"], req.bucket, req.key)
            reply.status = 204
            return reply
        if method in ("GET", "HEAD") and not ops:
            return self._get_object(req, now)
        if method == "DELETE" and not ops:
            reply = self._authorized(req, now, "oss:DeleteObject")
            self.store.delete(req.bucket, req.key)
            reply.status = 204
            return reply
        self.verifier.authenticate(req, now)
        raise OssError("NotImplemented", f"{method} with ?{'&'.join(sorted(ops))} is not implemented by the fake.")

    def _authorized(self, req: Incoming, now: float, action: str, sets_acl: bool = False) -> Reply:
        """Authenticate + session policy (and, for a write that may set it, the ACL
        header's own permission); a Reply pre-filled with the auth details."""
        kind, cred = self.verifier.authenticate(req, now)
        try:
            authorize(cred, action, req.bucket, req.key)
            if sets_acl:
                authorize_object_acl(cred, req.headers.get("x-oss-object-acl"), req.bucket, req.key)
        except OssError as err:
            raise err.tag(kind, cred.access_key_id)
        return Reply(200, auth=kind, access_key_id=cred.access_key_id)

    def _check_md5(self, req: Incoming) -> None:
        given = req.headers.get("content-md5")
        if given is not None:
            if given != base64.b64encode(hashlib.md5(req.body).digest()).decode():
                raise OssError("InvalidDigest")

    def _put_object(self, req: Incoming, now: float) -> Reply:
        reply = self._authorized(req, now, "oss:PutObject", sets_acl=True)
        if "x-oss-copy-source" in req.headers:
            raise OssError("NotImplemented", "CopyObject is not implemented by the fake.")
        self._check_md5(req)
        content_type = req.headers.get("content-type") or "application/octet-stream"
        obj = self.store.put(req.bucket, req.key, [req.body], content_type, reply.auth)
        reply.headers["ETag"] = obj.etag
        reply.headers["Content-MD5"] = base64.b64encode(bytes.fromhex(obj.md5)).decode()
        reply.note = f"{obj.size}B"
        return reply

    def _initiate(self, req: Incoming, now: float) -> Reply:
        reply = self._authorized(req, now, "oss:PutObject", sets_acl=True)
        content_type = req.headers.get("content-type") or "application/octet-stream"
        upload_id = self.store.create_upload(req.bucket, req.key, content_type)
        key = quote(req.key, safe="") if req.query.get("encoding-type") == "url" else req.key
        reply.body = xml_doc("InitiateMultipartUploadResult",
                             [("Bucket", req.bucket), ("Key", key), ("UploadId", upload_id)])
        reply.headers["Content-Type"] = "application/xml"
        reply.note = f"uploadId={upload_id}"
        return reply

    def _upload_part(self, req: Incoming, now: float, q: dict[str, str]) -> Reply:
        reply = self._authorized(req, now, "oss:PutObject")
        number = q.get("partNumber", "")
        if not number.isdigit() or not 1 <= int(number) <= 10000:
            raise OssError("InvalidArgument", "partNumber must be 1..10000.")
        self._check_md5(req)
        reply.headers["ETag"] = self.store.put_part(q["uploadId"], req.bucket, req.key, int(number), req.body)
        reply.note = f"part {number} {len(req.body)}B"
        return reply

    def _complete(self, req: Incoming, now: float, q: dict[str, str]) -> Reply:
        reply = self._authorized(req, now, "oss:PutObject")
        if req.headers.get("x-oss-complete-all", "").lower() == "yes":
            chosen = None
        else:
            chosen = parse_complete_body(req.body)
        obj = self.store.complete(q["uploadId"], req.bucket, req.key, chosen)
        key = quote(req.key, safe="") if q.get("encoding-type") == "url" else req.key
        location = f"http://{req.headers.get('host', BIND_HOST)}/{req.bucket}/{quote(req.key)}"
        reply.body = xml_doc("CompleteMultipartUploadResult",
                             [("EncodingType", "url")] * (q.get("encoding-type") == "url")
                             + [("Location", location), ("Bucket", req.bucket), ("Key", key), ("ETag", obj.etag)])
        reply.headers.update({"Content-Type": "application/xml", "ETag": obj.etag})
        reply.note = f"{obj.size}B"
        return reply

    def _get_object(self, req: Incoming, now: float) -> Reply:
        reply = self._authorized(req, now, "oss:GetObject")
        found = self.store.get(req.bucket, req.key)
        if found is None:
            raise OssError("NoSuchKey").tag(reply.auth, reply.access_key_id)
        obj, data = found
        reply.body = data
        reply.headers.update({"ETag": obj.etag, "Content-Type": obj.content_type,
                              "Last-Modified": email.utils.formatdate(obj.last_modified, usegmt=True)})
        return reply

    def _post_object(self, req: Incoming, now: float) -> Reply:
        parts = parse_multipart(req.headers["content-type"], req.body)
        upload = verify_post_object(self.verifier, req.bucket, parts, now)
        try:
            check_key(upload.key)
            authorize(upload.cred, "oss:PutObject", req.bucket, upload.key)
            authorize_object_acl(upload.cred, upload.fields.get("x-oss-object-acl"), req.bucket, upload.key)
        except OssError as err:
            raise err.tag(upload.kind, upload.cred.access_key_id)
        obj = self.store.put(req.bucket, upload.key, [upload.data], upload.content_type, upload.kind)
        reply = Reply(204, auth=upload.kind, access_key_id=upload.cred.access_key_id,
                      headers={"ETag": obj.etag}, note=f"key={upload.key} {obj.size}B")
        redirect = upload.fields.get("success_action_redirect")
        status = upload.fields.get("success_action_status")
        if redirect:
            sep = "&" if "?" in redirect else "?"
            reply.status = 303
            reply.headers["Location"] = (f"{redirect}{sep}bucket={pct(req.bucket)}&key={pct(upload.key)}"
                                         f"&etag={pct(obj.etag)}")
        elif status in ("200", "201"):
            reply.status = int(status)
            if status == "201":
                location = f"http://{req.headers.get('host', BIND_HOST)}/{req.bucket}/{quote(upload.key)}"
                reply.body = xml_doc("PostResponse", [("Bucket", req.bucket), ("Location", location),
                                                      ("Key", upload.key), ("ETag", obj.etag)])
                reply.headers["Content-Type"] = "application/xml"
        return reply

    # -- control API --------------------------------------------------------------
    def _control(self, path: str, body: bytes) -> None:
        route = (self.command, path)
        if route == ("GET", "/_fake/objects"):
            return self._send_json(200, {"objects": self.store.objects()})
        if route == ("GET", "/_fake/requests"):
            return self._send_json(200, {"requests": self.store.requests()})
        if route == ("POST", "/_fake/reset"):
            self.store.reset()
            self.log("control: reset")
            return self._send_json(200, {"ok": True})
        if self.command in ("GET", "HEAD") and path.startswith("/_fake/object/"):
            bucket, _, key = path[len("/_fake/object/"):].partition("/")
            found = self.store.get(bucket, key)
            if found is None:
                return self._send_json(404, {"error": f"no object {bucket}/{key}"})
            obj, data = found
            return self._send(200, data, {"Content-Type": obj.content_type, "ETag": obj.etag})
        self._send_json(404, {"error": f"no control endpoint {self.command} {path}"})

    # -- replies ------------------------------------------------------------------
    def _error(self, err: OssError) -> Reply:
        rid = request_id()
        children = [("Code", err.code), ("Message", err.message), ("RequestId", rid), ("HostId", BIND_HOST)]
        children += list(err.extra.items())
        return Reply(err.status, xml_doc("Error", children),
                     {"Content-Type": "application/xml", "x-oss-request-id": rid},
                     verdict=err.code, auth=err.auth, access_key_id=err.access_key_id, note=err.message)

    def _finish(self, reply: Reply, path: str, pairs, req: Incoming | None) -> None:
        names = [n for n, _ in pairs]
        bucket, key = (req.bucket, req.key) if req else (None, None)
        self.store.record({"method": self.command, "path": path, "query": names, "bucket": bucket, "key": key,
                           "status": reply.status, "verdict": reply.verdict, "auth": reply.auth,
                           "access_key_id": reply.access_key_id})
        # Logged as /<bucket>/<key> as resolved (Host routing included), with operation
        # parameter names only: query values may be signatures or tokens.
        shown = f"/{bucket}" + (f"/{key}" if key is not None else "") if bucket else path
        operations = [n for n in names if n in OPERATION_PARAMS]
        if operations:
            shown += "?" + "&".join(operations)
        line = f"{self.command} {shown} -> {reply.status} {reply.verdict}"
        if reply.auth or reply.access_key_id:
            line += f" [{reply.auth or '-'} ak={reply.access_key_id or '-'}]"
        if reply.note:
            line += f" {reply.note[:200]}"
        self.log(line)
        self._send(reply.status, reply.body, reply.headers)

    def _send_json(self, status: int, doc) -> None:
        self._send(status, json.dumps(doc, ensure_ascii=False).encode(),
                   {"Content-Type": "application/json;charset=utf-8"})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        headers = {"x-oss-request-id": request_id(), **headers}
        for name, value in {**self._cors_headers(), **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _cors_headers(self) -> dict[str, str]:
        origin = self.headers.get("Origin")
        headers = {
            "Access-Control-Allow-Origin": origin or "*",
            "Access-Control-Allow-Methods": "GET, PUT, POST, DELETE, HEAD",
            "Access-Control-Allow-Headers": self.headers.get("Access-Control-Request-Headers") or "*",
            "Access-Control-Expose-Headers": "ETag, x-oss-request-id",
        }
        if origin:
            headers["Vary"] = "Origin"
        if self.headers.get("Access-Control-Request-Private-Network"):
            headers["Access-Control-Allow-Private-Network"] = "true"
        return headers

    # -- body -----------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("bad Content-Length")
        if length > self.max_body:
            raise BodyTooLarge()
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks, total = [], 0
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip(), 16)
            total += size
            if total > self.max_body:
                raise BodyTooLarge()
            if size == 0:
                while self.rfile.readline(8192).strip():  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(8)  # CRLF after each chunk

    def log_message(self, fmt, *args):  # http.server's own stderr lines
        pass


def check_key(key: str) -> None:
    if key.startswith(("/", "\\")) or len(key.encode()) > 1023:
        raise OssError("InvalidObjectName", f"The specified object name is not valid: {key[:80]!r}.")


def parse_complete_body(body: bytes) -> list[tuple[int, str]]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise OssError("MalformedXML")
    chosen = []
    for part in root.iter("Part"):
        number, etag = part.findtext("PartNumber"), part.findtext("ETag")
        if not number or not number.strip().isdigit() or etag is None:
            raise OssError("MalformedXML", "Each Part needs PartNumber and ETag.")
        chosen.append((int(number), etag.strip()))
    return chosen


class Server(ThreadingHTTPServer):
    request_queue_size = 1024  # listen backlog: survive bursts of simultaneous connects
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            Handler.log(f"handler error from {client_address[0]}: {type(exc).__name__}: {exc}")


def make_server(port: int, verifier: Verifier, store: Store, log: StdoutLog, max_body: int) -> Server:
    Handler.verifier = verifier
    Handler.store = store
    Handler.log = staticmethod(log)
    Handler.max_body = max_body
    return Server((BIND_HOST, port), Handler)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

def parse_key(text: str) -> Credential:
    fields = text.split(":", 2)
    if len(fields) < 2 or not fields[0] or not fields[1] or (len(fields) == 3 and not fields[2]):
        raise argparse.ArgumentTypeError("expected AK:SECRET or AK:SECRET:TOKEN")
    return Credential(fields[0], fields[1], fields[2] if len(fields) == 3 else None)


def parse_key_policy(text: str) -> tuple[str, str]:
    ak, sep, policy = text.partition("=")
    if not sep or not ak or not policy:
        raise argparse.ArgumentTypeError("expected AK=JSON or AK=@FILE")
    if policy.startswith("@"):
        try:
            with open(policy[1:], encoding="utf-8") as f:
                policy = f.read()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {policy[1:]}: {exc}")
    return ak, policy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Loopback fake Alibaba Cloud OSS that verifies uploads (tests only).")
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = ephemeral)")
    ap.add_argument("--data-dir", help="where object bytes go (default: a temp dir removed at exit)")
    ap.add_argument("--sts", metavar="URL", help="fake STS base URL; unknown AccessKeyIds are looked up at "
                                                 "URL/_fake/issued/<ak>")
    ap.add_argument("--key", type=parse_key, action="append", default=[], metavar="AK:SECRET[:TOKEN]",
                    help="static credential, repeatable; TOKEN makes the security token mandatory")
    ap.add_argument("--key-policy", type=parse_key_policy, action="append", default=[], metavar="AK=JSON|@FILE",
                    help="session policy enforced for a --key AccessKeyId, repeatable")
    ap.add_argument("--region", help="require this region in V4 credential scopes (default: any)")
    ap.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY)
    args = ap.parse_args(argv)

    try:
        installed = metadata.version("alibabacloud-oss-v2")
    except metadata.PackageNotFoundError:
        installed = "unknown"
    if installed != SDK_VERSION:
        print(f"warning: alibabacloud-oss-v2 {installed} installed, fake_oss.py is written against "
              f"{SDK_VERSION} (private signer methods)", file=sys.stderr)

    static = {c.access_key_id: c for c in args.key}
    for ak, text in args.key_policy:
        if ak not in static:
            ap.error(f"--key-policy names {ak}, which is not a --key")
        policy, error = parse_session_policy(text)
        if error:
            ap.error(f"--key-policy {ak}: {error}")
        static[ak] = dataclasses.replace(static[ak], policy=policy)

    own_dir = args.data_dir is None
    data_dir = tempfile.mkdtemp(prefix="fake-oss-") if own_dir else args.data_dir
    log = StdoutLog()
    keyring = Keyring(static, args.sts, log)
    server = make_server(args.port, Verifier(keyring, args.region), Store(data_dir), log, args.max_body_bytes)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the cleanup below on kill
    # Printed synchronously, before serving: harnesses wait for exactly this line.
    print(f"listening on {BIND_HOST}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
