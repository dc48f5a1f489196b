#!/usr/bin/env python3
"""boto3 with credentials from its default chain, PutObject to an S3 endpoint. Run by
tests/it/clients.rs against ossvend (credentials) and the in-process s3s peer (S3).

usage: boto3_put.py --endpoint URL --region REGION --bucket B --key K

Where the credentials come from is the caller's environment: either
AWS_CONTAINER_CREDENTIALS_FULL_URI (+ AWS_CONTAINER_AUTHORIZATION_TOKEN), or a HOME whose
~/.aws/config names a `credential_process`. The caller also sets
AWS_EC2_METADATA_DISABLED=true, so the chain never dials an instance metadata address.

Prints one line; exit 0 when the object was stored, 2 when boto3 could not get
credentials (it raised), 1 on any other failure.
"""

import argparse
import hashlib
import sys

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import CredentialRetrievalError, NoCredentialsError


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--region", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--key", required=True)
    a = ap.parse_args()
    who = f"boto3 {boto3.__version__} (botocore {botocore.__version__})"

    session = boto3.Session()
    try:
        creds = session.get_credentials()
        if creds is None:
            raise NoCredentialsError()
        frozen = creds.get_frozen_credentials()
    except (CredentialRetrievalError, NoCredentialsError, ValueError) as e:
        print(f"{who} credentials refused: {type(e).__name__}: {' '.join(str(e).split())[:400]}")
        return 2
    token_hash = hashlib.sha256((frozen.token or "").encode()).hexdigest()[:16]

    # --- the snippet of docs/clients.md ("AWS SDKs") ---------------------------------
    s3 = session.client(
        "s3",
        region_name=a.region,
        endpoint_url=a.endpoint,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    # ---------------------------------------------------------------------------------
    try:
        r = s3.put_object(Bucket=a.bucket, Key=a.key, Body=b"hello from boto3", ContentType="text/plain")
    except Exception as e:  # noqa: BLE001 - reported, then a failing exit
        print(f"{who} via {creds.method}: put_object {a.key} FAILED: {type(e).__name__}: {str(e)[:300]}")
        return 1
    status = r["ResponseMetadata"]["HTTPStatusCode"]
    print(f"{who} credentials via {creds.method}, ak {frozen.access_key}, token sha256 {token_hash}: "
          f"put_object {a.key} -> {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
