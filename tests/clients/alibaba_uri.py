#!/usr/bin/env python3
"""alibabacloud-credentials' default chain reading ALIBABA_CLOUD_CREDENTIALS_URI (ossvend),
feeding alibabacloud-oss-v2, which uploads with OSS V4 signatures. Run by tests/it/clients.rs.

usage: alibaba_uri.py --oss-endpoint URL --region REGION --bucket B --key K

The environment is the caller's: ALIBABA_CLOUD_CREDENTIALS_URI must point at ossvend,
ALIBABA_CLOUD_ECS_METADATA_DISABLED=true and a HOME without credential files, so the
chain can only end at the URI provider (the SDK reads these variables at import time).
Prints one line per step; exit 0 on success, 1 on any failure.
"""

import argparse
import sys
from importlib import metadata

# --- the snippet of docs/clients.md ("Python") -----------------------------------
import alibabacloud_oss_v2 as oss
from alibabacloud_credentials.client import Client as CredentialsClient

credentials_client = CredentialsClient()  # default chain -> URLCredentialsProvider


def get_credentials():
    c = credentials_client.get_credential()
    return oss.credentials.Credentials(
        access_key_id=c.access_key_id,
        access_key_secret=c.access_key_secret,
        security_token=c.security_token,
    )
# ---------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--oss-endpoint", required=True)
    ap.add_argument("--region", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--key", required=True)
    a = ap.parse_args()
    creds_version = metadata.version("alibabacloud-credentials")
    oss_version = metadata.version("alibabacloud-oss-v2")

    try:
        c = credentials_client.get_credential()
    except Exception as e:  # noqa: BLE001 - reported, then a failing exit
        print(f"alibabacloud-credentials {creds_version} default chain FAILED: {type(e).__name__}: {e}")
        return 1
    print(f"alibabacloud-credentials {creds_version} default chain -> provider {c.provider_name}, "
          f"ak {c.access_key_id}")

    cfg = oss.config.load_default()
    cfg.credentials_provider = oss.credentials.CredentialsProviderFunc(func=get_credentials)
    cfg.region = a.region
    cfg.endpoint = a.oss_endpoint   # http:// on loopback is kept as is
    cfg.use_path_style = True       # an IP endpoint: /<bucket>/<key>
    cfg.signature_version = "v4"
    client = oss.Client(cfg)
    try:
        r = client.put_object(oss.PutObjectRequest(
            bucket=a.bucket, key=a.key, body=b"hello from alibabacloud-oss-v2", content_type="text/plain"))
    except Exception as e:  # noqa: BLE001
        print(f"alibabacloud-oss-v2 {oss_version} V4 put_object {a.key} FAILED: {str(e).splitlines()[0][:300]}")
        return 1
    print(f"alibabacloud-oss-v2 {oss_version} V4 put_object {a.key} -> {r.status_code}")
    return 0 if r.status_code == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
