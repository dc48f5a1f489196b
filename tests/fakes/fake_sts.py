#!/usr/bin/env python3
"""Loopback fake of Alibaba Cloud STS ``AssumeRole`` for ossvend's integration tests.

Stdlib only (Python 3.11+).  It verifies requests the way the real STS gateway does
(RPC signature 1.0 / HMAC-SHA1, Timestamp window, SignatureNonce replay, AssumeRole
parameter rules) and answers with bodies shaped like the real service, so the Rust
client is tested against the wire format rather than against itself.  Spec:
docs/signing.md sections 1-2.

Usage
-----
    python3 tests/fakes/fake_sts.py [--port 0] [--key AK:SECRET ...]
                                    [--max-skew-seconds 900] [--max-session-duration 3600]
    python3 tests/fakes/fake_sts.py --selftest tests/vectors/sts_rpc_hmac_sha1.json

The first stdout line is exactly ``listening on 127.0.0.1:<port>`` (port 0 = ephemeral).
Then one line per STS request; secrets and signatures are never printed.  Without
``--key`` the caller key is ``LTAIfakeTestKeyId0001:fakeTestSecretDoNotUse0001``.

STS endpoint: ``GET|POST /`` with ``Action=AssumeRole`` (or ``AssumeRoleWithOIDC``,
below) and the RPC parameters in the query string, in an
``application/x-www-form-urlencoded`` body, or split between both.

Test-only control API (JSON):
    GET  /_fake/calls   -> {"calls": [{"seq", "method", "params", "verified", "outcome",
                                       "time", "access_key_id_issued", "expiration_issued"}]}
    GET  /_fake/state   -> {"pending": [<behaviour>...], "mode": <behaviour>, "calls": <count>}
    POST /_fake/reset   -> clears calls (seq restarts at 1), script and mode; keeps used nonces
    POST /_fake/script  {"responses": [<behaviour>, ...]}  queued for the next AssumeRole
                        calls that pass verification, one per call, in order
    POST /_fake/mode    <behaviour>  used while the script queue is empty ({} = normal)
    GET  /_fake/issued/<AccessKeyId>
                        -> {"AccessKeySecret", "SecurityToken", "Expiration", "Policy"} for
                        credentials this fake issued, by any source below (Policy: the AssumeRole ``Policy``
                        parameter as sent, a JSON string, or null), else 404.  Test-only:
                        lets the OSS sink of the tests (tests/it/support EmbeddedOss) verify uploads signed with
                        vended credentials and enforce their session policy.  Issued
                        credentials survive /_fake/reset, as real ones outlive a test.
A behaviour is an object with optional keys ``error`` (STS error Code), ``status``
(HTTP status override), ``expires_in`` (seconds; Expiration = now + that),
``delay_ms`` (sleep before answering) and ``raw`` (text sent as the body, status 200
unless ``status`` is given).

Identity sources (spec sections 3, 4 and 6), all on the same port
-----------------------------------------------------------------
``Action=AssumeRoleWithOIDC`` (spec 3) is anonymous: a request carrying AccessKeyId,
SignatureMethod, SignatureVersion or Signature is refused (``InvalidParameter``).
It needs Version, a valid Timestamp, RoleArn, OIDCProviderArn
(``acs:ram::<account>:oidc-provider/<name>``), OIDCToken (4-20000 chars, three
non-empty dot-separated base64url segments - ``+/=`` tolerated, as the SDK vectors
send them; a base64-wrapped or newline-terminated token is refused with
``InvalidParameter.OIDCToken``), RoleSessionName and optional DurationSeconds/Policy
(same rules as AssumeRole); parameters may be in the query, the form body, or split.
A token whose payload decodes to JSON with a past ``exp`` is
``AuthenticationFail.OIDCToken.Expired``; a token outside the scripted valid set is
``AuthenticationFail.OIDCToken.Invalid``.  OIDC calls are recorded in /_fake/calls
(``params.OIDCToken`` included: test values only; never printed to stdout).  They do
not consume the AssumeRole script/mode; they have their own (below).

Every credential this fake issues - AssumeRole, AssumeRoleWithOIDC, instance metadata,
credentials URI - is also accepted as a CALLER key of AssumeRole, as temporary keys
are by the real service: the request must then carry the matching ``SecurityToken``
parameter (absent: ``MissingSecurityToken``; another token:
``InvalidSecurityToken.MismatchWithAccessKey``; not ``CAIS...``:
``InvalidSecurityToken.Malformed``) and is refused once the credential's Expiration
has passed (``InvalidSecurityToken.Expired``).  A ``SecurityToken`` sent with a
long-term (``--key``) AccessKey is ``InvalidSecurityToken.MismatchWithAccessKey``.

Instance metadata (spec 4, "100.100.100.200" served under this port):
    PUT  /latest/api/token  needs ``X-aliyun-ecs-metadata-token-ttl-seconds`` (1..21600,
                        else 400) -> the token text (valid for that many seconds)
    GET  /latest/meta-data/ram/security-credentials/   -> the role name (text)
    GET  /latest/meta-data/ram/security-credentials/<role>
                        -> {"AccessKeyId", "AccessKeySecret", "Expiration", "SecurityToken",
                            "LastUpdated", "Code": "Success"}; a FRESH credential on every
                        GET (Expiration = now + expires_in); unknown role -> 404
    GETs need ``X-aliyun-ecs-metadata-token: <token>`` in hardened mode (the default);
    without it, or with an unknown/expired token, -> 401.  Answers are text/plain.
Credentials URI (spec 6):
    GET  /creds[?anything]  -> {"Code": "Success", "AccessKeyId", "AccessKeySecret",
                        "SecurityToken", "Expiration", "LastUpdated"}, a fresh credential
                        each time (Expiration = now + expires_in); other methods -> 405

Control API for them (JSON; POST bodies are partial: absent keys keep their value):
    GET  /_fake/imds    -> {"config": {...}, "calls": [{"seq", "method", "path", "kind"
                           ("token"|"role"|"credentials"|"other"), "token" ("valid"|
                           "invalid"|"none"), "ttl", "status" (0 = connection dropped),
                           "time", "access_key_id_issued", "expiration_issued"}]}
    POST /_fake/imds    {"role_name": "EcsRamRoleOss", "expires_in": 21600,
                         "require_token": true, "fail": null, "token_fail": null}
                        require_token=false is IMDSv1 mode (token-less GETs accepted; a
                        token that IS sent must still be valid).  ``fail`` applies to
                        every IMDS path: null (normal) | "close" (the connection is
                        dropped without an answer) | "<status>" e.g. "503", "404" (that
                        status, text body) | "not_success" (credentials doc with Code
                        "Failed") | "malformed" (credentials doc that is not JSON); the
                        last two affect only the credentials GET.  ``token_fail``
                        (null | "close" | "<status>") fails only the token PUT: an IMDS
                        without the token API, for the v1 fallback.
    GET  /_fake/uri     -> {"config": {...}, "calls": [{"seq", "method", "path", "query",
                           "authorization" (bool: any Authorization header sent),
                           "status", "time", "access_key_id_issued", "expiration_issued"}]}
    POST /_fake/uri     {"expires_in": 3600, "fail": null}  fail: null | "close" | "<status>"
                        | "malformed" (not JSON) | "not_success" (Code "Failed")
                        | "missing_field" (no SecurityToken)
                        | "fractional" (Expiration with ".000Z", which strict clients refuse)
    GET  /_fake/oidc    -> {"valid_tokens": [...] | null, "mode": <behaviour>,
                            "pending": [<behaviour>...]}
    POST /_fake/oidc    {"valid_tokens": ["<jwt>", ...] | null, "mode": <behaviour>,
                         "script": [<behaviour>, ...]}   valid_tokens null = every
                        well-formed unexpired JWT is accepted (the default); ``script``
                        is appended to the OIDC queue; behaviours as for AssumeRole
                        (``expires_in`` sets the identity's lifetime).
/_fake/reset also clears the IMDS/URI call lists and restores every default above
(OIDC: any token, normal mode, empty script).  Issued IMDS tokens survive it.
"""

from __future__ import annotations

import argparse
import base64
import calendar
import collections
import dataclasses
import hashlib
import hmac
import json
import os
import queue
import re
import secrets
import socket
import string
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

BIND_HOST = "127.0.0.1"  # loopback only, by design: never expose the fake
DEFAULT_KEY = "LTAIfakeTestKeyId0001:fakeTestSecretDoNotUse0001"
STS_VERSION = "2015-04-01"
HOST_ID = "sts.aliyuncs.com"
MIN_DURATION = 900
MAX_POLICY_CHARS = 2048
MAX_BODY_BYTES = 1 << 20  # real POP caps RPC bodies; this also bounds memory use
MAX_ISSUED = 100_000      # issued credentials remembered for /_fake/issued (oldest dropped)

