//! `ossvend sign` must print exactly what the official SDKs computed, or it
//! would mislead the operator debugging a SignatureDoesNotMatch.

use std::process::Command;

use serde_json::Value;

fn vectors(file: &str) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(file);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

fn sign(args: &[String], ak: &str, sk: &str, token: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ossvend"));
    cmd.arg("sign")
        .args(args)
        .env_clear()
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", ak)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", sk);
    if let Some(t) = token {
        cmd.env("ALIBABA_CLOUD_SECURITY_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn at(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[test]
fn presign_reproduces_the_oss_v4_vectors() {
    let mut checked = 0;
    for v in vectors("oss_v4_presign.json") {
        let i = &v["input"];
        if i["query"].as_object().is_some_and(|q| !q.is_empty()) || i["bucket"].is_null() {
            continue; // the CLI signs plain uploads/downloads; query sub-resources are not its job
        }
        let mut args: Vec<String> = ["presign", "--explain", "--scheme", "oss-v4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (flag, key) in [
            ("--method", "method"),
            ("--bucket", "bucket"),
            ("--key", "key"),
            ("--region", "region"),
        ] {
            args.push(flag.into());
            args.push(i[key].as_str().unwrap().into());
        }
        args.extend(["--at".into(), at(i["now_epoch"].as_i64().unwrap())]);
        args.extend(["--expires".into(), i["expires_in_seconds"].to_string()]);
        for (k, val) in i["headers_client_will_send"].as_object().unwrap() {
            args.extend(["--header".into(), format!("{k}: {}", val.as_str().unwrap())]);
        }
        let (ok, out, err) = sign(
            &args,
            i["access_key_id"].as_str().unwrap(),
            i["access_key_secret"].as_str().unwrap(),
            i["security_token"].as_str(),
        );
        assert!(ok, "{}: {err}", v["id"]);
        let e = &v["expected"];
        assert!(
            out.contains(e["canonical_request"].as_str().unwrap()),
            "{}: canonical request differs:\n{out}",
            v["id"]
        );
        assert!(
            out.contains(e["string_to_sign"].as_str().unwrap()),
            "{}: string to sign differs",
            v["id"]
        );
        assert!(
            out.contains(&format!(
                "x-oss-signature={}",
                e["x-oss-signature"].as_str().unwrap()
            )),
            "{}: {out}",
            v["id"]
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} vectors checked");
}

#[test]
fn presign_refuses_more_than_seven_days() {
    let args: Vec<String> = [
        "presign",
        "--bucket",
        "b",
        "--key",
        "k",
        "--region",
        "cn-hangzhou",
        "--expires",
        "604801",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (ok, _, err) = sign(&args, "LTAIfake", "fakeSecret", None);
    assert!(!ok);
    assert!(err.contains("604800"), "{err}");
}

#[test]
fn sts_request_reproduces_the_rpc_vectors() {
    for v in vectors("sts_rpc_hmac_sha1.json") {
        let i = &v["input"];
        let p = &i["params"];
        let mut args: Vec<String> = vec!["sts-request".into(), "--explain".into()];
        for (flag, key) in [
            ("--role-arn", "RoleArn"),
            ("--session-name", "RoleSessionName"),
            ("--duration", "DurationSeconds"),
            ("--nonce", "SignatureNonce"),
            ("--at", "Timestamp"),
            ("--format", "Format"),
            ("--policy", "Policy"),
        ] {
            if let Some(val) = p[key].as_str() {
                args.extend([flag.into(), val.into()]);
            }
        }
        args.extend(["--method".into(), i["http_method"].as_str().unwrap().into()]);
        let (ok, out, err) = sign(
            &args,
            i["access_key_id"].as_str().unwrap(),
            i["access_key_secret"].as_str().unwrap(),
            i["security_token"].as_str(),
        );
        assert!(ok, "{}: {err}", v["id"]);
        let e = &v["expected"];
        assert!(
            out.contains(e["string_to_sign"].as_str().unwrap()),
            "{}: string to sign differs:\n{out}",
            v["id"]
        );
        assert!(
            out.contains(&format!("Signature={}", e["signature"].as_str().unwrap())),
            "{}: {out}",
            v["id"]
        );
    }
}

#[test]
fn the_secret_is_never_a_command_line_argument() {
    let out = Command::new(env!("CARGO_BIN_EXE_ossvend"))
        .args([
            "sign",
            "presign",
            "--access-key-id",
            "LTAIfake",
            "--bucket",
            "b",
            "--key",
            "k",
            "--region",
            "cn-hangzhou",
        ])
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET"));
}
