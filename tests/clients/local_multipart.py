#!/usr/bin/env python3
"""Multipart uploads by the official Python SDKs against `ossvend local`'s sink (issue 17).
Run by tests/it/upload_sessions.rs.

usage: local_multipart.py oss2   --creds-url URL
       local_multipart.py oss-v2 --creds-url URL

Both fetch one credential from ossvend (`GET /v1/grants/<g>/credentials`) and use the
sink it names, under the prefix it names:

* oss2, V1 then V4: InitiateMultipartUpload with `x-oss-forbid-overwrite: true`,
  UploadPart x3 with Content-MD5 (one wrong first), ListParts one part per page,
  CompleteMultipartUpload refused for a wrong ETag (oss2 sorts the list itself), then done with
  `x-oss-forbid-overwrite: true`; a second upload to the same key: Initiate with the
  header refused, parts under 100 KiB refused at Complete (EntityTooSmall), a
  forbid-overwrite Complete refused (FileAlreadyExists), Abort, Abort again (NoSuchUpload).
* oss-v2: Initiate, then every part through a presigned UploadPart URL (V4, the
  SDK's `presign`, Content-MD5 bound) sent by plain HTTP; a URL with its part number
  changed and a body that is not the bound MD5's are refused; ListParts through the
  SDK's paginator (one part per page); Complete refused for parts in the wrong order, then done.

Bodies: byte i of a body with seed s = (i * 31 + s * 7 + (i >> 8)) % 256.
One line per step: `RESULT <label> <key> <status> <Code|OK>`, plus
`LISTED <label> pages=<n> parts=<number:size,...>`. The script reports and never
judges: exit 0 when every step ran, 2 on a usage error or no credential.
"""

import argparse
import base64
import hashlib
import http.client
import json
import re
import sys
import urllib.parse
import urllib.request

import alibabacloud_oss_v2 as oss
import oss2

PART = 100 * 1024  # OSS: every part but the last must be at least 100 KiB
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def pattern(seed: int, size: int) -> bytes:
    return bytes((i * 31 + seed * 7 + (i >> 8)) % 256 for i in range(size))


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def chunks(body: bytes) -> list:
    return [body[i:i + PART] for i in range(0, len(body), PART)]


def outcome(fn) -> str:
    """'<status> OK' on success, else '<status> <Code>' of the service error."""
    try:
        result = fn()
    except oss2.exceptions.OssError as exc:
        return f"{exc.status} {exc.code}"
    except oss.exceptions.OperationError as exc:
        inner = exc.unwrap()
        if isinstance(inner, oss.exceptions.ServiceError):
            return f"{inner.status_code} {inner.code}"
        return f"client-error {type(inner).__name__}: {' '.join(str(inner).split())[:300]}"
    except HttpError as exc:
        code = re.search(r"<Code>([^<]*)</Code>", exc.body)
        return f"{exc.status} {code.group(1) if code else '-'}"
    except Exception as exc:  # noqa: BLE001 - reported; the test judges
        return f"client-error {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    status = getattr(result, "status_code", None) or getattr(result, "status", None)
    return f"{status} OK"


def report(label: str, key: str, fn, body: bytes | None = None) -> str:
    got = outcome(fn)
    md5 = f" md5={hashlib.md5(body).hexdigest()} size={len(body)}" if body is not None else ""
    print(f"RESULT {label} {key} {got}{md5}", flush=True)
    return got


# ---------------------------------------------------------------- oss2

def oss2_flow(c: dict, version: str, seed: int) -> None:
    auth = oss2.StsAuth(c["AccessKeyId"], c["AccessKeySecret"], c["SecurityToken"], auth_version=version)
    bucket = oss2.Bucket(auth, c["OssEndpoint"], c["Bucket"], region=c["Region"].removeprefix("oss-"),
                         connect_timeout=10)
    key = f"{c['Prefix']}mp/oss2-{version}.bin"
    forbid = {"x-oss-forbid-overwrite": "true"}
    body = pattern(seed, 2 * PART + 37 * 1024)
    lab = f"oss2-{version}"
    uid = bucket.init_multipart_upload(key, headers=forbid).upload_id
    print(f"RESULT {lab}-init {key} 200 OK", flush=True)
    parts = []
    for n, data in enumerate(chunks(body), start=1):
        if n == 1:
            report(f"{lab}-wrong-md5", key, lambda: bucket.upload_part(
                key, uid, 1, data, headers={"Content-MD5": md5_b64(b"other bytes")}))
        r = bucket.upload_part(key, uid, n, data, headers={"Content-MD5": md5_b64(data)})
        parts.append(oss2.models.PartInfo(n, r.etag))
    listed, pages, marker = [], 0, "0"
    while pages < 10:
        page = bucket.list_parts(key, uid, marker=marker, max_parts=1)
        pages += 1
        listed += [f"{p.part_number}:{p.size}" for p in page.parts]
        if not page.is_truncated:
            break
        marker = page.next_marker
    print(f"LISTED {lab} pages={pages} parts={','.join(listed)}", flush=True)
    wrong = [parts[0], oss2.models.PartInfo(2, parts[0].etag), parts[2]]
    report(f"{lab}-wrong-etag", key, lambda: bucket.complete_multipart_upload(key, uid, wrong))
    report(f"{lab}-complete", key, lambda: bucket.complete_multipart_upload(key, uid, parts, headers=forbid),
           body)

    # A second upload to the same, now existing, key.
    report(f"{lab}-init-existing", key, lambda: bucket.init_multipart_upload(key, headers=forbid))
    uid = bucket.init_multipart_upload(key).upload_id
    small = [oss2.models.PartInfo(n, bucket.upload_part(key, uid, n, pattern(9, size)).etag)
             for n, size in ((1, 1000), (2, 10))]
    report(f"{lab}-too-small", key, lambda: bucket.complete_multipart_upload(key, uid, small))
    report(f"{lab}-overwrite", key, lambda: bucket.complete_multipart_upload(
        key, uid, small[1:], headers=forbid))
    report(f"{lab}-abort", key, lambda: bucket.abort_multipart_upload(key, uid))
    report(f"{lab}-abort-again", key, lambda: bucket.abort_multipart_upload(key, uid))


