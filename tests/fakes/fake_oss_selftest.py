#!/usr/bin/env python3
"""Proves fake_oss.py accepts what real OSS accepts and rejects what it rejects.

The clients are the official SDKs -- oss2 2.19.1 and alibabacloud-oss-v2 1.4.1 (their
put/multipart calls, their presigners, and v2's signer for edge cases such as expired
or over-long URLs) -- plus PostObject forms built here by hand with stdlib HMAC, as no
SDK builds them.  It starts its own fake OSS and fake STS on ephemeral loopback ports:

* a static STS-style key (``--key AK:SECRET:TOKEN``) whose session policy
  (``--key-policy AK=@file``) allows oss:PutObject on ``selftest-bucket/uploads/*`` only;
* a plain permanent key (no token, no policy);
* credentials issued by fake_sts.py's AssumeRole, found through ``--sts``.

Usage:  .venv/bin/python tests/fakes/fake_oss_selftest.py     (after scripts/test-deps)
Prints ``[OK ] name -> outcome`` / ``[BAD] name -> outcome (want ...)`` per case and
``fake_oss selftest: N passed, M failed``; exits 1 if any case is BAD.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import oss2
import alibabacloud_oss_v2 as oss
from alibabacloud_oss_v2.signer.v1 import SignerV1
from alibabacloud_oss_v2.signer.v4 import SignerV4
from alibabacloud_oss_v2.types import Credentials, HttpRequest, SigningContext

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fake_sts  # noqa: E402  (sibling module: its request signer drives AssumeRole)

BUCKET = "selftest-bucket"
REGION = "cn-hangzhou"
# The token contains '+', '/' and '=' like a real one, so URL-encoding mistakes show.
AK, SK, TOKEN = "STS.selftestStaticKey0001", "selftestStaticSecret0001", "CAISselftest+token/value=="
PLAIN_AK, PLAIN_SK = "LTAIselftestPlainKey01", "selftestPlainSecret0001"
STS_CALLER = ("LTAIselftestStsCaller1", "selftestStsCallerSecret1")
UPLOAD_POLICY = {"Version": "1", "Statement": [
    {"Effect": "Allow", "Action": ["oss:PutObject", "oss:AbortMultipartUpload"],
     "Resource": [f"acs:oss:*:*:{BUCKET}/uploads/*"]}]}


# ---------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------

class Fake:
    """A fake server subprocess on an ephemeral port; keeps its log lines."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first = self.proc.stdout.readline().strip()
        m = re.fullmatch(r"listening on (127\.0\.0\.1:\d+)", first)
        if not m:
            self.stop()
            raise SystemExit(f"fake did not start: {argv[1]}: {first!r}")
        self.url = f"http://{m.group(1)}"
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Results:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, name: str, outcome: str, want: str, ok: bool | None = None):
        """outcome is '<status> <Code|OK>'; want is a Code, 'OK', or '<status> <Code|OK>'."""
        good = (outcome == want or outcome.split(" ", 1)[-1] == want) if ok is None else ok
        if good:
            self.passed += 1
            print(f"[OK ] {name} -> {outcome}")
        else:
            self.failed += 1
            print(f"[BAD] {name} -> {outcome} (want {want})")

    def case(self, name: str, want: str, fn):
        self.check(name, outcome_of(fn), want)


def outcome_of(fn) -> str:
    """Run an SDK call or raw request; '<status> OK' on success, else '<status> <Code>'."""
    try:
        result = fn()
    except oss2.exceptions.OssError as exc:
        return f"{exc.status} {exc.code}"
    except oss.exceptions.OperationError as exc:
        inner = exc.unwrap()
        if isinstance(inner, oss.exceptions.ServiceError):
            return f"{inner.status_code} {inner.code}"
        return f"client-error {type(inner).__name__}: {str(inner)[:120]}"
    except Exception as exc:  # noqa: BLE001 - a harness must report, not crash
        return f"exception {type(exc).__name__}: {str(exc)[:160]}"
    if isinstance(result, Raw):
        return result.outcome
    status = getattr(result, "status_code", None) or getattr(result, "status", None)  # v2, oss2
    return f"{status} OK"


