//! Cost of one signature with each signer in `ossvend::sign`, on inputs shaped like
//! what the upload routes sign: STS credentials with a realistic (1,100-character, base64 like the
//! fake STS's) security token, a PUT of `uploads/<uuid>.png` with its Content-Type, and
//! PostObject policies like the grants' ones. Policies are built once, outside
//! the timed loop: only the signer is measured.
//!
//! `cargo bench --bench sign` (bench/run runs it with a short measurement time).

use std::hint::black_box;

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use ossvend::sign::oss_v4::V4Scope;
use ossvend::sign::{
    AddressingStyle, Endpoint, RequestToSign, SigningCredentials, oss_v1, oss_v4, post, s3, sts_rpc,
};

/// A fake STS credential (obviously not real), token as long as real ones.
fn token() -> String {
    let mut t = String::from("CAIS");
    while t.len() < 1100 {
        t.push_str("fakeBenchTokenDoNotUse0123456789+/");
    }
    t.truncate(1100);
    t
}

fn at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-23T18:41:52Z")
        .unwrap()
        .with_timezone(&Utc)
}

const REGION: &str = "cn-hangzhou";
const KEY: &str = "uploads/5f2c9a1e-7b3d-4c8e-9f01-23456789abcd.png";
const HEADERS: &[(&str, &str)] = &[("Content-Type", "image/png")];

/// The conditions of a grant's PostObject policy after the signer's required ones.
const TAIL: &str = r#"{"bucket":"examplebucket"},["starts-with","$key","uploads/"],["content-length-range",0,10485760],["eq","$success_action_status","200"],["in","$content-type",["image/png","image/jpeg"]]"#;

fn policy(required: &[(&str, String)]) -> String {
    let mut conditions: Vec<String> = required
        .iter()
        .map(|(k, v)| serde_json::json!({ *k: v }).to_string())
        .collect();
    conditions.push(TAIL.to_string());
    format!(
        r#"{{"expiration":"2026-11-23T18:56:52.000Z","conditions":[{}]}}"#,
        conditions.join(",")
    )
}

fn bench(c: &mut Criterion) {
    let token = token();
    let creds = SigningCredentials {
        access_key_id: "STS.NSNfakeBenchAccessKeyId01",
        access_key_secret: "fakeBenchSecretDoNotUse000000000000000001",
        security_token: Some(&token),
    };
    let req = RequestToSign {
        method: "PUT",
        bucket: Some("examplebucket"),
        key: KEY,
        headers: HEADERS,
        query: &[],
    };
    let endpoint = Endpoint {
        base: "https://oss-cn-hangzhou.aliyuncs.com",
        style: AddressingStyle::VirtualHosted,
    };
    let s3_endpoint = Endpoint {
        base: "https://s3.oss-cn-hangzhou.aliyuncs.com",
        style: AddressingStyle::VirtualHosted,
    };
    let scope = V4Scope::oss(REGION);
    let t = at();
    let fields: &[(&str, &str)] = &[
        ("key", KEY),
        ("success_action_status", "200"),
        ("Content-Type", "image/png"),
    ];
    let v1_policy = policy(&[]);
    let v4_policy = policy(&post::v4_required_conditions(&creds, &scope, t).unwrap());

    let mut g = c.benchmark_group("sign");
    g.bench_function("oss_v1_header", |b| {
        b.iter(|| oss_v1::sign_header(black_box(&creds), black_box(&req), t).unwrap())
    });
    g.bench_function("oss_v1_presign", |b| {
        b.iter(|| oss_v1::presign_url(black_box(&creds), black_box(&req), &endpoint, t, 900).unwrap())
    });
    g.bench_function("oss_v4_header", |b| {
        b.iter(|| oss_v4::sign_header(black_box(&creds), black_box(&req), &scope, &[], t).unwrap())
    });
    g.bench_function("oss_v4_presign", |b| {
        b.iter(|| {
            oss_v4::presign_url(black_box(&creds), black_box(&req), &scope, &[], &endpoint, t, 900).unwrap()
        })
    });
    g.bench_function("post_v1", |b| {
        b.iter(|| post::sign_v1(black_box(&creds), black_box(&v1_policy), fields).unwrap())
    });
    g.bench_function("post_v4", |b| {
        b.iter(|| post::sign_v4(black_box(&creds), &scope, t, black_box(&v4_policy), fields).unwrap())
    });
    g.bench_function("s3_presign", |b| {
        b.iter(|| s3::presign_url(black_box(&creds), black_box(&req), &s3_endpoint, REGION, t, 900).unwrap())
    });
    let sts_policy = r#"{"Version":"1","Statement":[{"Effect":"Allow","Action":["oss:PutObject"],"Resource":["acs:oss:*:*:examplebucket/uploads/*"]}]}"#;
    let sts_params: [(&str, &str); 12] = [
        ("Action", "AssumeRole"),
        ("Format", "JSON"),
        ("Version", "2015-04-01"),
        ("AccessKeyId", "LTAIfakeTestKeyId0001"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", "3f0c5d2e-8b1a-4f6e-9d7c-0a1b2c3d4e5f"),
        ("Timestamp", "2026-11-23T18:41:52Z"),
        ("RoleArn", "acs:ram::1234567890123456:role/oss-upload"),
        ("RoleSessionName", "ossvend"),
        ("DurationSeconds", "3600"),
        ("Policy", sts_policy),
    ];
    g.bench_function("sts_rpc", |b| {
        b.iter(|| sts_rpc::sign("POST", black_box(sts_params), "fakeTestSecretDoNotUse0001"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
