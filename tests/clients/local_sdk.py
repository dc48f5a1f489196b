#!/usr/bin/env python3
"""The official Python SDKs against `ossvend local` (issue 7). Run by tests/it/local.rs.

usage: local_sdk.py oss-v2 --creds-url URL
       local_sdk.py oss2   --creds-url URL

Both fetch one credential from ossvend (`GET /v1/grants/<g>/credentials`, the default
body) and upload to the endpoint it names (`OssEndpoint`, the embedded sink on
127.0.0.1: path-style), under the `Prefix` it names:

* oss-v2 (alibabacloud-oss-v2): put_object and a 3-part multipart upload
  (initiate, upload_part x3, complete), first with V4 signatures (the SDK default),
  then with V1 (`signature_version = "v1"`).
* oss2 (oss2.StsAuth): put_object OUTSIDE the prefix (`other/...`) and inside it,
  with V1 (oss2's default) and with V4.

The bodies are a deterministic pattern the test recomputes on its side:
    byte i of a body with seed s = (i * 31 + s * 7 + (i >> 8)) % 256
One line per step: `RESULT <label> <key> <status> <Code|OK>` (or `client-error ...`).
The script reports and never judges: exit 0 when every step ran (whatever each
answered), 2 on a usage error or when the credential could not be fetched.
"""

import argparse
import hashlib
import json
import sys
import urllib.request
from importlib import metadata

import alibabacloud_oss_v2 as oss
import oss2

PART = 100 * 1024  # OSS: every part but the last must be at least 100 KiB


def pattern(seed: int, size: int) -> bytes:
    return bytes((i * 31 + seed * 7 + (i >> 8)) % 256 for i in range(size))


def fetch_credentials(url: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    with opener.open(url, timeout=15) as resp:
        return json.loads(resp.read())


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
    except Exception as exc:  # noqa: BLE001 - reported; the test judges
        return f"client-error {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    status = getattr(result, "status_code", None) or getattr(result, "status", None)
    return f"{status} OK"


def report(label: str, key: str, body: bytes | None, fn) -> None:
    md5 = f" md5={hashlib.md5(body).hexdigest()} size={len(body)}" if body is not None else ""
    print(f"RESULT {label} {key} {outcome(fn)}{md5}", flush=True)


# ---------------------------------------------------------------- alibabacloud-oss-v2

def v2_client(c: dict, version: str) -> oss.Client:
    cfg = oss.config.load_default()
    cfg.credentials_provider = oss.credentials.StaticCredentialsProvider(
        c["AccessKeyId"], c["AccessKeySecret"], c["SecurityToken"])
    cfg.region = c["Region"].removeprefix("oss-")  # the body says "oss-cn-hangzhou"
    cfg.endpoint = c["OssEndpoint"]                 # http://127.0.0.1:PORT, kept as is
    cfg.use_path_style = True                       # an IP endpoint: /<bucket>/<key>
    cfg.signature_version = version
    cfg.retry_max_attempts = 1                      # a refusal must not be retried away
    return oss.Client(cfg)


def v2_multipart(client: oss.Client, bucket: str, key: str, body: bytes):
    def run():
        uid = client.initiate_multipart_upload(oss.InitiateMultipartUploadRequest(
            bucket=bucket, key=key)).upload_id
        parts = []
        for n, start in enumerate(range(0, len(body), PART), start=1):
            r = client.upload_part(oss.UploadPartRequest(
                bucket=bucket, key=key, upload_id=uid, part_number=n, body=body[start:start + PART]))
            parts.append(oss.UploadPart(part_number=n, etag=r.etag))
        return client.complete_multipart_upload(oss.CompleteMultipartUploadRequest(
            bucket=bucket, key=key, upload_id=uid,
            complete_multipart_upload=oss.CompleteMultipartUpload(parts=parts)))
    return run


def run_oss_v2(c: dict) -> None:
    print(f"alibabacloud-oss-v2 {metadata.version('alibabacloud-oss-v2')}, ak {c['AccessKeyId']}, "
          f"endpoint {c['OssEndpoint']}, bucket {c['Bucket']}, prefix {c['Prefix']}", flush=True)
    bucket, prefix = c["Bucket"], c["Prefix"]
    for version, seed in (("v4", 1), ("v1", 3)):
        client = v2_client(c, version)
        key = f"{prefix}py-v2/{version}-put.bin"
        body = pattern(seed, 4096 + 7)
        report(f"oss-v2-{version}-put", key, body, lambda: client.put_object(oss.PutObjectRequest(
            bucket=bucket, key=key, body=body, content_type="application/octet-stream")))
        key = f"{prefix}py-v2/{version}-multipart.bin"
        body = pattern(seed + 1, 2 * PART + 37 * 1024)  # 3 parts: 100 KiB, 100 KiB, 37 KiB
        report(f"oss-v2-{version}-multipart", key, body, v2_multipart(client, bucket, key, body))


# ---------------------------------------------------------------- oss2

def run_oss2(c: dict) -> None:
    print(f"oss2 {oss2.__version__}, ak {c['AccessKeyId']}, endpoint {c['OssEndpoint']}, "
          f"bucket {c['Bucket']}, prefix {c['Prefix']}", flush=True)
    region = c["Region"].removeprefix("oss-")
    for version, seed in (("v1", 5), ("v4", 6)):
        auth = oss2.StsAuth(c["AccessKeyId"], c["AccessKeySecret"], c["SecurityToken"], auth_version=version)
        # An IP endpoint makes oss2 use path-style URLs by itself.
        bucket = oss2.Bucket(auth, c["OssEndpoint"], c["Bucket"], region=region, connect_timeout=10)
        for where, key in (("outside", f"other/oss2-{version}.txt"),
                           ("inside", f"{c['Prefix']}oss2/{version}-inside.txt")):
            body = pattern(seed, 1000)
            report(f"oss2-{version}-{where}", key, body, lambda: bucket.put_object(key, body))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("sdk", choices=["oss-v2", "oss2"])
    ap.add_argument("--creds-url", required=True)
    a = ap.parse_args()
    try:
        c = fetch_credentials(a.creds_url)
    except Exception as exc:  # noqa: BLE001
        print(f"cannot fetch credentials from {a.creds_url}: {type(exc).__name__}: {exc}")
        return 2
    if a.sdk == "oss-v2":
        run_oss_v2(c)
    else:
        run_oss2(c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