class Raw:
    """A plain HTTP exchange (http.client: no header is added behind our back)."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body
        code = re.search(rb"<Code>([^<]+)</Code>", body) if status >= 300 else None
        self.code = code.group(1).decode() if code else ("OK" if status < 300 else "?")
        self.outcome = f"{status} {self.code}"

    def xml(self, tag: str) -> str | None:
        m = re.search(rf"<{tag}>([^<]*)</{tag}>".encode(), self.body)
        return m.group(1).decode() if m else None


def raw(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Raw:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = dict(headers or {})
        conn.putrequest(method, target, skip_host="Host" in headers, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return Raw(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def get_json(url: str) -> dict:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=10) as resp:
        return json.loads(resp.read())


def post_json(url: str, doc: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=json.dumps(doc or {}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10) as resp:
        return json.loads(resp.read())


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------

class Clients:
    def __init__(self, endpoint: str):
        self.ep = endpoint

    def oss2(self, version: str, ak=AK, sk=SK, token: str | None = TOKEN) -> oss2.Bucket:
        # An IP endpoint makes oss2 use path-style URLs by itself.
        if token is not None:
            auth = oss2.StsAuth(ak, sk, token, auth_version=version)
        else:
            auth = oss2.Auth(ak, sk) if version == "v1" else oss2.AuthV4(ak, sk)
        return oss2.Bucket(auth, self.ep, BUCKET, region=REGION, connect_timeout=10)

    def v2(self, version: str = "v4", ak=AK, sk=SK, token: str | None = TOKEN) -> oss.Client:
        cfg = oss.config.load_default()
        cfg.credentials_provider = oss.credentials.StaticCredentialsProvider(ak, sk, token)
        cfg.region = REGION
        cfg.endpoint = self.ep
        cfg.use_path_style = True
        cfg.signature_version = version
        cfg.retry_max_attempts = 1
        return oss.Client(cfg)

    def v2_put(self, key: str, body: bytes = b"hello", version: str = "v4", **kw):
        return lambda: self.v2(version, **kw).put_object(oss.PutObjectRequest(bucket=BUCKET, key=key, body=body))

    def sign(self, version: str, method: str, key: str, headers: dict[str, str] | None = None, *,
             query: bool = False, signed_at: datetime.datetime | None = None,
             expires: datetime.datetime | None = None, ak=AK, sk=SK, token: str | None = TOKEN,
             bucket_in_path: bool = True) -> tuple[str, dict[str, str]]:
        """Sign with alibabacloud-oss-v2's own signer: any time, any expiry (edge cases)."""
        path = f"/{BUCKET}/{urllib.parse.quote(key)}" if bucket_in_path else f"/{urllib.parse.quote(key)}"
        req = HttpRequest(method, self.ep + path, headers=dict(headers or {}))
        ctx = SigningContext(product="oss", region=REGION, bucket=BUCKET, key=key, request=req,
                             credentials=Credentials(ak, sk, token), signing_time=signed_at)
        ctx.auth_method_query = query
        ctx.expiration_time = expires
        (SignerV4() if version == "v4" else SignerV1()).sign(ctx)
        return req.url, dict(req.headers)


def replace_param(url: str, name: str, value: str | None) -> str:
    """Set (value) or drop (None) one query parameter, leaving the others' encoding alone."""
    head, _, query = url.partition("?")
    pairs = [p for p in query.split("&") if p.split("=", 1)[0] != name]
    if value is not None:
        pairs.append(f"{name}={urllib.parse.quote(value, safe='')}")
    return head + "?" + "&".join(pairs)


def tamper(url: str, name: str) -> str:
    """Flip the first character of a query parameter's (signature) value."""
    def flip(m):
        value = m.group(2)
        return m.group(1) + ("B" if value[0] == "A" else "A") + value[1:]
    return re.sub(rf"([?&]{re.escape(name)}=)([^&]+)", flip, url, count=1)


# ---------------------------------------------------------------------------
# PostObject forms, built by hand (spec 10)
# ---------------------------------------------------------------------------

