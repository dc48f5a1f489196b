#!/usr/bin/env python3
"""Signs OSS upload callbacks as OSS does, independently of ossvend's code.

Reads JSON from stdin: {"requests": [{"path": ..., "query": ... or null, "body": ...}]}.
Writes JSON: {"public_pem": ..., "other_public_pem": ..., "signatures": [...], "other_signatures": [...]}
where each signature is base64(RSA-PKCS1v1.5-MD5(unquote(path) + ("?" + query) + "\\n" + body)),
the scheme OSS documents (and its demo servers verify). Keys are 1024-bit, as OSS's, and throwaway.
"""
import base64
import json
import sys
from urllib.parse import unquote

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def string_to_sign(r):
    s = unquote(r["path"])
    if r.get("query"):
        s += "?" + r["query"]
    return s.encode() + b"\n" + r["body"].encode()


def pem(key):
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def sign(key, r):
    sig = key.sign(string_to_sign(r), padding.PKCS1v15(), hashes.MD5())
    return base64.b64encode(sig).decode()


def main():
    reqs = json.load(sys.stdin)["requests"]
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    json.dump(
        {
            "public_pem": pem(key),
            "other_public_pem": pem(other),
            "signatures": [sign(key, r) for r in reqs],
            "other_signatures": [sign(other, r) for r in reqs],
        },
        sys.stdout,
    )


main()