# Code -> (typical HTTP status, message).  Texts follow the real POP gateway / STS.
ERRORS: dict[str, tuple[int, str]] = {
    "NoPermission": (403, "You are not authorized to do this action. You should be authorized by RAM."),
    "EntityNotExist.Role": (404, "The role not exists."),
    "InvalidAccessKeyId.NotFound": (404, "Specified access key is not found."),
    "InvalidAccessKeyId.Inactive": (400, "Specified access key is disabled."),
    "InvalidAction.NotFound": (404, "Specified api is not found, please check your url and method."),
    "InvalidVersion": (400, "Specified parameter Version is not valid."),
    "InvalidSignatureMethod": (400, "Specified signature method is not supported."),
    "InvalidSignatureVersion": (400, "Specified signature version is not supported."),
    "SignatureDoesNotMatch": (400, "Specified signature is not matched with our calculation."),
    "SignatureNonceUsed": (400, "Specified signature nonce was used already."),
    "InvalidTimeStamp.Expired": (400, "Specified time stamp or date value is expired."),
    "InvalidTimeStamp.Format": (400, "Specified time stamp or date value is not well formatted."),
    "MissingSecurityToken": (400, "SecurityToken is mandatory for this action."),
    "InvalidSecurityToken.Expired": (400, "Specified SecurityToken is expired."),
    "InvalidSecurityToken.Malformed": (400, "Specified SecurityToken is malformed."),
    "InvalidSecurityToken.MismatchWithAccessKey": (400, "Specified SecurityToken mismatch with the AccessKey."),
    "MissingParameter.RoleArn": (400, "RoleArn is mandatory for this action."),
    "InvalidParameter": (400, "The specified parameter is not valid."),
    "InvalidParameter.RoleArn": (400, "The parameter RoleArn is wrongly formed."),
    "InvalidParameter.RoleSessionName": (400, "The parameter RoleSessionName is wrongly formed."),
    "InvalidParameter.DurationSeconds": (400, "The Min/Max value of DurationSeconds is 15min/1hr."),
    "InvalidParameter.PolicyGrammar": (400, "The parameter Policy has not passed grammar check."),
    "Throttling": (400, "Request was denied due to request throttling."),
    "Throttling.User": (400, "Request was denied due to user flow control."),
    "Throttling.Api": (400, "Request was denied due to api flow control."),
    "MissingParameter.OIDCProviderArn": (400, "OIDCProviderArn is mandatory for this action."),
    "MissingParameter.OIDCToken": (400, "OIDCToken is mandatory for this action."),
    "InvalidParameter.OIDCProviderArn": (400, "The parameter OIDCProviderArn is wrongly formed."),
    "InvalidParameter.OIDCToken": (400, "The parameter OIDCToken is wrongly formed."),
    "AuthenticationFail.OIDCToken.Invalid": (400, "The OIDCToken is invalid."),
    "AuthenticationFail.OIDCToken.Expired": (400, "The OIDCToken has expired."),
    "MissingTimestamp": (400, "Timestamp is mandatory for this action."),
    "InternalError": (500, "The request processing has failed due to some unknown error, exception or failure."),
    "ServiceUnavailable": (503, "The request has failed due to a temporary failure of the server."),
}

# Code used when a behaviour only overrides the status (e.g. {"status": 500}).
CODE_FOR_STATUS = {403: "NoPermission", 404: "EntityNotExist.Role", 429: "Throttling.User",
                   500: "InternalError", 503: "ServiceUnavailable"}

# Gateway parameters every signed RPC request must carry (POP answers Missing<Name>).
REQUIRED_COMMON = ("AccessKeyId", "SignatureMethod", "SignatureVersion", "SignatureNonce",
                   "Timestamp", "Signature")

TIMESTAMP_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{3})?Z$")
ROLE_ARN_RE = re.compile(r"^acs:ram::(\d+):role/([A-Za-z0-9._-]{1,64})$")
OIDC_PROVIDER_ARN_RE = re.compile(r"acs:ram::(\d+):oidc-provider/([A-Za-z0-9._-]{1,128})")  # fullmatch
# Three non-empty dot-separated segments.  base64url, plus '+/=' which the SDK vectors
# send (sts_oidc_request.json); a newline, a space or a base64-wrapped JWT (no dots) fails.
JWT_RE = re.compile(r"[A-Za-z0-9_\-+/=]+\.[A-Za-z0-9_\-+/=]+\.[A-Za-z0-9_\-+/=]+")  # fullmatch
OIDC_TOKEN_MAX = 20000
# Parameters an anonymous (AssumeRoleWithOIDC) request must not carry.
SIGNING_PARAMS = ("AccessKeyId", "SignatureMethod", "SignatureVersion", "Signature")
ACTIONS = ("AssumeRole", "AssumeRoleWithOIDC")
SESSION_NAME_RE = re.compile(r"^[A-Za-z0-9.@_-]{2,64}$")
BEHAVIOUR_KEYS = {"error": str, "status": int, "expires_in": int, "delay_ms": int, "raw": str}


# ---------------------------------------------------------------------------
# RPC signature 1.0 (spec section 1.3).  Pure functions: the selftest and the server
# share them, so the vectors prove the code that actually verifies requests.
# ---------------------------------------------------------------------------

def pct(value: str) -> str:
    """POP percent-encoding: RFC 3986 unreserved kept, everything else %XX upper-case.

    ``quote`` already keeps ``A-Za-z0-9_.-~``; ``safe=""`` stops it keeping ``/``.
    """
    return quote(value, safe="")


def form_pct(value: str) -> str:
    """The non-canonical variant (space -> '+') some SDKs use; only for diagnostics."""
    return quote_plus(value, safe="")


def canonicalized_query(params: dict[str, str], encode=pct) -> str:
    """Sorted ``pct(name)=pct(value)`` pairs joined by '&', Signature excluded."""
    return "&".join(f"{encode(k)}={encode(v)}" for k, v in sorted(params.items()) if k != "Signature")


def string_to_sign(method: str, params: dict[str, str], encode=pct) -> str:
    # The second encoding pass is intentional: '%' from the first pass becomes '%25'.
    return f"{method}&{encode('/')}&{encode(canonicalized_query(params, encode))}"


def rpc_signature(secret: str, to_sign: str) -> str:
    mac = hmac.new((secret + "&").encode(), to_sign.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def verify_rpc_signature(method: str, params: dict[str, str], secret: str) -> tuple[bool, str]:
    """Return (matches, server string-to-sign) for the decoded request parameters."""
    to_sign = string_to_sign(method, params)
    ok = hmac.compare_digest(rpc_signature(secret, to_sign), params.get("Signature", ""))
    return ok, to_sign


def signed_with_form_encoding(method: str, params: dict[str, str], secret: str) -> bool:
    """True if the client signed with '+' for space (alibabacloud-credentials bug, spec 1.5)."""
    alt = rpc_signature(secret, string_to_sign(method, params, form_pct))
    return hmac.compare_digest(alt, params.get("Signature", ""))


def sign_params(method: str, params: dict[str, str], secret: str) -> dict[str, str]:
    """Client side helper (selftest): return params plus a correct Signature."""
    return {**params, "Signature": rpc_signature(secret, string_to_sign(method, params))}


# ---------------------------------------------------------------------------
# Request decoding and AssumeRole validation
# ---------------------------------------------------------------------------

class StsError(Exception):
    """An STS error answer: realistic Code, HTTP status and Message."""

    def __init__(self, code: str, message: str | None = None, status: int | None = None):
        default_status, default_message = ERRORS.get(code, (400, f"Error {code}."))
        super().__init__(code)
        self.code = code
        self.status = status or default_status
        self.message = message or default_message


def decode_params(query: str, body: bytes, content_type: str | None) -> dict[str, str]:
    """Merge query-string and form-body parameters (body wins on a duplicate name).

    Both are form-decoded ('+' is a space) because that is what the gateway does and
    what the SDKs rely on when they send ``Policy=...+...`` on the wire.
    """
    try:
        params = dict(parse_qsl(query, keep_blank_values=True, errors="strict"))
        ctype = (content_type or "").split(";")[0].strip().lower()
        if body and ctype == "application/x-www-form-urlencoded":
            params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict"))
    except (UnicodeDecodeError, ValueError):
        raise StsError("InvalidParameter", "The request contains malformed percent-encoding or invalid UTF-8.")
    return params


def parse_timestamp(value: str) -> float:
    """``YYYY-MM-DDThh:mm:ssZ`` (optionally ``.mmmZ``) -> unix seconds, else Format error."""
    m = TIMESTAMP_RE.match(value)
    if not m:
        raise StsError("InvalidTimeStamp.Format")
    try:
        whole = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:  # e.g. month 13: right shape, impossible date
        raise StsError("InvalidTimeStamp.Format")
    return whole + (float(m.group(2)) if m.group(2) else 0.0)


@dataclasses.dataclass
class AssumeRoleRequest:
    account_id: str
    role_name: str
    session_name: str
    duration: int
    has_policy: bool


def validate_assume_role(params: dict[str, str], max_duration: int) -> AssumeRoleRequest:
    """AssumeRole action parameters (spec 1.2).  Raises StsError on the first problem."""
    arn = params.get("RoleArn")
    if arn is None or arn == "":
        raise StsError("MissingParameter.RoleArn")
    m = ROLE_ARN_RE.match(arn)
    if not m:
        raise StsError("InvalidParameter.RoleArn")

    session = params.get("RoleSessionName", "")
    if not SESSION_NAME_RE.match(session):
        raise StsError("InvalidParameter.RoleSessionName")

    raw_duration = params.get("DurationSeconds", "3600")
    if not raw_duration.isascii() or not raw_duration.isdigit() \
            or not MIN_DURATION <= int(raw_duration) <= max_duration:
        raise StsError("InvalidParameter.DurationSeconds",
                       f"The Min/Max value of DurationSeconds is {MIN_DURATION}/{max_duration} seconds.")

    if "Policy" in params:
        check_policy(params["Policy"])

    if m.group(2).lower().startswith("missing"):  # test hook: roles named missing* do not exist
        raise StsError("EntityNotExist.Role", f"The role not exists: {arn}.")
    return AssumeRoleRequest(m.group(1), m.group(2), session, int(raw_duration), "Policy" in params)


def check_policy(policy: str) -> None:
    if not 1 <= len(policy) <= MAX_POLICY_CHARS:
        raise StsError("InvalidParameter.PolicyGrammar",
                       f"The policy length must be between 1 and {MAX_POLICY_CHARS} characters.")
    try:
        doc = json.loads(policy)
    except ValueError as exc:
        raise StsError("InvalidParameter.PolicyGrammar", f"The policy is not valid JSON: {exc.msg}.")
    if not isinstance(doc, dict) or "Version" not in doc or "Statement" not in doc:
        raise StsError("InvalidParameter.PolicyGrammar", "The policy must contain Version and Statement.")


@dataclasses.dataclass
class OidcRequest:
    assume: AssumeRoleRequest
    provider_arn: str
    token: str
    claims: dict | None       # the JWT payload when it decodes to a JSON object


def jwt_claims(token: str) -> dict | None:
    """The payload segment of a JWT as a dict, or None when it is not base64(JSON object)."""
    try:
        seg = token.split(".")[1].replace("+", "-").replace("/", "_").rstrip("=")
        doc = json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
    except (ValueError, IndexError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    return doc if isinstance(doc, dict) else None


def validate_oidc(params: dict[str, str], max_duration: int) -> OidcRequest:
    """AssumeRoleWithOIDC parameters (spec 3).  Raises StsError on the first problem."""
    sent = [name for name in SIGNING_PARAMS if name in params]
    if sent:
        raise StsError("InvalidParameter",
                       f"AssumeRoleWithOIDC is anonymous and must not be signed; remove {', '.join(sent)}.")
    provider = params.get("OIDCProviderArn", "")
    if not provider:
        raise StsError("MissingParameter.OIDCProviderArn")
    if not OIDC_PROVIDER_ARN_RE.fullmatch(provider):
        raise StsError("InvalidParameter.OIDCProviderArn")
    token = params.get("OIDCToken", "")
    if not token:
        raise StsError("MissingParameter.OIDCToken")
    if not 4 <= len(token) <= OIDC_TOKEN_MAX or not JWT_RE.fullmatch(token):
        raise StsError("InvalidParameter.OIDCToken",
                       "The parameter OIDCToken is wrongly formed: expected a JWT (header.payload.signature).")
    req = validate_assume_role(params, max_duration)
    return OidcRequest(req, provider, token, jwt_claims(token))


def parse_expiration(value: str) -> float:
    """An issued ``Expiration`` (always exactly YYYY-MM-DDThh:mm:ssZ here) -> unix seconds."""
    return float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))