def v4_signing_key(secret: str, day: str) -> bytes:
    key = ("aliyun_v4" + secret).encode()
    for part in (day, REGION, "oss", "aliyun_v4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def iso_ms(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def post_form(version: str, *, key: str = "uploads/${filename}", size: int = 5,
              content_type: str = "text/plain", ttl: int = 300, ak=AK, sk=SK, token: str | None = TOKEN,
              form_token: str | None = None, drop_token: bool = False, status: str | None = None,
              extra_conditions: list | None = None, key_prefix: str = "uploads/", bucket_condition=BUCKET,
              signed_at: datetime.datetime | None = None, credential_day: str | None = None,
              omit_condition: str | None = None, policy_override: str | None = None,
              file_last: bool = True, filename: str = "hello.txt",
              extra_fields: list | None = None) -> tuple[list, bytes]:
    """(fields, file bytes) of a PostObject form; knobs break exactly one thing each."""
    now = signed_at or datetime.datetime.now(datetime.timezone.utc)
    conditions: list = [{"bucket": bucket_condition}, ["starts-with", "$key", key_prefix],
                        ["content-length-range", 1, 64], ["in", "$content-type", ["text/plain", "image/png"]]]
    conditions += extra_conditions or []
    fields = [("key", key), ("Content-Type", content_type)] + (extra_fields or [])
    if status:
        fields.append(("success_action_status", status))
    if token is not None:
        if version == "v4":
            conditions.append({"x-oss-security-token": token})
        if not drop_token:
            fields.append(("x-oss-security-token", form_token if form_token is not None else token))
    if version == "v4":
        xdate = now.strftime("%Y%m%dT%H%M%SZ")
        day = credential_day or xdate[:8]
        credential = f"{ak}/{day}/{REGION}/oss/aliyun_v4_request"
        required = {"x-oss-signature-version": "OSS4-HMAC-SHA256", "x-oss-credential": credential,
                    "x-oss-date": xdate}
        conditions += [{k: v} for k, v in required.items() if k != omit_condition]
        policy = {"expiration": iso_ms(now + datetime.timedelta(seconds=ttl)), "conditions": conditions}
        policy_b64 = policy_override or base64.b64encode(json.dumps(policy).encode()).decode()
        signature = hmac.new(v4_signing_key(sk, day), policy_b64.encode(), hashlib.sha256).hexdigest()
        fields += [("policy", policy_b64), *required.items(), ("x-oss-signature", signature)]
    else:
        policy = {"expiration": iso_ms(now + datetime.timedelta(seconds=ttl)), "conditions": conditions}
        policy_b64 = policy_override or base64.b64encode(json.dumps(policy).encode()).decode()
        signature = base64.b64encode(hmac.new(sk.encode(), policy_b64.encode(), hashlib.sha1).digest()).decode()
        fields += [("OSSAccessKeyId", ak), ("policy", policy_b64), ("Signature", signature)]
    boundary = "----selftest" + uuid.uuid4().hex
    file_part = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n").encode() + b"x" * size + b"\r\n"
    field_parts = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'.encode()
                           for n, v in fields)
    body = (field_parts + file_part if file_last else file_part + field_parts) + f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


# ---------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------

def header_auth_cases(r: Results, c: Clients, ep: str):
    r.case("oss2 V1 header put (x-oss-security-token)", "200 OK",
           lambda: c.oss2("v1").put_object("uploads/o2-v1.txt", b"hello v1"))
    r.case("oss2 V4 header put", "200 OK", lambda: c.oss2("v4").put_object("uploads/o2-v4.txt", b"hello v4"))
    r.case("oss-v2 V4 header put", "200 OK", c.v2_put("uploads/v2-v4.txt"))
    r.case("oss-v2 V1 header put (bare security-token header)", "200 OK", c.v2_put("uploads/v2-v1.txt", version="v1"))
    r.case("oss2 V1 put, wrong secret", "SignatureDoesNotMatch",
           lambda: c.oss2("v1", sk="wrong").put_object("uploads/x.txt", b"x"))
    r.case("oss2 V4 put, wrong secret", "SignatureDoesNotMatch",
           lambda: c.oss2("v4", sk="wrong").put_object("uploads/x.txt", b"x"))
    r.case("oss-v2 V4 put, wrong secret", "SignatureDoesNotMatch", c.v2_put("uploads/x.txt", sk="wrong"))
    r.case("oss2 V1 put, wrong token", "InvalidSecurityToken",
           lambda: c.oss2("v1", token="CAISwrong").put_object("uploads/x.txt", b"x"))
    r.case("oss2 V4 put, wrong token", "InvalidSecurityToken",
           lambda: c.oss2("v4", token="CAISwrong").put_object("uploads/x.txt", b"x"))
    r.case("oss-v2 V4 put, no token", "InvalidSecurityToken", c.v2_put("uploads/x.txt", token=None))
    r.case("oss2 V4 put, key outside session-policy prefix", "403 AccessDenied",
           lambda: c.oss2("v4").put_object("other/x.txt", b"x"))
    r.case("oss2 V1 put, key outside session-policy prefix", "403 AccessDenied",
           lambda: c.oss2("v1").put_object("other/x.txt", b"x"))
    r.case("oss-v2 V4 put, key outside session-policy prefix", "403 AccessDenied", c.v2_put("uploadsX/x.txt"))
    r.case("oss2 V4 put, unknown AccessKeyId", "InvalidAccessKeyId",
           lambda: c.oss2("v4", ak="STS.neverIssued").put_object("uploads/x.txt", b"x"))
    r.case("oss2 V4 get, session policy allows PutObject only", "403 AccessDenied",
           lambda: c.oss2("v4").get_object("uploads/o2-v4.txt"))
    r.case("plain key V1 put anywhere (no policy)", "200 OK",
           lambda: c.oss2("v1", PLAIN_AK, PLAIN_SK, None).put_object("other/plain.txt", b"plain"))
    read = {}

    def plain_get():
        result = c.oss2("v4", PLAIN_AK, PLAIN_SK, None).get_object("other/plain.txt")
        read["body"] = result.read()
        return result
    got = outcome_of(plain_get)
    r.check("plain key V4 get returns the bytes", got, "200 OK", ok=got == "200 OK" and read.get("body") == b"plain")
    r.case("plain key with a token it does not have", "InvalidSecurityToken",
           lambda: c.oss2("v4", PLAIN_AK, PLAIN_SK, "CAISbogus").put_object("other/x.txt", b"x"))
    r.case("oss2 V4 put, wrong Content-MD5", "InvalidDigest",
           lambda: c.oss2("v4").put_object("uploads/md5.txt", b"abc",
                                           headers={"Content-MD5": base64.b64encode(b"0" * 16).decode()}))
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=20)
    for version in ("v1", "v4"):
        url, headers = c.sign(version, "PUT", "uploads/skew.txt", signed_at=old,
                              headers={"x-oss-security-token": TOKEN} if version == "v1" else None)
        r.case(f"{version} header signed 20 min ago", "RequestTimeTooSkewed",
               lambda: raw("PUT", url, b"x", headers))
    # x-oss-object-acl on a write works like PutObjectACL: a session needs oss:PutObjectAcl.
    public = {"x-oss-object-acl": "public-read"}
    r.case("oss2 V4 put with x-oss-object-acl, session policy lacks oss:PutObjectAcl", "403 AccessDenied",
           lambda: c.oss2("v4").put_object("uploads/public.txt", b"x", headers=public))
    r.case("plain key V4 put with x-oss-object-acl public-read (no policy)", "200 OK",
           lambda: c.oss2("v4", PLAIN_AK, PLAIN_SK, None).put_object("other/public.txt", b"x", headers=public))
    r.case("plain key V4 put with an unknown x-oss-object-acl", "400 InvalidArgument",
           lambda: c.oss2("v4", PLAIN_AK, PLAIN_SK, None).put_object(
               "other/odd-acl.txt", b"x", headers={"x-oss-object-acl": "world-writable"}))
    # ali-oss with an IP endpoint: bucket only in the Host header (peers.md 4).
    url, headers = c.sign("v1", "PUT", "uploads/host-routed.txt", {"x-oss-security-token": TOKEN},
                          bucket_in_path=False)
    headers["Host"] = f"{BUCKET}.oss-{REGION}.aliyuncs.com"
    r.case("V1 put routed on Host: <bucket>.oss-<region>.aliyuncs.com", "200 OK",
           lambda: raw("PUT", url, b"host", headers))


