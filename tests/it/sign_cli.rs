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

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
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
    let args = strings(&[
        "presign",
        "--bucket",
        "b",
        "--key",
        "k",
        "--region",
        "cn-hangzhou",
        "--expires",
        "604801",
    ]);
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

/// The README's `ossvend sign` block runs as written (with the `ossvend` under
/// test first on PATH), so its examples cannot drift from the program.
#[test]
fn the_readme_sign_examples_run_as_written() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .find(|b| b.contains("ossvend sign presign"))
        .and_then(|b| b.split("```").next())
        .expect("README has an ossvend sign block");
    assert_eq!(block.matches("\nossvend sign ").count(), 5, "{block}");
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_ossvend"))
        .parent()
        .unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("signature: ").count(), 3, "{stdout}");
    assert!(stdout.contains("x-oss-signature="), "{stdout}");
    assert!(stdout.contains("X-Amz-Signature="), "{stdout}");
}

#[test]
fn placeholder_key_ids_and_missing_v4_conditions_are_explained() {
    // `LTAI…` is not a key id: every subcommand refuses it alike.
    for args in [
        vec![
            "presign",
            "--bucket",
            "b",
            "--key",
            "k",
            "--region",
            "cn-hangzhou",
        ],
        vec![
            "post-policy",
            "--version",
            "v1",
            "--policy",
            r#"{"expiration":"2023-12-15T01:00:00.000Z","conditions":[]}"#,
        ],
        vec![
            "sts-request",
            "--role-arn",
            "acs:ram::1:role/x",
            "--session-name",
            "s",
        ],
    ] {
        let mut a = strings(&args);
        a.extend(["--access-key-id".into(), "LTAI…".into()]);
        let (ok, _, err) = sign(&a, "unused", "fakeSecret", None);
        assert!(!ok && err.contains("access key id"), "{args:?}: {err}");
    }
    // A V4 policy without its conditions: the error lists them, ready to paste.
    let a = strings(&[
        "post-policy",
        "--access-key-id",
        "LTAI5tFake",
        "--at",
        "2023-12-15T00:00:00Z",
        "--policy",
        r#"{"expiration":"2023-12-15T01:00:00.000Z","conditions":[]}"#,
    ]);
    let (ok, _, err) = sign(&a, "unused", "fakeSecret", None);
    assert!(!ok, "{err}");
    assert!(
        err.contains(r#"{"x-oss-credential":"LTAI5tFake/20231215/cn-hangzhou/oss/aliyun_v4_request"}"#)
            && err.contains(r#"{"x-oss-date":"20231215T000000Z"}"#),
        "{err}"
    );
    // s3-v4 is spelled as in grants; the old s3v4 still works.
    for scheme in ["s3-v4", "s3v4"] {
        let a = strings(&[
            "presign",
            "--scheme",
            scheme,
            "--access-key-id",
            "AKIDFAKE",
            "--bucket",
            "b",
            "--key",
            "k",
            "--region",
            "cn-hangzhou",
        ]);
        let (ok, out, err) = sign(&a, "unused", "fakeSecret", None);
        assert!(ok && out.contains("X-Amz-Signature="), "{scheme}: {err}");
    }
}