# ---------------------------------------------------------------------------
# Response bodies
# ---------------------------------------------------------------------------

def request_id() -> str:
    return str(uuid.uuid4()).upper()  # STS RequestIds are upper-case UUIDs


def iso_utc(ts: float) -> str:
    # Exactly YYYY-MM-DDThh:mm:ssZ: clients parse Expiration strictly (spec section 2).
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def random_alnum(n: int) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n))


def security_token() -> str:
    """A realistic opaque token: 'CAIS' + base64, > 1000 chars, containing '+', '/', '='.

    820 random bytes (820 % 3 == 1) always end in '==' padding; re-roll in the
    (astronomically unlikely) case '+' or '/' does not occur, so clients that forget
    to URL-encode the token are always caught.
    """
    while True:
        body = base64.b64encode(secrets.token_bytes(820)).decode()
        if "+" in body and "/" in body:
            return "CAIS" + body


def role_id(account_id: str, role_name: str) -> str:
    # Stable per role, like a real RAM role id (18 digits).
    digest = hashlib.sha256(f"{account_id}:{role_name.lower()}".encode()).digest()
    return str(10**17 + int.from_bytes(digest[:8], "big") % (9 * 10**17))


def success_body(req: AssumeRoleRequest, expires_at: float) -> dict:
    return {
        "RequestId": request_id(),
        "AssumedRoleUser": {
            "Arn": f"acs:ram::{req.account_id}:role/{req.role_name.lower()}/{req.session_name}",
            "AssumedRoleId": f"{role_id(req.account_id, req.role_name)}:{req.session_name}",
        },
        "Credentials": {
            "AccessKeyId": "STS.N" + random_alnum(23),
            "AccessKeySecret": random_alnum(44),
            "SecurityToken": security_token(),
            "Expiration": iso_utc(expires_at),
        },
    }


def temporary_credentials(expires_at: float) -> dict:
    """A fresh STS-style credential (what IMDS and credentials URIs hand out)."""
    return {"AccessKeyId": "STS.N" + random_alnum(23), "AccessKeySecret": random_alnum(44),
            "SecurityToken": security_token(), "Expiration": iso_utc(expires_at)}


def oidc_token_info(claims: dict | None) -> dict:
    claims = claims or {}
    aud = claims.get("aud", "")
    return {"OIDCTokenInfo": {"Subject": str(claims.get("sub", "")), "Issuer": str(claims.get("iss", "")),
                              "ClientIds": ",".join(map(str, aud)) if isinstance(aud, list) else str(aud)}}


def error_body(err: StsError) -> dict:
    return {"RequestId": request_id(), "HostId": HOST_ID, "Code": err.code, "Message": err.message,
            "Recommend": f"https://api.aliyun.com/troubleshoot?q={err.code}&product=Sts"}


# ---------------------------------------------------------------------------
# Scripted behaviours
# ---------------------------------------------------------------------------

def parse_behaviour(obj) -> dict:
    """Validate one script/mode item; raises ValueError with a readable reason."""
    if not isinstance(obj, dict):
        raise ValueError("a behaviour must be a JSON object")
    for key, value in obj.items():
        want = BEHAVIOUR_KEYS.get(key)
        if want is None:
            raise ValueError(f"unknown behaviour key {key!r} (allowed: {sorted(BEHAVIOUR_KEYS)})")
        if not isinstance(value, want) or isinstance(value, bool):
            raise ValueError(f"behaviour key {key!r} must be {want.__name__}")
    if "status" in obj and not 100 <= obj["status"] <= 599:
        raise ValueError("status must be 100..599")
    if obj.get("delay_ms", 0) < 0:
        raise ValueError("delay_ms must be >= 0")
    return dict(obj)


@dataclasses.dataclass
class Answer:
    """Everything the HTTP layer needs to reply to one STS request and record it."""
    status: int
    body: bytes
    outcome: str              # "OK", "RAW" or the error Code
    verified: bool            # signature, key, timestamp and nonce all passed
    issued_ak: str | None = None
    expiration: str | None = None
    delay_ms: int = 0
    note: str = ""            # extra diagnostic for the log line (never a secret)
    credentials: dict | None = None  # the issued Credentials object, for /_fake/issued


