//! The fake STS must reject what real STS rejects, or the integration tests
//! prove nothing. These requests are built by hand (signed with our signer,
//! whose output the vectors pin), then broken one way each.

use crate::support::*;
use chrono::{SecondsFormat, TimeDelta, Utc};
use ossvend::sign::sts_rpc;
use serde_json::Value;

fn params(timestamp: &str, nonce: &str) -> Vec<(String, String)> {
    [
        ("Action", "AssumeRole"),
        ("Version", "2015-04-01"),
        ("Format", "JSON"),
        ("AccessKeyId", CALLER_AK),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", nonce),
        ("Timestamp", timestamp),
        ("RoleArn", ROLE_ARN),
        ("RoleSessionName", "probe"),
        ("DurationSeconds", "3600"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn send(sts: &FakeSts, mut p: Vec<(String, String)>, secret: &str) -> (u16, Value) {
    let sig = sts_rpc::sign("POST", p.iter().map(|(k, v)| (k.as_str(), v.as_str())), secret);
    p.push(("Signature".into(), sig.signature));
    let r = http().post(&sts.endpoint).form(&p).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[tokio::test]
async fn fake_sts_accepts_a_good_request_and_rejects_bad_ones() {
    let sts = FakeSts::start();
    let (status, body) = send(&sts, params(&now(), "nonce-1"), CALLER_SECRET).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["Credentials"]["AccessKeyId"]
            .as_str()
            .unwrap()
            .starts_with("STS.")
    );

    let (status, body) = send(&sts, params(&now(), "nonce-2"), "wrongSecret").await;
    assert_eq!(
        (status, body["Code"].as_str().unwrap()),
        (400, "SignatureDoesNotMatch")
    );
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("server string to sign is:")
    );

    let stale = (Utc::now() - TimeDelta::minutes(20)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let (status, body) = send(&sts, params(&stale, "nonce-3"), CALLER_SECRET).await;
    assert_eq!(
        (status, body["Code"].as_str().unwrap()),
        (400, "InvalidTimeStamp.Expired")
    );

    let (status, body) = send(&sts, params(&now(), "nonce-1"), CALLER_SECRET).await;
    assert_eq!(
        (status, body["Code"].as_str().unwrap()),
        (400, "SignatureNonceUsed")
    );

    let mut tampered = params(&now(), "nonce-4");
    let sig = sts_rpc::sign(
        "POST",
        tampered.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        CALLER_SECRET,
    );
    tampered.push(("Signature".into(), sig.signature));
    tampered
        .iter_mut()
        .find(|(k, _)| k == "DurationSeconds")
        .unwrap()
        .1 = "7200".into();
    let r = http().post(&sts.endpoint).form(&tampered).send().await.unwrap();
    assert_eq!(r.status(), 400);

    let calls = sts.calls().await;
    assert_eq!(calls.len(), 5);
    assert_eq!(calls.iter().filter(|c| c["verified"] == true).count(), 1);
}