def presign_cases(r: Results, c: Clients):
    ct = {"Content-Type": "text/plain"}
    # --- V1 (oss2's presigner)
    u1 = c.oss2("v1").sign_url("PUT", "uploads/pre-v1.txt", 300, headers=ct)
    r.case("oss2 V1 presigned PUT", "200 OK", lambda: raw("PUT", u1, b"pre v1", ct))
    r.case("oss2 V1 presigned PUT, other Content-Type", "SignatureDoesNotMatch",
           lambda: raw("PUT", u1, b"x", {"Content-Type": "text/html"}))
    r.case("oss2 V1 presigned PUT, no Content-Type", "SignatureDoesNotMatch", lambda: raw("PUT", u1, b"x"))
    r.case("oss2 V1 presigned PUT, tampered Signature", "SignatureDoesNotMatch",
           lambda: raw("PUT", tamper(u1, "Signature"), b"x", ct))
    r.case("oss2 V1 presigned PUT, wrong security-token", "InvalidSecurityToken",
           lambda: raw("PUT", replace_param(u1, "security-token", "CAISwrong"), b"x", ct))
    r.case("oss2 V1 presigned PUT, security-token removed", "InvalidSecurityToken",
           lambda: raw("PUT", replace_param(u1, "security-token", None), b"x", ct))
    u1x = c.oss2("v1").sign_url("PUT", "uploads/pre-v1-exp.txt", -30)
    got = raw("PUT", u1x, b"x")
    r.check("oss2 V1 presigned PUT, expired", got.outcome, "403 AccessDenied",
            ok=got.outcome == "403 AccessDenied" and got.xml("Message") == "Request has expired.")
    u1o = c.oss2("v1").sign_url("PUT", "other/pre-v1.txt", 300)
    r.case("oss2 V1 presigned PUT, key outside session-policy prefix", "AccessDenied",
           lambda: raw("PUT", u1o, b"x"))
    # --- V4 (oss2's and v2's presigners, v2's signer for the edges)
    u4 = c.oss2("v4").sign_url("PUT", "uploads/pre-v4-oss2.txt", 300, headers=ct)
    r.case("oss2 V4 presigned PUT", "200 OK", lambda: raw("PUT", u4, b"pre v4", ct))
    r.case("oss2 V4 presigned PUT, other Content-Type", "SignatureDoesNotMatch",
           lambda: raw("PUT", u4, b"x", {"Content-Type": "application/json"}))
    pre = c.v2().presign(oss.PutObjectRequest(bucket=BUCKET, key="uploads/pre-v4-v2.txt", content_type="text/plain"),
                         expires=datetime.timedelta(minutes=5))
    r.case("oss-v2 V4 presigned PUT", "200 OK", lambda: raw("PUT", pre.url, b"pre v4 v2", dict(pre.signed_headers)))
    r.case("oss-v2 V4 presigned PUT, other Content-Type", "SignatureDoesNotMatch",
           lambda: raw("PUT", pre.url, b"x", {"Content-Type": "image/png"}))
    r.case("oss-v2 V4 presigned PUT, tampered x-oss-signature", "SignatureDoesNotMatch",
           lambda: raw("PUT", tamper(pre.url, "x-oss-signature"), b"x", ct))
    r.case("oss-v2 V4 presigned PUT, key changed", "SignatureDoesNotMatch",
           lambda: raw("PUT", pre.url.replace("pre-v4-v2", "pre-v4-evil"), b"x", ct))
    r.case("oss-v2 V4 presigned PUT, wrong x-oss-security-token", "InvalidSecurityToken",
           lambda: raw("PUT", replace_param(pre.url, "x-oss-security-token", "CAISwrong"), b"x", ct))
    r.case("oss-v2 V4 presigned PUT, token '+' sent unencoded", "InvalidSecurityToken",
           lambda: raw("PUT", pre.url.replace("%2B", "+"), b"x", ct))
    now = datetime.datetime.now(datetime.timezone.utc)
    url, _ = c.sign("v4", "PUT", "uploads/pre-exp.txt", query=True, signed_at=now - datetime.timedelta(seconds=120),
                    expires=now - datetime.timedelta(seconds=60))
    got = raw("PUT", url, b"x")
    r.check("V4 presigned PUT, expired (x-oss-date + x-oss-expires)", got.outcome, "403 AccessDenied",
            ok=got.outcome == "403 AccessDenied" and got.xml("Message") == "Request has expired.")
    url, _ = c.sign("v4", "PUT", "uploads/pre-7d.txt", query=True, signed_at=now,
                    expires=now + datetime.timedelta(seconds=604800))
    r.case("V4 presigned PUT, x-oss-expires=604800", "200 OK", lambda: raw("PUT", url, b"x"))
    url, _ = c.sign("v4", "PUT", "uploads/pre-7d1s.txt", query=True, signed_at=now,
                    expires=now + datetime.timedelta(seconds=604801))
    r.case("V4 presigned PUT, x-oss-expires=604801", "400 InvalidArgument", lambda: raw("PUT", url, b"x"))
    url, _ = c.sign("v4", "PUT", "other/pre.txt", query=True)
    r.case("V4 presigned PUT, key outside session-policy prefix", "403 AccessDenied", lambda: raw("PUT", url, b"x"))