# ---------------------------------------------------------------- alibabacloud-oss-v2

class HttpError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"{status}")
        self.status, self.body = status, body


def http_put(url: str, headers: dict, data: bytes):
    """A bare PUT (http.client: urllib would add a Content-Type the URL did not sign)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("PUT", f"{u.path}?{u.query}", body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
    finally:
        conn.close()
    if resp.status >= 300:
        raise HttpError(resp.status, text)
    return resp


def v2_flow(c: dict) -> None:
    cfg = oss.config.load_default()
    cfg.credentials_provider = oss.credentials.StaticCredentialsProvider(
        c["AccessKeyId"], c["AccessKeySecret"], c["SecurityToken"])
    cfg.region = c["Region"].removeprefix("oss-")
    cfg.endpoint = c["OssEndpoint"]
    cfg.use_path_style = True
    cfg.retry_max_attempts = 1
    client = oss.Client(cfg)
    b, key = c["Bucket"], f"{c['Prefix']}mp/v2-presigned.bin"
    body = pattern(11, 2 * PART + 5)
    uid = client.initiate_multipart_upload(oss.InitiateMultipartUploadRequest(
        bucket=b, key=key, forbid_overwrite=True)).upload_id
    print(f"RESULT v2-init {key} 200 OK", flush=True)
    parts = []
    for n, data in enumerate(chunks(body), start=1):
        pre = client.presign(oss.UploadPartRequest(
            bucket=b, key=key, upload_id=uid, part_number=n, content_md5=md5_b64(data)))
        headers = dict(pre.signed_headers or {})
        if n == 1:
            other = re.sub(r"partNumber=1(?=&|$)", "partNumber=2", pre.url)
            report("v2-other-part-number", key, lambda: http_put(other, headers, data))
            report("v2-body-not-md5", key, lambda: http_put(pre.url, headers, data[::-1]))
        got = report(f"v2-part-{n}", key, lambda: http_put(pre.url, headers, data))
        if got == "200 OK":
            parts.append(n)
    pages, listed = 0, []
    paginator = client.list_parts_paginator(limit=1)
    for page in paginator.iter_page(oss.ListPartsRequest(bucket=b, key=key, upload_id=uid)):
        pages += 1
        listed += [(p.part_number, p.etag, p.size) for p in page.parts or []]
        if pages >= 10:
            break
    print(f"LISTED v2 pages={pages} parts={','.join(f'{n}:{s}' for n, _, s in listed)}", flush=True)
    done = oss.CompleteMultipartUpload(parts=[oss.UploadPart(part_number=n, etag=e) for n, e, _ in listed])
    backwards = oss.CompleteMultipartUpload(parts=done.parts[::-1])  # oss2 would sort them; v2 sends as given
    report("v2-wrong-order", key, lambda: client.complete_multipart_upload(oss.CompleteMultipartUploadRequest(
        bucket=b, key=key, upload_id=uid, complete_multipart_upload=backwards)))
    report("v2-complete", key, lambda: client.complete_multipart_upload(oss.CompleteMultipartUploadRequest(
        bucket=b, key=key, upload_id=uid, forbid_overwrite=True, complete_multipart_upload=done)), body)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("sdk", choices=["oss2", "oss-v2"])
    ap.add_argument("--creds-url", required=True)
    a = ap.parse_args()
    try:
        with OPENER.open(a.creds_url, timeout=15) as resp:
            c = json.loads(resp.read())
    except Exception as exc:  # noqa: BLE001
        print(f"cannot fetch credentials from {a.creds_url}: {type(exc).__name__}: {exc}")
        return 2
    if a.sdk == "oss2":
        print(f"oss2 {oss2.__version__}, endpoint {c['OssEndpoint']}, prefix {c['Prefix']}", flush=True)
        for version, seed in (("v1", 21), ("v4", 22)):
            oss2_flow(c, version, seed)
    else:
        from importlib import metadata
        print(f"alibabacloud-oss-v2 {metadata.version('alibabacloud-oss-v2')}, endpoint {c['OssEndpoint']}",
              flush=True)
        v2_flow(c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