def json_bytes(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def error_answer(err: StsError, verified: bool, note: str = "", delay_ms: int = 0) -> Answer:
    return Answer(err.status, json_bytes(error_body(err)), err.code, verified, delay_ms=delay_ms, note=note)


def behaviour_answer(req: AssumeRoleRequest, b: dict, now: float, extra: dict | None = None) -> Answer:
    """Apply a script/mode behaviour to an AssumeRole call that passed verification.

    ``extra``: more top-level fields of a success body (AssumeRoleWithOIDC's OIDCTokenInfo).
    """
    delay = b.get("delay_ms", 0)
    if "raw" in b:
        return Answer(b.get("status", 200), b["raw"].encode(), "RAW", True, delay_ms=delay)
    status = b.get("status")
    if "error" in b or (status is not None and status >= 400):
        code = b.get("error") or CODE_FOR_STATUS.get(status, "InternalError" if status >= 500 else "InvalidParameter")
        return error_answer(StsError(code, status=status), True, delay_ms=delay)
    body = {**success_body(req, now + b.get("expires_in", req.duration)), **(extra or {})}
    creds = body["Credentials"]
    return Answer(status or 200, json_bytes(body), "OK", True, creds["AccessKeyId"], creds["Expiration"], delay,
                  credentials=creds)


# ---------------------------------------------------------------------------
# Instance metadata and credentials-URI configuration (control API)
# ---------------------------------------------------------------------------

IMDS_TOKEN_PATH = "/latest/api/token"
IMDS_CREDS_PATH = "/latest/meta-data/ram/security-credentials"
IMDS_TTL_HEADER = "x-aliyun-ecs-metadata-token-ttl-seconds"
IMDS_TOKEN_HEADER = "x-aliyun-ecs-metadata-token"
IMDS_MAX_TTL = 21600
IMDS_DEFAULTS = {"role_name": "EcsRamRoleOss", "expires_in": 21600, "require_token": True,
                 "fail": None, "token_fail": None}
URI_DEFAULTS = {"expires_in": 3600, "fail": None}
ROLE_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # fullmatch
STATUS_FAIL_RE = re.compile(r"[45]\d\d")  # fullmatch
IMDS_FAILS = {"close", "not_success", "malformed"}
URI_FAILS = {"close", "not_success", "malformed", "missing_field", "fractional"}


def apply_config(current: dict, doc, fails: set[str]) -> dict:
    """Validate a partial IMDS/URI config update; returns the merged config."""
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    new = dict(current)
    for key, value in doc.items():
        if key not in current:
            raise ValueError(f"unknown key {key!r} (allowed: {sorted(current)})")
        if key in ("fail", "token_fail"):
            allowed = fails if key == "fail" else {"close"}
            if value is not None and not (isinstance(value, str)
                                          and (value in allowed or STATUS_FAIL_RE.fullmatch(value))):
                raise ValueError(f"{key} must be null, a 4xx/5xx status as a string, or one of {sorted(allowed)}")
        elif key == "require_token":
            if not isinstance(value, bool):
                raise ValueError("require_token must be a boolean")
        elif key == "expires_in":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError("expires_in must be an integer (seconds)")
        elif key == "role_name":
            if not isinstance(value, str) or not ROLE_NAME_RE.fullmatch(value):
                raise ValueError("role_name must be 1-64 characters of A-Za-z0-9._-")
        new[key] = value
    return new


@dataclasses.dataclass
class Reply:
    """A plain HTTP answer of the metadata or credentials-URI fakes."""
    status: int               # 0 = drop the connection without answering
    body: bytes = b""
    content_type: str = "text/plain;charset=utf-8"
    log: str = ""             # the stdout line (never a secret)


def fail_reply(mode: str) -> Reply:
    if mode == "close":
        return Reply(0)
    status = int(mode)
    return Reply(status, f"{status} {'Service Unavailable' if status == 503 else 'Error'}".encode())


# ---------------------------------------------------------------------------
# The fake service: shared state + the verification pipeline
# ---------------------------------------------------------------------------

class FakeSts:
    def __init__(self, keys: dict[str, str], max_skew: int, max_duration: int):
        self.keys = keys
        self.max_skew = max_skew
        self.max_duration = max_duration
        self._lock = threading.Lock()
        self._calls: list[dict] = []
        self._seq = 0
        self._script: collections.deque[dict] = collections.deque()
        self._mode: dict = {}
        self._nonces: dict[str, float] = {}
        self._nonce_order: collections.deque[tuple[float, str]] = collections.deque()
        self._issued: collections.OrderedDict[str, dict] = collections.OrderedDict()
        # AssumeRoleWithOIDC
        self._oidc_valid: set[str] | None = None
        self._oidc_mode: dict = {}
        self._oidc_script: collections.deque[dict] = collections.deque()
        # instance metadata and credentials URI
        self._imds_cfg = dict(IMDS_DEFAULTS)
        self._imds_tokens: dict[str, float] = {}  # token -> expiry
        self._imds_calls: list[dict] = []
        self._uri_cfg = dict(URI_DEFAULTS)
        self._uri_calls: list[dict] = []
        self._aux_seq = 0  # numbers IMDS and URI calls (one sequence, so tests can order them)

    # -- control API -------------------------------------------------------
    def reset(self) -> None:
        with self._lock:  # nonces survive on purpose: a reset must not allow replays
            self._calls.clear()
            self._seq = 0
            self._script.clear()
            self._mode = {}
            self._oidc_valid, self._oidc_mode = None, {}
            self._oidc_script.clear()
            self._imds_cfg, self._uri_cfg = dict(IMDS_DEFAULTS), dict(URI_DEFAULTS)
            self._imds_calls.clear()
            self._uri_calls.clear()
            self._aux_seq = 0

    def queue_script(self, items: list[dict]) -> int:
        with self._lock:
            self._script.extend(items)
            return len(self._script)

    def set_mode(self, behaviour: dict) -> None:
        with self._lock:
            self._mode = behaviour

    def calls(self) -> list[dict]:
        with self._lock:
            return [dict(c) for c in self._calls]

    def state(self) -> dict:
        with self._lock:
            return {"pending": list(self._script), "mode": dict(self._mode), "calls": len(self._calls)}

    def set_oidc(self, doc) -> dict:
        """POST /_fake/oidc: partial update of the valid-token set, mode and script."""
        if not isinstance(doc, dict):
            raise ValueError("expected a JSON object")
        unknown = set(doc) - {"valid_tokens", "mode", "script"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} (allowed: valid_tokens, mode, script)")
        valid = doc.get("valid_tokens", ...)
        if valid is not ... and valid is not None and (
                not isinstance(valid, list) or not all(isinstance(t, str) for t in valid)):
            raise ValueError("valid_tokens must be null or a list of strings")
        mode = parse_behaviour(doc["mode"]) if "mode" in doc else None
        if "script" in doc and not isinstance(doc["script"], list):
            raise ValueError("script must be a list of behaviours")
        script = [parse_behaviour(b) for b in doc.get("script", [])]
        with self._lock:
            if valid is not ...:
                self._oidc_valid = None if valid is None else set(valid)
            if mode is not None:
                self._oidc_mode = mode
            self._oidc_script.extend(script)
        return self.oidc_state()

    def oidc_state(self) -> dict:
        with self._lock:
            valid = None if self._oidc_valid is None else sorted(self._oidc_valid)
            return {"valid_tokens": valid, "mode": dict(self._oidc_mode), "pending": list(self._oidc_script)}

    def set_imds(self, doc) -> dict:
        with self._lock:
            self._imds_cfg = apply_config(self._imds_cfg, doc, IMDS_FAILS)
            return dict(self._imds_cfg)

    def set_uri(self, doc) -> dict:
        with self._lock:
            self._uri_cfg = apply_config(self._uri_cfg, doc, URI_FAILS)
            return dict(self._uri_cfg)

    def imds_state(self) -> dict:
        with self._lock:
            return {"config": dict(self._imds_cfg), "calls": [dict(c) for c in self._imds_calls]}

    def uri_state(self) -> dict:
        with self._lock:
            return {"config": dict(self._uri_cfg), "calls": [dict(c) for c in self._uri_calls]}

    def issued(self, access_key_id: str) -> dict | None:
        """What /_fake/issued/<ak> answers: the secret half of credentials we issued."""
        with self._lock:
            found = self._issued.get(access_key_id)
            return dict(found) if found else None

    def _remember_issued(self, creds: dict, policy: str | None) -> None:
        with self._lock:
            self._issued[creds["AccessKeyId"]] = {
                "AccessKeySecret": creds["AccessKeySecret"], "SecurityToken": creds["SecurityToken"],
                "Expiration": creds["Expiration"], "Policy": policy}
            while len(self._issued) > MAX_ISSUED:
                self._issued.popitem(last=False)

    def _next_behaviour(self) -> dict:
        with self._lock:
            return self._script.popleft() if self._script else self._mode

    def _next_oidc_behaviour(self) -> dict:
        with self._lock:
            return self._oidc_script.popleft() if self._oidc_script else self._oidc_mode

    def _mint(self, expires_in: int, now: float) -> dict:
        """A fresh temporary credential, remembered as issued (usable as a caller key)."""
        creds = temporary_credentials(now + expires_in)
        self._remember_issued(creds, None)
        return creds

    def record(self, method: str, params: dict[str, str], answer: Answer, at: float) -> None:
        shown = {k: v for k, v in params.items() if k != "Signature"}
        with self._lock:
            self._seq += 1
            self._calls.append({"seq": self._seq, "method": method, "params": shown,
                                "verified": answer.verified, "outcome": answer.outcome, "time": at,
                                "access_key_id_issued": answer.issued_ak,
                                "expiration_issued": answer.expiration})

    # -- STS ---------------------------------------------------------------
    def handle(self, method: str, params: dict[str, str], now: float) -> Answer:
        """Gateway checks, then authentication, then AssumeRole rules, then behaviour."""
        verified = False
        try:
            if self._route(params) == "AssumeRoleWithOIDC":
                return self._handle_oidc(params, now)
            self._authenticate(method, params, now)
            verified = True
            req = validate_assume_role(params, self.max_duration)
        except SignatureMismatch as mismatch:
            return error_answer(mismatch.error, verified, mismatch.note)
        except StsError as err:
            return error_answer(err, verified)
        answer = behaviour_answer(req, self._next_behaviour(), now)
        if answer.credentials:
            self._remember_issued(answer.credentials, params.get("Policy"))
        return answer

    def _handle_oidc(self, params: dict[str, str], now: float) -> Answer:
        """AssumeRoleWithOIDC: anonymous; the OIDC token is the credential (spec 3)."""
        try:
            req = validate_oidc(params, self.max_duration)
            self._check_timestamp(params, now)
            claims = req.claims or {}
            exp = claims.get("exp")
            if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp <= now:
                raise StsError("AuthenticationFail.OIDCToken.Expired")
            with self._lock:
                valid = self._oidc_valid
            if valid is not None and req.token not in valid:
                raise StsError("AuthenticationFail.OIDCToken.Invalid")
        except StsError as err:
            return error_answer(err, False)
        answer = behaviour_answer(req.assume, self._next_oidc_behaviour(), now, oidc_token_info(req.claims))
        if answer.credentials:
            self._remember_issued(answer.credentials, params.get("Policy"))
        return answer

    def _check_timestamp(self, params: dict[str, str], now: float) -> None:
        if not params.get("Timestamp"):
            raise StsError("MissingTimestamp")
        if abs(now - parse_timestamp(params["Timestamp"])) > self.max_skew:
            raise StsError("InvalidTimeStamp.Expired")

    @staticmethod
    def _route(params: dict[str, str]) -> str:
        # The gateway resolves (Action, Version) before it looks at credentials.
        action = params.get("Action")
        if not action:
            raise StsError("MissingAction", "Action is mandatory for this action.")
        if action not in ACTIONS:
            raise StsError("InvalidAction.NotFound")
        version = params.get("Version")
        if not version:
            raise StsError("MissingVersion", "Version is mandatory for this action.")
        if version != STS_VERSION:
            raise StsError("InvalidVersion")
        return action

    def _authenticate(self, method: str, params: dict[str, str], now: float) -> None:
        for name in REQUIRED_COMMON:
            if not params.get(name):
                raise StsError(f"Missing{name}", f"{name} is mandatory for this action.")
        if params["SignatureMethod"] != "HMAC-SHA1":
            raise StsError("InvalidSignatureMethod")
        if params["SignatureVersion"] != "1.0":
            raise StsError("InvalidSignatureVersion")
        sent_at = parse_timestamp(params["Timestamp"])
        secret = self.keys.get(params["AccessKeyId"])
        temporary = None
        if secret is None:
            # Credentials this fake issued are caller keys too (role chaining, ECS, OIDC...).
            temporary = self.issued(params["AccessKeyId"])
            if temporary is None:
                raise StsError("InvalidAccessKeyId.NotFound")
            secret = temporary["AccessKeySecret"]
        ok, to_sign = verify_rpc_signature(method, params, secret)
        if not ok:
            # aliyun-python-sdk-core splits the Message on ':' and compares the second
            # part with its own string-to-sign, so this suffix must be exact.
            err = StsError("SignatureDoesNotMatch",
                           f"{ERRORS['SignatureDoesNotMatch'][1]} server string to sign is:{to_sign}")
            note = "client signed with '+' for space, not %20" \
                if signed_with_form_encoding(method, params, secret) else ""
            raise SignatureMismatch(err, note)
        self._check_security_token(params.get("SecurityToken"), temporary, now)
        # Skew is checked after the signature so an unauthenticated caller learns nothing,
        # and before the nonce so that nonces outside the window never need remembering.
        if abs(now - sent_at) > self.max_skew:
            raise StsError("InvalidTimeStamp.Expired")
        self._use_nonce(params["SignatureNonce"], now)

    @staticmethod
    def _check_security_token(token: str | None, temporary: dict | None, now: float) -> None:
        """A temporary caller key needs its own token and must not have expired."""
        if temporary is None:
            if token:
                raise StsError("InvalidSecurityToken.MismatchWithAccessKey",
                               "A SecurityToken was sent with a long-term AccessKey.")
            return
        if not token:
            raise StsError("MissingSecurityToken")
        if not token.startswith("CAIS"):
            raise StsError("InvalidSecurityToken.Malformed")
        if not hmac.compare_digest(token, temporary["SecurityToken"]):
            raise StsError("InvalidSecurityToken.MismatchWithAccessKey")
        if now >= parse_expiration(temporary["Expiration"]):
            raise StsError("InvalidSecurityToken.Expired")

    # -- instance metadata (spec 4) ----------------------------------------
    def imds(self, method: str, path: str, headers: dict[str, str], now: float) -> Reply:
        """One IMDS request; ``headers`` keys lower-case.  Recorded for /_fake/imds."""
        with self._lock:
            cfg = dict(self._imds_cfg)
        if path == IMDS_TOKEN_PATH:
            kind = "token"
        elif path.rstrip("/") == IMDS_CREDS_PATH:
            kind = "role"
        elif path.startswith(IMDS_CREDS_PATH + "/"):
            kind = "credentials"
        else:
            kind = "other"
        ttl = headers.get(IMDS_TTL_HEADER)
        token_state = "none"
        if IMDS_TOKEN_HEADER in headers:
            with self._lock:
                expiry = self._imds_tokens.get(headers[IMDS_TOKEN_HEADER])
            token_state = "valid" if expiry is not None and now < expiry else "invalid"
        creds = None
        if cfg["fail"] and cfg["fail"] not in ("not_success", "malformed"):
            reply = fail_reply(cfg["fail"])
        elif kind == "token":
            reply = self._imds_token(method, ttl, cfg, now)
        elif method != "GET":
            reply = Reply(405, b"405 Method Not Allowed")
        elif token_state == "invalid" or (token_state == "none" and cfg["require_token"]):
            reply = Reply(401, b"401 Unauthorized")
        elif kind == "role":
            reply = Reply(200, cfg["role_name"].encode())
        elif kind == "credentials" and path[len(IMDS_CREDS_PATH) + 1:] == cfg["role_name"]:
            reply, creds = self._imds_credentials(cfg, now)
        else:
            reply = Reply(404, b"404 Not Found")
        with self._lock:
            self._aux_seq += 1
            self._imds_calls.append({
                "seq": self._aux_seq, "method": method, "path": path, "kind": kind, "token": token_state,
                "ttl": ttl, "status": reply.status, "time": now,
                "access_key_id_issued": creds and creds["AccessKeyId"],
                "expiration_issued": creds and creds["Expiration"]})
        reply.log = (f"IMDS {method} {path} token={token_state} -> {reply.status or 'dropped'}"
                     + (f" ak={creds['AccessKeyId']} exp={creds['Expiration']}" if creds else ""))
        return reply

    def _imds_token(self, method: str, ttl: str | None, cfg: dict, now: float) -> Reply:
        if method != "PUT":
            return Reply(405, b"405 Method Not Allowed")
        if cfg["token_fail"]:
            return fail_reply(cfg["token_fail"])
        if ttl is None or not ttl.isascii() or not ttl.isdigit() or not 1 <= int(ttl) <= IMDS_MAX_TTL:
            return Reply(400, b"400 Bad Request: X-aliyun-ecs-metadata-token-ttl-seconds must be 1..21600")
        token = "imds-" + secrets.token_urlsafe(24)
        with self._lock:
            for old in [t for t, exp in self._imds_tokens.items() if exp <= now]:
                del self._imds_tokens[old]
            self._imds_tokens[token] = now + int(ttl)
        return Reply(200, token.encode())

    def _imds_credentials(self, cfg: dict, now: float) -> tuple[Reply, dict | None]:
        if cfg["fail"] == "malformed":
            return Reply(200, b"<html><body>metadata service error</body></html>"), None
        creds = self._mint(cfg["expires_in"], now)
        doc = {"AccessKeyId": creds["AccessKeyId"], "AccessKeySecret": creds["AccessKeySecret"],
               "Expiration": creds["Expiration"], "SecurityToken": creds["SecurityToken"],
               "LastUpdated": iso_utc(now), "Code": "Failed" if cfg["fail"] == "not_success" else "Success"}
        return Reply(200, json_bytes(doc)), creds

    # -- credentials URI (spec 6) ------------------------------------------
    def creds_uri(self, method: str, path: str, query: str, headers: dict[str, str], now: float) -> Reply:
        """One credentials-URI request (``GET /creds``).  Recorded for /_fake/uri."""
        with self._lock:
            cfg = dict(self._uri_cfg)
        fail, creds = cfg["fail"], None
        if fail == "close" or (fail and STATUS_FAIL_RE.fullmatch(fail)):
            reply = fail_reply(fail)
        elif method != "GET":
            reply = Reply(405, json_bytes({"Code": "MethodNotAllowed"}), "application/json")
        elif fail == "malformed":
            reply = Reply(200, b'{"Code": "Success", "AccessKeyId": ', "application/json")
        else:
            creds = self._mint(cfg["expires_in"], now)
            doc = {"Code": "Failed" if fail == "not_success" else "Success", **creds,
                   "LastUpdated": iso_utc(now)}
            if fail == "missing_field":
                del doc["SecurityToken"]
            if fail == "fractional":
                doc["Expiration"] = creds["Expiration"][:-1] + ".000Z"
            reply = Reply(200, json_bytes(doc), "application/json")
        with self._lock:
            self._aux_seq += 1
            self._uri_calls.append({
                "seq": self._aux_seq, "method": method, "path": path, "query": query,
                "authorization": "authorization" in headers, "status": reply.status, "time": now,
                "access_key_id_issued": creds and creds["AccessKeyId"],
                "expiration_issued": creds and creds["Expiration"]})
        reply.log = (f"URI {method} {path} -> {reply.status or 'dropped'}"
                     + (f" ak={creds['AccessKeyId']} exp={creds['Expiration']}" if creds else ""))
        return reply

    def _use_nonce(self, nonce: str, now: float) -> None:
        # A request stamped T is accepted while now is in [T-skew, T+skew], so a nonce
        # must be remembered for 2*skew after first use to make replays impossible.
        with self._lock:
            horizon = now - 2 * self.max_skew
            while self._nonce_order and self._nonce_order[0][0] < horizon:
                self._nonces.pop(self._nonce_order.popleft()[1], None)
            if nonce in self._nonces:
                raise StsError("SignatureNonceUsed")
            self._nonces[nonce] = now
            self._nonce_order.append((now, nonce))


class SignatureMismatch(Exception):
    """Carries the SignatureDoesNotMatch error plus a log-only diagnostic."""

    def __init__(self, error: StsError, note: str):
        super().__init__(error.code)
        self.error, self.note = error, note


# ---------------------------------------------------------------------------
# Logging that can never stall the server
# ---------------------------------------------------------------------------

class StdoutLog:
    """Writes log lines from a background thread through a bounded queue.

    A test harness often reads only the first line and then ignores the pipe; once
    the 64 KiB pipe buffer fills, a direct print() would block every handler thread.
    Here a full queue just drops lines, and a closed pipe just stops logging.
    """

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

class BadRequest(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries Content-Length
    server_version = "fake-sts/1.0"
    sys_version = ""
    timeout = 120                  # idle keep-alive connections release their thread

    fake: FakeSts                  # set by make_server()
    log: StdoutLog

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):  # only the IMDS token endpoint takes PUT
        self._dispatch()

    def _dispatch(self) -> None:
        arrived = time.time()
        url = urlsplit(self.path)
        try:
            body = self._read_body()
        except BadRequest as exc:
            self.close_connection = True  # the stream position is unknown now
            return self._send(400, json_bytes({"error": str(exc)}))
        if url.path.startswith("/_fake/"):
            return self._control(url.path, body)
        headers = {k.lower(): v for k, v in self.headers.items()}
        if url.path.startswith("/latest/"):
            return self._plain(self.fake.imds(self.command, url.path, headers, arrived))
        if url.path == "/creds":
            return self._plain(self.fake.creds_uri(self.command, url.path, url.query, headers, arrived))
        if self.command not in ("GET", "POST"):
            self.log(f"{self.command} {url.path} -> 405")
            return self._send(405, json_bytes(error_body(StsError("InvalidAction.NotFound", status=405))))
        if url.path != "/":
            self.log(f"{self.command} {url.path} -> 404 (STS lives at /)")
            return self._send(404, json_bytes(error_body(StsError("InvalidAction.NotFound"))))
        self._sts(url.query, body, arrived)

    def _sts(self, query: str, body: bytes, arrived: float) -> None:
        try:
            params = decode_params(query, body, self.headers.get("Content-Type"))
        except StsError as err:
            params, answer = {}, error_answer(err, False)
        else:
            answer = self.fake.handle(self.command, params, arrived)
        # Record before any scripted delay so a test whose client times out still sees the call.
        self.fake.record(self.command, params, answer, arrived)
        self.log(log_line(self.command, params, answer))
        if answer.delay_ms:
            time.sleep(answer.delay_ms / 1000)
        self._send(answer.status, answer.body, {"x-acs-request-id": request_id()})

    def _plain(self, reply: Reply) -> None:
        self.log(reply.log)
        if reply.status == 0:
            # A connection-level failure: reset (SO_LINGER 0) instead of answering.
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            return
        self._send(reply.status, reply.body, content_type=reply.content_type)

    def _control(self, path: str, body: bytes) -> None:
        route = (self.command, path)
        try:
            if route == ("GET", "/_fake/calls"):
                return self._send(200, json_bytes({"calls": self.fake.calls()}))
            if route == ("GET", "/_fake/state"):
                return self._send(200, json_bytes(self.fake.state()))
            if self.command == "GET" and path.startswith("/_fake/issued/"):
                ak = unquote(path[len("/_fake/issued/"):])
                found = self.fake.issued(ak)
                if found is None:
                    return self._send(404, json_bytes({"error": f"no credentials issued for {ak}"}))
                return self._send(200, json_bytes(found))
            if route == ("POST", "/_fake/reset"):
                self.fake.reset()
                self.log("control: reset")
                return self._send(200, json_bytes({"ok": True}))
            if route == ("POST", "/_fake/script"):
                doc = load_json(body)
                if not isinstance(doc, dict) or not isinstance(doc.get("responses"), list):
                    raise ValueError('expected {"responses": [ ... ]}')
                items = [parse_behaviour(item) for item in doc["responses"]]
                pending = self.fake.queue_script(items)
                self.log(f"control: script +{len(items)} (pending {pending})")
                return self._send(200, json_bytes({"ok": True, "queued": len(items), "pending": pending}))
            if route == ("GET", "/_fake/imds"):
                return self._send(200, json_bytes(self.fake.imds_state()))
            if route == ("GET", "/_fake/uri"):
                return self._send(200, json_bytes(self.fake.uri_state()))
            if route == ("GET", "/_fake/oidc"):
                return self._send(200, json_bytes(self.fake.oidc_state()))
            if route == ("POST", "/_fake/imds"):
                cfg = self.fake.set_imds(load_json(body))
                self.log(f"control: imds {json.dumps(cfg)}")
                return self._send(200, json_bytes({"ok": True, "config": cfg}))
            if route == ("POST", "/_fake/uri"):
                cfg = self.fake.set_uri(load_json(body))
                self.log(f"control: uri {json.dumps(cfg)}")
                return self._send(200, json_bytes({"ok": True, "config": cfg}))
            if route == ("POST", "/_fake/oidc"):
                state = self.fake.set_oidc(load_json(body))
                valid = state["valid_tokens"]
                self.log(f"control: oidc valid_tokens={'any' if valid is None else len(valid)} "
                         f"mode {json.dumps(state['mode'])} pending {len(state['pending'])}")
                return self._send(200, json_bytes({"ok": True, **state}))
            if route == ("POST", "/_fake/mode"):
                mode = parse_behaviour(load_json(body) if body.strip() else {})
                self.fake.set_mode(mode)
                self.log(f"control: mode {json.dumps(mode)}")
                return self._send(200, json_bytes({"ok": True, "mode": mode}))
        except ValueError as exc:
            return self._send(400, json_bytes({"error": str(exc)}))
        self._send(404, json_bytes({"error": f"no control endpoint {self.command} {path}"}))

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise BadRequest("bad Content-Length")
        if not 0 <= length <= MAX_BODY_BYTES:
            raise BadRequest("body too large")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks, total = [], 0
        while True:
            try:
                size = int(self.rfile.readline(1024).split(b";")[0].strip(), 16)
            except ValueError:
                raise BadRequest("bad chunk size")
            total += size
            if total > MAX_BODY_BYTES:
                raise BadRequest("body too large")
            if size == 0:
                while self.rfile.readline(8192).strip():  # skip trailers
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(8)  # CRLF after each chunk

    def _send(self, status: int, body: bytes, headers: dict | None = None,
              content_type: str = "application/json;charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # silence http.server's per-request stderr lines
        pass


def load_json(body: bytes):
    try:
        return json.loads(body or b"{}")
    except ValueError as exc:
        raise ValueError(f"invalid JSON body: {exc}")


def log_line(method: str, params: dict[str, str], a: Answer) -> str:
    # Deliberately no Signature, secrets or tokens; the issued AccessKeyId is not secret.
    line = (f"{method} {params.get('Action', '-')} session={params.get('RoleSessionName', '-')} "
            f"duration={params.get('DurationSeconds', '-')} policy={'yes' if 'Policy' in params else 'no'} "
            f"-> {a.outcome}")
    if a.status != 200 or a.outcome != "OK":
        line += f" ({a.status})"
    if a.issued_ak:
        line += f" ak={a.issued_ak} exp={a.expiration}"
    if a.delay_ms:
        line += f" delay={a.delay_ms}ms"
    if a.note:
        line += f" note: {a.note}"
    return line


class Server(ThreadingHTTPServer):
    request_queue_size = 1024  # listen backlog: survive bursts of 500+ simultaneous connects
    daemon_threads = True      # handler threads never keep the process alive
    block_on_close = False     # and are not tracked, so no per-connection bookkeeping grows

    def handle_error(self, request, client_address):
        # A client hanging up mid-reply is normal in tests; anything else is worth a line.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            Handler.log(f"handler error from {client_address[0]}: {type(exc).__name__}: {exc}")


def make_server(fake: FakeSts, port: int, log: StdoutLog) -> Server:
    Handler.fake = fake
    Handler.log = staticmethod(log)
    return Server((BIND_HOST, port), Handler)


# ---------------------------------------------------------------------------
# --selftest: prove the verifier against the official-SDK vectors
# ---------------------------------------------------------------------------

def selftest(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        vectors = json.load(f)["vectors"]
    checks: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        checks.append((name, ok, detail))

    for v in vectors:
        vid, inp, exp = v["id"], v["input"], v["expected"]
        params, secret, method = inp["params"], inp["access_key_secret"], inp["http_method"]
        got_cq = canonicalized_query(params)
        check(f"{vid}: canonicalized query", got_cq == exp["canonicalized_query_string"],
              f"got {got_cq}")
        got_sts = string_to_sign(method, params)
        check(f"{vid}: {method} string to sign", got_sts == exp["string_to_sign"], f"got {got_sts}")
        ok, _ = verify_rpc_signature(method, {**params, "Signature": exp["signature"]}, secret)
        check(f"{vid}: {method} signature verifies", ok, f"computed {rpc_signature(secret, got_sts)}")
        if exp.get("get_variant"):
            gv = exp["get_variant"]
            got_sts = string_to_sign("GET", params)
            check(f"{vid}: GET string to sign", got_sts == gv["string_to_sign"], f"got {got_sts}")
            ok, _ = verify_rpc_signature("GET", {**params, "Signature": gv["signature"]}, secret)
            check(f"{vid}: GET signature verifies", ok, f"computed {rpc_signature(secret, got_sts)}")
        # Same bytes the SDK put on the wire, decoded by the server's own decoder,
        # in each transport layout the spec allows.
        wire = exp.get("wire_query_as_sent_by_sdk")
        if wire:
            for layout, (q, b) in wire_layouts(wire).items():
                decoded = decode_params(q, b, "application/x-www-form-urlencoded")
                ok, _ = verify_rpc_signature(method, decoded, secret)
                same = {k: x for k, x in decoded.items() if k != "Signature"} == params
                check(f"{vid}: wire {layout} decodes and verifies", ok and same,
                      "decoded params differ" if not same else "signature mismatch")
        ok, _ = verify_rpc_signature(method, {**params, "Signature": exp["signature"]}, secret + "x")
        check(f"{vid}: wrong secret rejected", not ok)
        notes = v.get("notes", {})
        if notes.get("alibabacloud_credentials_python_agrees") is False:
            alt = {**params, "Signature": notes["alibabacloud_credentials_python_signature"]}
            # The vectors computed that SDK's signature with the vector's own method.
            check(f"{vid}: '+'-for-space signature diagnosed",
                  not verify_rpc_signature(method, alt, secret)[0] and signed_with_form_encoding(method, alt, secret))

    selftest_pipeline(check)
    selftest_identity_sources(check, os.path.dirname(os.path.abspath(path)))
    failed = [(n, d) for n, ok, d in checks if not ok]
    for name, detail in failed:
        print(f"MISMATCH {name}: {detail}")
    if failed:
        print(f"selftest: {len(failed)} of {len(checks)} failed")
        return 1
    print(f"selftest: {len(checks)} ok")
    return 0


def wire_layouts(wire: str) -> dict[str, tuple[str, bytes]]:
    """The wire query as all-in-query, all-in-body, and common-in-query/action-in-body."""
    pairs = wire.split("&")
    action = [p for p in pairs if p.split("=")[0] in ("RoleArn", "RoleSessionName", "DurationSeconds", "Policy")]
    common = [p for p in pairs if p not in action]
    return {"query": (wire, b""), "body": ("", wire.encode()),
            "split": ("&".join(common), "&".join(action).encode())}


def selftest_pipeline(check) -> None:
    """Drive FakeSts.handle in-process with freshly signed requests (no sockets)."""
    ak, secret = DEFAULT_KEY.split(":", 1)
    fake = FakeSts({ak: secret}, max_skew=900, max_duration=3600)
    now = time.time()

    def call(method="POST", secret_=secret, **over):
        p = {"Action": "AssumeRole", "Version": STS_VERSION, "Format": "JSON", "AccessKeyId": ak,
             "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0", "SignatureNonce": uuid.uuid4().hex,
             "Timestamp": iso_utc(now), "RoleArn": "acs:ram::1234567890123456:role/oss-uploader",
             "RoleSessionName": "selftest", **over}
        p = {k: x for k, x in p.items() if x is not None}
        return p, fake.handle(method, sign_params(method, p, secret_), now)

    p, a = call()
    creds = json.loads(a.body).get("Credentials", {}) if a.outcome == "OK" else {}
    tok = creds.get("SecurityToken", "")
    check("pipeline: valid request OK with realistic token",
          a.outcome == "OK" and tok.startswith("CAIS") and len(tok) > 1000 and all(c in tok for c in "+/=")
          and creds.get("AccessKeyId", "").startswith("STS.") and creds.get("Expiration") == iso_utc(now + 3600),
          a.outcome)
    check("pipeline: issued credentials recorded for /_fake/issued",
          fake.issued(creds.get("AccessKeyId", "")) == {
              "AccessKeySecret": creds.get("AccessKeySecret"), "SecurityToken": tok,
              "Expiration": creds.get("Expiration"), "Policy": None}
          and fake.issued("STS.neverIssued") is None)
    replay = fake.handle("POST", sign_params("POST", p, secret), now)
    check("pipeline: replayed nonce rejected", replay.outcome == "SignatureNonceUsed", replay.outcome)
    cases = [
        ({"secret_": secret + "x"}, "SignatureDoesNotMatch"),
        ({"method": "GET", "Timestamp": iso_utc(now)[:-1] + ".000Z"}, "OK"),
        ({"Timestamp": iso_utc(now - 901)}, "InvalidTimeStamp.Expired"),
        ({"Timestamp": "2024-03-01 08:00:00"}, "InvalidTimeStamp.Format"),
        ({"AccessKeyId": "LTAIunknown"}, "InvalidAccessKeyId.NotFound"),
        ({"RoleArn": None}, "MissingParameter.RoleArn"),
        ({"RoleArn": "acs:ram::12ab:role/x"}, "InvalidParameter.RoleArn"),
        ({"RoleArn": "acs:ram::123:role/missing-role"}, "EntityNotExist.Role"),
        ({"RoleSessionName": "a"}, "InvalidParameter.RoleSessionName"),
        ({"DurationSeconds": "899"}, "InvalidParameter.DurationSeconds"),
        ({"DurationSeconds": "3601"}, "InvalidParameter.DurationSeconds"),
        ({"Policy": '{"Version":"1"}'}, "InvalidParameter.PolicyGrammar"),
        ({"Policy": '{"Version":"1","Statement":[]}'}, "OK"),
    ]
    for over, want in cases:
        _, a = call(**over)
        check(f"pipeline: {over} -> {want}", a.outcome == want, f"got {a.outcome}")
    policy = '{"Version":"1","Statement":[{"Effect":"Allow","Action":"oss:PutObject","Resource":"*"}]}'
    _, a = call(Policy=policy)
    issued = fake.issued(a.issued_ak or "") or {}
    check("pipeline: issued credentials keep the Policy parameter", issued.get("Policy") == policy)


def jwt(claims: dict) -> str:
    """An unsigned-looking test JWT (header.payload.signature, base64url, no padding)."""
    def seg(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{seg({'alg': 'RS256', 'kid': 'test'})}.{seg(claims)}.c2lnbmF0dXJl"


def selftest_identity_sources(check, vectors_dir: str) -> None:
    """AssumeRoleWithOIDC, temporary caller keys, IMDS and the credentials URI, in-process."""
    ak, secret = DEFAULT_KEY.split(":", 1)
    fake = FakeSts({ak: secret}, max_skew=900, max_duration=3600)
    now = time.time()
    arn = "acs:ram::1234567890123456:role/oss-uploader"

    def assume(key: str, key_secret: str, **over):
        p = {"Action": "AssumeRole", "Version": STS_VERSION, "Format": "JSON", "AccessKeyId": key,
             "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0", "SignatureNonce": uuid.uuid4().hex,
             "Timestamp": iso_utc(now), "RoleArn": arn, "RoleSessionName": "chain", **over}
        return fake.handle("POST", sign_params("POST", {k: x for k, x in p.items() if x is not None},
                                               key_secret), now)

    def oidc(method="POST", **over):
        p = {"Action": "AssumeRoleWithOIDC", "Version": STS_VERSION, "Format": "JSON",
             "Timestamp": iso_utc(now), "RoleArn": "acs:ram::1234567890123456:role/ack-pod-role",
             "OIDCProviderArn": "acs:ram::1234567890123456:oidc-provider/ack-rrsa-c0ffee",
             "OIDCToken": jwt({"iss": "https://oidc.example", "sub": "system:serviceaccount:ns:sa",
                               "aud": "sts.aliyuncs.com", "exp": int(now) + 3600}),
             "RoleSessionName": "pod-session", **over}
        return fake.handle(method, {k: x for k, x in p.items() if x is not None}, now)

    # Temporary caller keys: issued by AssumeRole, then used to chain.
    first = json.loads(assume(ak, secret).body)["Credentials"]
    tak, tsk, ttok = first["AccessKeyId"], first["AccessKeySecret"], first["SecurityToken"]
    for over, want in [({"SecurityToken": ttok}, "OK"), ({}, "MissingSecurityToken"),
                       ({"SecurityToken": "CAISother=="}, "InvalidSecurityToken.MismatchWithAccessKey"),
                       ({"SecurityToken": "garbage"}, "InvalidSecurityToken.Malformed")]:
        a = assume(tak, tsk, **over)
        check(f"identity: issued key as caller {sorted(over)} -> {want}", a.outcome == want, a.outcome)
    a = assume(ak, secret, SecurityToken=ttok)
    check("identity: token with a long-term key refused",
          a.outcome == "InvalidSecurityToken.MismatchWithAccessKey", a.outcome)
    a = assume(tak, tsk + "x", SecurityToken=ttok)
    check("identity: issued key with a wrong secret refused", a.outcome == "SignatureDoesNotMatch", a.outcome)
    dead = fake._mint(-1, now)
    a = assume(dead["AccessKeyId"], dead["AccessKeySecret"], SecurityToken=dead["SecurityToken"])
    check("identity: expired issued key refused", a.outcome == "InvalidSecurityToken.Expired", a.outcome)

    # AssumeRoleWithOIDC.
    a = oidc()
    body = json.loads(a.body)
    creds = body.get("Credentials", {})
    check("oidc: anonymous request OK", a.outcome == "OK" and creds.get("AccessKeyId", "").startswith("STS.")
          and body.get("OIDCTokenInfo", {}).get("Subject") == "system:serviceaccount:ns:sa", a.outcome)
    a = assume(creds.get("AccessKeyId", ""), creds.get("AccessKeySecret", ""),
               SecurityToken=creds.get("SecurityToken"))
    check("oidc: its credentials are caller keys", a.outcome == "OK", a.outcome)
    expired = jwt({"exp": int(now) - 10})
    cases = [
        ({"AccessKeyId": ak}, "InvalidParameter"),
        ({"Signature": "abc="}, "InvalidParameter"),
        ({"OIDCProviderArn": None}, "MissingParameter.OIDCProviderArn"),
        ({"OIDCProviderArn": "acs:ram::123:role/x"}, "InvalidParameter.OIDCProviderArn"),
        ({"OIDCToken": None}, "MissingParameter.OIDCToken"),
        ({"OIDCToken": "not-a-jwt"}, "InvalidParameter.OIDCToken"),
        ({"OIDCToken": jwt({}) + "\n"}, "InvalidParameter.OIDCToken"),
        ({"OIDCToken": base64.b64encode(jwt({}).encode()).decode()}, "InvalidParameter.OIDCToken"),
        ({"OIDCToken": expired}, "AuthenticationFail.OIDCToken.Expired"),
        ({"RoleArn": None}, "MissingParameter.RoleArn"),
        ({"RoleSessionName": "x"}, "InvalidParameter.RoleSessionName"),
        ({"DurationSeconds": "899"}, "InvalidParameter.DurationSeconds"),
        ({"Timestamp": None}, "MissingTimestamp"),
        ({"Timestamp": iso_utc(now - 901)}, "InvalidTimeStamp.Expired"),
        ({"method": "GET", "Policy": '{"Version":"1","Statement":[]}'}, "OK"),
    ]
    for over, want in cases:
        a = oidc(**over)
        check(f"oidc: {str(over)[:60]} -> {want}", a.outcome == want, f"got {a.outcome}")
    good = jwt({"sub": "a"})
    fake.set_oidc({"valid_tokens": [good], "mode": {"expires_in": 60}})
    a, b = oidc(OIDCToken=good), oidc(OIDCToken=jwt({"sub": "b"}))
    check("oidc: scripted valid tokens",
          a.outcome == "OK" and a.expiration == iso_utc(now + 60) and b.outcome == "AuthenticationFail.OIDCToken.Invalid",
          f"{a.outcome} {a.expiration} {b.outcome}")
    fake.set_oidc({"valid_tokens": None, "mode": {}, "script": [{"error": "ServiceUnavailable"}]})
    a, b = oidc(), oidc()
    check("oidc: own script", a.outcome == "ServiceUnavailable" and b.outcome == "OK", f"{a.outcome} {b.outcome}")
    # The SDK-captured requests (timestamps moved to now) are accepted as sent.
    for name, pick in (("sts_oidc_request.json", lambda v: (v["expected"]["http_method"], v["expected"]["query"])),
                       ("cred_sts_via_credentials_sdk.json",
                        lambda v: (v["expected"]["request"]["method"], v["expected"]["request"]["query"]))):
        vpath = os.path.join(vectors_dir, name)
        if not os.path.exists(vpath):
            continue
        with open(vpath, encoding="utf-8") as f:
            for v in json.load(f)["vectors"]:
                method, query = pick(v)
                if query.get("Action") != "AssumeRoleWithOIDC":
                    continue
                a = fake.handle(method, {**query, "Timestamp": iso_utc(now)}, now)
                check(f"oidc: vector {v['id']} accepted", a.outcome == "OK", a.outcome)

    # Instance metadata, hardened mode.
    h = {IMDS_TTL_HEADER: "21600"}
    r = fake.imds("PUT", IMDS_TOKEN_PATH, {}, now)
    check("imds: token PUT without ttl header -> 400", r.status == 400, str(r.status))
    tok = fake.imds("PUT", IMDS_TOKEN_PATH, h, now).body.decode()
    th = {IMDS_TOKEN_HEADER: tok}
    r1 = fake.imds("GET", IMDS_CREDS_PATH + "/", {}, now)
    r2 = fake.imds("GET", IMDS_CREDS_PATH + "/", {IMDS_TOKEN_HEADER: "forged"}, now)
    r3 = fake.imds("GET", IMDS_CREDS_PATH + "/", th, now)
    check("imds: role listing needs a valid token",
          (r1.status, r2.status, r3.status, r3.body) == (401, 401, 200, b"EcsRamRoleOss"), f"{r1.status} {r2.status} {r3.status}")
    r = fake.imds("GET", IMDS_CREDS_PATH + "/EcsRamRoleOss", th, now)
    doc = json.loads(r.body) if r.status == 200 else {}
    check("imds: credentials doc", doc.get("Code") == "Success" and doc.get("Expiration") == iso_utc(now + 21600)
          and doc.get("LastUpdated") == iso_utc(now), r.body[:80])
    a = assume(doc.get("AccessKeyId", ""), doc.get("AccessKeySecret", ""), SecurityToken=doc.get("SecurityToken"))
    check("imds: its credentials are caller keys", a.outcome == "OK", a.outcome)
    check("imds: unknown role -> 404", fake.imds("GET", IMDS_CREDS_PATH + "/Other", th, now).status == 404)
    check("imds: token expires", fake.imds("GET", IMDS_CREDS_PATH + "/", th, now + 21601).status == 401)
    fake.set_imds({"require_token": False, "expires_in": 120})
    r = fake.imds("GET", IMDS_CREDS_PATH + "/EcsRamRoleOss", {}, now)
    check("imds: v1 mode", r.status == 200 and json.loads(r.body)["Expiration"] == iso_utc(now + 120))
    for fail, want in (("503", 503), ("close", 0)):
        fake.set_imds({"fail": fail})
        check(f"imds: fail {fail}", fake.imds("GET", IMDS_CREDS_PATH + "/", {}, now).status == want)
    fake.set_imds({"fail": "not_success"})
    r = fake.imds("GET", IMDS_CREDS_PATH + "/EcsRamRoleOss", {}, now)
    check("imds: not_success", json.loads(r.body)["Code"] == "Failed")
    fake.set_imds({"fail": None, "token_fail": "404"})
    check("imds: token_fail", fake.imds("PUT", IMDS_TOKEN_PATH, h, now).status == 404)
    kinds = [c["kind"] for c in fake.imds_state()["calls"]]
    check("imds: calls recorded", kinds[:4] == ["token", "token", "role", "role"] and len(kinds) == 13, str(kinds))
    try:
        fake.set_imds({"fail": "sometimes"})
        check("imds: bad control value refused", False)
    except ValueError:
        check("imds: bad control value refused", True)

    # Credentials URI.
    r = fake.creds_uri("GET", "/creds", "role=uploader", {}, now)
    doc = json.loads(r.body)
    check("uri: Success doc", r.status == 200 and doc["Code"] == "Success"
          and doc["Expiration"] == iso_utc(now + 3600) and doc["AccessKeyId"].startswith("STS."))
    a = assume(doc["AccessKeyId"], doc["AccessKeySecret"], SecurityToken=doc["SecurityToken"])
    check("uri: its credentials are caller keys", a.outcome == "OK", a.outcome)
    for fail, ok in (("503", lambda r: r.status == 503), ("close", lambda r: r.status == 0),
                     ("malformed", lambda r: r.status == 200 and not _is_json(r.body)),
                     ("not_success", lambda r: json.loads(r.body)["Code"] == "Failed"),
                     ("missing_field", lambda r: "SecurityToken" not in json.loads(r.body)),
                     ("fractional", lambda r: json.loads(r.body)["Expiration"].endswith(".000Z"))):
        fake.set_uri({"fail": fail})
        check(f"uri: fail {fail}", ok(fake.creds_uri("GET", "/creds", "", {}, now)))
    calls = fake.uri_state()["calls"]
    check("uri: calls recorded with the query", len(calls) == 7 and calls[0]["query"] == "role=uploader")
    fake.reset()
    check("reset: IMDS/URI/OIDC state restored",
          fake.imds_state() == {"config": IMDS_DEFAULTS, "calls": []}
          and fake.uri_state() == {"config": URI_DEFAULTS, "calls": []}
          and fake.oidc_state() == {"valid_tokens": None, "mode": {}, "pending": []})


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

def parse_key(text: str) -> tuple[str, str]:
    ak, sep, secret = text.partition(":")
    if not sep or not ak or not secret:
        raise argparse.ArgumentTypeError("expected AK:SECRET")
    return ak, secret


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Loopback fake Alibaba Cloud STS (AssumeRole) for tests.")
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = ephemeral)")
    ap.add_argument("--key", type=parse_key, action="append", metavar="AK:SECRET",
                    help=f"accepted caller key, repeatable (default {DEFAULT_KEY})")
    ap.add_argument("--max-skew-seconds", type=int, default=900)
    ap.add_argument("--max-session-duration", type=int, default=3600)
    ap.add_argument("--selftest", metavar="VECTORS_JSON",
                    help="verify the signing code against a vectors file and exit")
    args = ap.parse_args(argv)

    if args.selftest:
        return selftest(args.selftest)
    if args.max_skew_seconds <= 0 or args.max_session_duration < MIN_DURATION:
        ap.error(f"--max-skew-seconds must be > 0 and --max-session-duration >= {MIN_DURATION}")

    keys = dict(args.key or [parse_key(DEFAULT_KEY)])
    fake = FakeSts(keys, args.max_skew_seconds, args.max_session_duration)
    log = StdoutLog()
    server = make_server(fake, args.port, log)
    # Printed synchronously, before serving: harnesses wait for exactly this line.
    print(f"listening on {BIND_HOST}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