def multipart_cases(r: Results, c: Clients, ep: str):
    part1, part2 = os.urandom(100 * 1024), os.urandom(50 * 1024)

    def oss2_multipart():
        b = c.oss2("v4")
        uid = b.init_multipart_upload("uploads/big.bin").upload_id
        p1 = b.upload_part("uploads/big.bin", uid, 1, part1)
        p2 = b.upload_part("uploads/big.bin", uid, 2, part2)
        return b.complete_multipart_upload("uploads/big.bin", uid, [oss2.models.PartInfo(1, p1.etag),
                                                                      oss2.models.PartInfo(2, p2.etag)])
    got = outcome_of(oss2_multipart)
    stored = raw("GET", f"{ep}/_fake/object/{BUCKET}/uploads/big.bin")
    r.check("oss2 V4 multipart (init, 2 parts, complete), bytes assembled", got, "200 OK",
            ok=got == "200 OK" and stored.body == part1 + part2)

    def v2_multipart():
        cl = c.v2("v4")
        uid = cl.initiate_multipart_upload(oss.InitiateMultipartUploadRequest(
            bucket=BUCKET, key="uploads/big-v2.bin")).upload_id
        p1 = cl.upload_part(oss.UploadPartRequest(bucket=BUCKET, key="uploads/big-v2.bin", upload_id=uid,
                                                  part_number=1, body=part1))
        return cl.complete_multipart_upload(oss.CompleteMultipartUploadRequest(
            bucket=BUCKET, key="uploads/big-v2.bin", upload_id=uid,
            complete_multipart_upload=oss.CompleteMultipartUpload(
                parts=[oss.UploadPart(part_number=1, etag=p1.etag)])))
    r.case("oss-v2 V4 multipart (init, part, complete)", "200 OK", v2_multipart)

    def v2_abort():
        cl = c.v2("v4")
        uid = cl.initiate_multipart_upload(oss.InitiateMultipartUploadRequest(
            bucket=BUCKET, key="uploads/aborted.bin")).upload_id
        return cl.abort_multipart_upload(oss.AbortMultipartUploadRequest(
            bucket=BUCKET, key="uploads/aborted.bin", upload_id=uid))
    r.case("oss-v2 V4 multipart abort", "204 OK", v2_abort)
    r.case("oss2 V4 multipart init, key outside session-policy prefix", "403 AccessDenied",
           lambda: c.oss2("v4").init_multipart_upload("other/big.bin"))

    uid = c.oss2("v4").init_multipart_upload("uploads/mp-bad.bin").upload_id
    r.case("oss2 V1 upload part, wrong token", "InvalidSecurityToken",
           lambda: c.oss2("v1", token="CAISwrong").upload_part("uploads/mp-bad.bin", uid, 1, b"x"))
    c.oss2("v4").upload_part("uploads/mp-bad.bin", uid, 1, b"x")
    r.case("oss2 complete with a wrong part ETag", "InvalidPart",
           lambda: c.oss2("v4").complete_multipart_upload("uploads/mp-bad.bin", uid, [
               oss2.models.PartInfo(1, '"0123456789ABCDEF0123456789ABCDEF"')]))
    r.case("oss2 upload part to an unknown uploadId", "NoSuchUpload",
           lambda: c.oss2("v4").upload_part("uploads/mp-bad.bin", "NOSUCHUPLOAD", 1, b"x"))


def post_cases(r: Results, ep: str):
    url = f"{ep}/{BUCKET}"

    def post(version: str, **kw):
        ctype, body = post_form(version, **kw)
        return raw("POST", url, body, {"Content-Type": ctype})

    for v in ("v1", "v4"):
        P = f"PostObject {v}"
        got = post(v, filename=f"post-{v}.txt")
        stored = raw("GET", f"{ep}/_fake/object/{BUCKET}/uploads/post-{v}.txt")
        r.check(f"{P} valid, ${{filename}} substituted", got.outcome, "204 OK",
                ok=got.outcome == "204 OK" and stored.status == 200 and stored.body == b"x" * 5)
        got = post(v, status="201", key=f"uploads/post-{v}-201.txt")
        r.check(f"{P} success_action_status=201 -> PostResponse XML", got.outcome, "201 OK",
                ok=got.outcome == "201 OK" and got.xml("Key") == f"uploads/post-{v}-201.txt"
                and got.xml("ETag") == got.headers.get("etag"))
        r.check(f"{P} success_action_status=200", post(v, status="200").outcome, "200 OK")
        r.check(f"{P} signed with wrong secret", post(v, sk="wrong").outcome, "403 SignatureDoesNotMatch")
        r.check(f"{P} token field missing", post(v, drop_token=True).outcome, "403 InvalidSecurityToken")
        r.check(f"{P} wrong token field", post(v, form_token="CAISwrong").outcome, "403 InvalidSecurityToken")
        got = post(v, ttl=-5)
        r.check(f"{P} expired policy", got.outcome, "403 AccessDenied",
                ok=got.outcome == "403 AccessDenied" and got.xml("Message") == "Request has expired.")
        r.check(f"{P} key fails starts-with condition", post(v, key="etc/passwd").outcome, "403 AccessDenied")
        r.check(f"{P} key outside session-policy prefix (conditions pass)",
                post(v, key="other/x.txt", key_prefix="").outcome, "403 AccessDenied")
        r.check(f"{P} file above content-length-range", post(v, size=65).outcome, "400 EntityTooLarge")
        r.check(f"{P} empty file below content-length-range", post(v, size=0).outcome, "400 EntityTooSmall")
        r.check(f"{P} Content-Type not in allowed list", post(v, content_type="text/html").outcome,
                "403 AccessDenied")
        r.check(f"{P} not-in condition violated", post(v, extra_conditions=[
            ["not-in", "$content-type", ["text/plain"]]]).outcome, "403 AccessDenied")
        r.check(f"{P} eq condition on success_action_status", post(v, status="201", extra_conditions=[
            ["eq", "$success_action_status", "200"]]).outcome, "403 AccessDenied")
        r.check(f"{P} bucket condition names another bucket", post(v, bucket_condition="other-bucket").outcome,
                "403 AccessDenied")
        r.check(f"{P} file field not last", post(v, file_last=False).outcome, "400 InvalidArgument")
        r.check(f"{P} policy is not JSON",
                post(v, policy_override=base64.b64encode(b"{not json").decode()).outcome,
                "400 InvalidPolicyDocument")
        r.check(f"{P} unknown AccessKeyId", post(v, ak="STS.neverIssued").outcome, "403 InvalidAccessKeyId")
        # Fields no condition names are not checked by the policy, but an ACL needs oss:PutObjectAcl.
        acl = [("x-oss-object-acl", "public-read")]
        r.check(f"{P} x-oss-object-acl field, session policy lacks oss:PutObjectAcl",
                post(v, extra_fields=acl).outcome, "403 AccessDenied")
        r.check(f"{P} x-oss-object-acl field, plain key (no policy)",
                post(v, ak=PLAIN_AK, sk=PLAIN_SK, token=None, extra_fields=acl, filename=f"acl-{v}.txt").outcome,
                "204 OK")
    now = datetime.datetime.now(datetime.timezone.utc)
    r.check("PostObject v4 x-oss-date 20 min in the future",
            post("v4", signed_at=now + datetime.timedelta(minutes=20)).outcome, "403 RequestTimeTooSkewed")
    r.check("PostObject v4 x-oss-date 10 min in the future", post("v4", signed_at=now + datetime.timedelta(minutes=10)
                                                                   ).outcome, "204 OK")
    r.check("PostObject v4 policy lacks the x-oss-date condition", post("v4", omit_condition="x-oss-date").outcome,
            "400 InvalidPolicyDocument")
    r.check("PostObject v4 credential day differs from x-oss-date",
            post("v4", credential_day=(now - datetime.timedelta(days=1)).strftime("%Y%m%d")).outcome,
            "400 InvalidArgument")
    ctype, body = post_form("v4")
    r.check("PostObject to /<bucket>/<key> is not PostObject",
            raw("POST", f"{url}/uploads/x.txt", body, {"Content-Type": ctype}).outcome, "405 MethodNotAllowed")


def sts_cases(r: Results, c: Clients, sts_url: str, ep: str):
    caller_ak, caller_sk = STS_CALLER

    def assume_role(policy: dict | None) -> dict:
        params = {"Action": "AssumeRole", "Version": fake_sts.STS_VERSION, "Format": "JSON",
                  "AccessKeyId": caller_ak, "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0",
                  "SignatureNonce": uuid.uuid4().hex, "Timestamp": fake_sts.iso_utc(time.time()),
                  "RoleArn": "acs:ram::1234567890123456:role/oss-uploader", "RoleSessionName": "selftest",
                  "DurationSeconds": "900"}
        if policy is not None:
            params["Policy"] = json.dumps(policy, separators=(",", ":"))
        body = urllib.parse.urlencode(fake_sts.sign_params("POST", params, caller_sk)).encode()
        req = urllib.request.Request(sts_url + "/", data=body, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10) as resp:
            return json.loads(resp.read())["Credentials"]

    sts_policy = {"Version": "1", "Statement": [{"Effect": "Allow", "Action": "oss:PutObject",
                                                 "Resource": f"acs:oss:*:*:{BUCKET}/sts/*"}]}
    creds = assume_role(sts_policy)
    kw = {"ak": creds["AccessKeyId"], "sk": creds["AccessKeySecret"], "token": creds["SecurityToken"]}
    r.case("STS-issued creds (looked up via --sts) V4 put inside policy", "200 OK",
           lambda: c.oss2("v4", **kw).put_object("sts/a.txt", b"sts"))
    r.case("STS-issued creds V1 put inside policy (cached lookup)", "200 OK",
           lambda: c.oss2("v1", **kw).put_object("sts/b.txt", b"sts"))
    r.case("STS-issued creds put outside their session policy", "403 AccessDenied",
           lambda: c.oss2("v4", **kw).put_object("uploads/a.txt", b"sts"))
    r.case("STS-issued creds with another token", "InvalidSecurityToken",
           lambda: c.oss2("v4", **{**kw, "token": "CAISwrong"}).put_object("sts/a.txt", b"x"))
    ctype, body = post_form("v4", key="sts/post.txt", key_prefix="sts/", ak=kw["ak"], sk=kw["sk"], token=kw["token"])
    r.check("STS-issued creds PostObject v4", raw("POST", f"{ep}/{BUCKET}", body, {"Content-Type": ctype}).outcome,
            "204 OK")
    free = assume_role(None)
    r.case("STS-issued creds without Policy are unrestricted", "200 OK",
           lambda: c.oss2("v4", free["AccessKeyId"], free["AccessKeySecret"], free["SecurityToken"])
           .put_object("anything/x.txt", b"x"))
    post_json(sts_url + "/_fake/script", {"responses": [{"expires_in": -60}]})
    old = assume_role(sts_policy)
    r.case("STS-issued creds past their Expiration", "403 SecurityTokenExpired",
           lambda: c.oss2("v4", old["AccessKeyId"], old["AccessKeySecret"], old["SecurityToken"])
           .put_object("sts/late.txt", b"x"))
    r.case("STS.* AccessKeyId the fake STS never issued", "403 InvalidAccessKeyId",
           lambda: c.oss2("v4", "STS.NneverIssuedByFakeSts00", "x", "CAISx").put_object("sts/x.txt", b"x"))


def control_and_cors_cases(r: Results, c: Clients, ep: str):
    objects = get_json(ep + "/_fake/objects")["objects"]
    kinds = {o["auth"] for o in objects}
    want = {"v1-header", "v4-header", "v1-query", "v4-query", "post-v1", "post-v4", "multipart"}
    r.check("/_fake/objects lists every auth kind", f"{len(objects)} objects", ",".join(sorted(want)),
            ok=want <= kinds and all({"bucket", "key", "size", "md5", "content_type", "auth"} <= o.keys()
                                     for o in objects))
    o = next((o for o in objects if o["key"] == "uploads/pre-v1.txt"), {})
    r.check("/_fake/objects entry: size, md5, Content-Type as sent", json.dumps(o)[:100], "pre-v1 entry",
            ok=o.get("size") == 6 and o.get("md5") == hashlib.md5(b"pre v1").hexdigest()
            and o.get("content_type") == "text/plain" and o.get("auth") == "v1-query")
    requests = get_json(ep + "/_fake/requests")["requests"]
    verdicts = {q["verdict"] for q in requests}
    bad_sig = [q for q in requests if q["verdict"] == "SignatureDoesNotMatch"]
    r.check("/_fake/requests records verdicts and auth kinds", f"{len(requests)} requests", "verdicts",
            ok={"OK", "SignatureDoesNotMatch", "AccessDenied", "InvalidSecurityToken"} <= verdicts
            and all(q["auth"] for q in bad_sig) and all({"method", "path", "verdict", "auth"} <= q.keys()
                                                         for q in requests))
    url, headers = c.sign("v4", "PUT", "uploads/etag.txt")
    etag = raw("PUT", url, b"hello", headers).headers.get("etag")
    want = f'"{hashlib.md5(b"hello").hexdigest().upper()}"'
    r.check("ETag is the quoted upper-case MD5", str(etag), want, ok=etag == want)
    origin = "http://127.0.0.1:9"
    pre = raw("OPTIONS", f"{ep}/{BUCKET}/uploads/cors.png", headers={
        "Origin": origin, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-type,x-oss-meta-a"})
    h = pre.headers
    r.check("CORS preflight echoes Origin and requested headers", pre.outcome, "200 OK",
            ok=pre.status == 200 and h.get("access-control-allow-origin") == origin
            and "PUT" in h.get("access-control-allow-methods", "")
            and h.get("access-control-allow-headers") == "content-type,x-oss-meta-a")
    err = raw("PUT", f"{ep}/{BUCKET}/uploads/anon.txt", b"x", {"Origin": origin})
    r.check("error answers: OSS XML + CORS + exposed ETag/x-oss-request-id", err.outcome, "403 AccessDenied",
            ok=err.outcome == "403 AccessDenied" and err.xml("RequestId") == err.headers.get("x-oss-request-id")
            and err.headers.get("access-control-allow-origin") == origin
            and err.headers.get("access-control-expose-headers") == "ETag, x-oss-request-id")

    def burst(i):
        return outcome_of(lambda: c.oss2("v4").put_object(f"uploads/burst/{i}.txt", str(i).encode()))
    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(burst, range(96)))
    r.check("96 concurrent V4 puts on 32 threads", f"{outcomes.count('200 OK')}/96 OK", "96/96 OK",
            ok=outcomes.count("200 OK") == 96)
    post_json(ep + "/_fake/reset")
    after = get_json(ep + "/_fake/objects")["objects"], get_json(ep + "/_fake/requests")["requests"]
    r.check("POST /_fake/reset forgets objects and requests", f"{len(after[0])} objects, {len(after[1])} requests",
            "0 objects, 0 requests")


def main() -> int:
    started = time.time()
    py = sys.executable
    r = Results()
    with tempfile.TemporaryDirectory(prefix="fake-oss-selftest-") as tmp:
        policy_file = Path(tmp, "upload-policy.json")
        policy_file.write_text(json.dumps(UPLOAD_POLICY))
        sts = Fake([py, str(HERE / "fake_sts.py"), "--port", "0", "--key", ":".join(STS_CALLER)])
        fake = None
        try:
            fake = Fake([py, str(HERE / "fake_oss.py"), "--port", "0", "--data-dir", str(Path(tmp, "data")),
                         "--sts", sts.url, "--region", REGION,
                         "--key", f"{AK}:{SK}:{TOKEN}", "--key-policy", f"{AK}=@{policy_file}",
                         "--key", f"{PLAIN_AK}:{PLAIN_SK}"])
            c = Clients(fake.url)
            header_auth_cases(r, c, fake.url)
            presign_cases(r, c)
            multipart_cases(r, c, fake.url)
            post_cases(r, fake.url)
            sts_cases(r, c, sts.url, fake.url)
            control_and_cors_cases(r, c, fake.url)
            secrets_logged = [line for line in fake.lines if TOKEN in line or SK in line]
            r.check("fake_oss log lines carry no secret or token", f"{len(fake.lines)} lines", "none leaked",
                    ok=not secrets_logged)
        finally:
            if fake:
                fake.stop()
            sts.stop()
    print(f"took {time.time() - started:.1f}s")
    print(f"fake_oss selftest: {r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
