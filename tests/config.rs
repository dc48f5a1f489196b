//! `ossvend check-config` and `ossvend serve` on good and bad configs.

mod common;

use std::process::{Command, Output};

use common::*;

fn run(config: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let out = ossvend_command(dir.path(), config, args, env).output().unwrap();
    drop(dir);
    out
}

const ISSUE_EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:8000"
default_grant = "browser-upload"

[identity]
source = "env"

[sts]
endpoint = "https://sts.cn-hangzhou.aliyuncs.com"
role_arn = "acs:ram::1234567890123456:role/oss-upload"

[[grants]]
name = "browser-upload"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "uploads/"
actions = ["oss:PutObject"]
"#;

#[test]
fn the_minimal_documented_config_is_valid() {
    let out = run(ISSUE_EXAMPLE, &["check-config"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 grant(s))"));
}

#[test]
fn the_shipped_example_config_is_valid() {
    let text = std::fs::read_to_string(repo_root().join("config/ossvend.example.toml")).unwrap();
    let out = run(&text, &["check-config"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

const BAD: &str = r#"
[server]
listen = "not-an-address"
default_grant = "missing"

[identity]
source = "env"
access_key_secret = "inline-secret-value"

[sts]
endpoint = "http://sts.example.com"
role_arn = "arn:aws:iam::123:role/x"
session_name = "x"
duration_seconds = 100
max_calls_per_second = 500

[[grants]]
name = "a"
bucket = "Bad_Bucket"
region = "oss-cn-hangzhou"
prefix = "/x*"
actions = ["s3:PutObject"]
success_action_redirect = "http://app.example.com/done"

[[grants]]
name = "a"
bucket = "okbucket"
region = "cn-hangzhou"
policy = "{not json"
"#;

#[test]
fn check_config_reports_every_problem_with_its_key_path() {
    let out = run(BAD, &["check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in [
        "server.listen:",
        "server.default_grant:",
        "identity.access_key_secret:",
        "sts.endpoint:",
        "sts.role_arn:",
        "sts.session_name:",
        "sts.duration_seconds:",
        "sts.max_calls_per_second:",
        "grants[0].bucket:",
        "grants[0].region:",
        "grants[0].prefix:",
        "grants[0].actions[0]:",
        "grants[0].success_action_redirect:",
        "grants[1].name:",
        "grants[1].policy:",
    ] {
        assert!(err.contains(path), "missing {path} in:\n{err}");
    }
    assert!(
        !err.contains("inline-secret-value"),
        "a secret must not be echoed"
    );
    assert!(err.contains("problems found"));
    // serve refuses to start on the same problems.
    let out = run(BAD, &["serve"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("grants[0].bucket:"));
}

#[test]
fn too_long_policy_and_unusable_duration_are_refused() {
    let actions: Vec<String> = (0..150).map(|i| format!("\"oss:Action{i}\"")).collect();
    let cfg = ISSUE_EXAMPLE.replace(
        r#"actions = ["oss:PutObject"]"#,
        &format!("actions = [{}]", actions.join(",")),
    );
    let out = run(&cfg, &["check-config"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("grants[0].policy:") && err.contains("2048"), "{err}");

    // 900 s credentials with the default 20 min refresh window would never be servable.
    let cfg = ISSUE_EXAMPLE.replace("[[grants]]", "duration_seconds = 900\n\n[[grants]]");
    let out = run(&cfg, &["check-config"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("sts.duration_seconds:"));
}

#[test]
fn anonymous_on_a_public_address_is_refused_unless_explicit() {
    let public = ISSUE_EXAMPLE.replace("127.0.0.1:8000", "0.0.0.0:8000");
    let out = run(&public, &["check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.listen:"));
    let out = run(&public, &["serve"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let allowed = public.replace("[identity]", "allow_anonymous = true\n\n[identity]");
    let out = run(&allowed, &["check-config"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The environment can flip it too.
    let out = run(
        &public,
        &["check-config"],
        &[("OSSVEND_SERVER_ALLOW_ANONYMOUS", "true")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn missing_identity_and_unknown_keys_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = ossvend_command(dir.path(), ISSUE_EXAMPLE, &["check-config"], &[])
        .env_remove("ALIBABA_CLOUD_ACCESS_KEY_ID")
        .env_remove("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ALIBABA_CLOUD_ACCESS_KEY_ID is not set")
            && err.contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set"),
        "{err}"
    );

    let typo = ISSUE_EXAMPLE.replace("prefix =", "prefx =");
    let out = run(&typo, &["check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prefx"));

    let out = run(ISSUE_EXAMPLE, &["check-config"], &[]);
    assert!(out.status.success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ossvend"))
        .args(["check-config", "--config", "/nonexistent/ossvend.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/ossvend.toml"));
}

#[test]
fn env_overrides_apply_to_sections() {
    let out = run(
        ISSUE_EXAMPLE,
        &["check-config"],
        &[("OSSVEND_STS_DURATION_SECONDS", "50000")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sts.duration_seconds:"));
}

#[test]
fn auth_and_template_mistakes_are_reported() {
    let cfg = ISSUE_EXAMPLE.replace("127.0.0.1:8000", "0.0.0.0:8000").replace(
        r#"actions = ["oss:PutObject"]"#,
        r#"actions = ["oss:PutObject"]
auth = ["jwt", "ticket"]

[[grants]]
name = "anon-user"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "users/{subject}/"

[[grants]]
name = "typo"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "users/{subjet}/{claim.team}/"
auth = ["api_key"]

[[auth.api_keys]]
id = "bad id with spaces"
sha256 = "nothex"

[auth.jwt]
jwks_url = "http://idp.example.com/jwks.json"
issuer = "https://idp.example.com/"
audience = []
algorithms = ["HS256", "none"]
"#,
    );
    let out = run(&cfg, &["check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "server.listen:",  // anon-user accepts anonymous callers on 0.0.0.0
        "grants[1].auth:", // {subject} on an anonymous-only grant
        "grants[2].prefix: unknown placeholder {subjet}",
        "grants[2].prefix: unknown placeholder {claim.team}",
        "auth.api_keys[0].sha256:",
        "auth.api_keys[0].id:",
        "auth.jwt.jwks_url:", // plain http off loopback
        "auth.jwt.audience:",
        "auth.jwt.algorithms[0]:",
        "auth.jwt.algorithms[1]:",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

/// `ISSUE_EXAMPLE` with API keys, a JWT issuer and the given grant lines.
fn with_auth(grant: &str) -> String {
    let key = ossvend::auth::api_key::hash_key("ovk_example");
    ISSUE_EXAMPLE.replace(
        r#"actions = ["oss:PutObject"]"#,
        &format!(
            r#"actions = ["oss:PutObject"]
{grant}

[[auth.api_keys]]
id = "backend"
sha256 = "{key}"

[auth.jwt]
jwks_url = "https://idp.example.com/jwks.json"
issuer = "https://idp.example.com/"
audience = ["ossvend"]
"#
        ),
    )
}

/// Issue 13: an API key `alice` and a JWT subject `alice` are different
/// callers; a grant that takes both into one `{subject}` must say whether
/// they are one id space, and a single-method grant renders as before.
#[test]
fn a_grant_mixing_subject_namespaces_needs_an_explicit_choice() {
    for auth in [r#"["api_key", "jwt"]"#, r#"["jwt", "api_key", "ticket"]"#] {
        let cfg = with_auth(&format!("prefix = \"users/{{subject}}/\"\nauth = {auth}"))
            .replace(r#"prefix = "uploads/""#, "");
        let out = run(&cfg, &["check-config"], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{err}");
        assert_eq!(out.status.code(), Some(2), "{auth}: {err}");
        for needle in [
            "grants[0].subjects:",
            "\"browser-upload\"",
            "api_key and jwt",
            "subjects = \"namespaced\"",
            "subjects = \"shared\"",
        ] {
            assert!(err.contains(needle), "{auth}: missing {needle:?} in:\n{err}");
        }
        for choice in ["namespaced", "shared"] {
            let chosen = cfg.replace(
                &format!("auth = {auth}"),
                &format!("auth = {auth}\nsubjects = \"{choice}\""),
            );
            let out = run(&chosen, &["check-config"], &[]);
            assert!(
                out.status.success(),
                "{choice}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // Not ambiguous: one subject-bearing method (tickets carry their minter's),
    // or no {subject} in any template.
    for grant in [
        r#"prefix = "users/{subject}/"
auth = ["jwt", "ticket"]"#,
        r#"prefix = "users/{subject}/"
auth = ["api_key", "ticket", "none"]"#,
        r#"auth = ["api_key", "jwt"]"#,
    ] {
        let cfg = with_auth(grant).replace(r#"prefix = "uploads/""#, "");
        let out = run(&cfg, &["check-config"], &[]);
        assert!(
            out.status.success(),
            "{grant}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bad = with_auth("auth = [\"api_key\"]\nsubjects = \"separate\"");
    let out = run(&bad, &["check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("subjects"));
}

/// Issue 13: `x-oss-object-acl` on an upload has the effect of PutObjectAcl;
/// no grant hands that right out by accident (a wildcard), only when it is named.
#[test]
fn wildcard_actions_that_would_grant_put_object_acl_are_refused() {
    for actions in [
        r#"["oss:*"]"#,
        r#"["oss:PutObject*"]"#,
        r#"["oss:Put*", "oss:GetObject"]"#,
    ] {
        let cfg = ISSUE_EXAMPLE.replace(r#"["oss:PutObject"]"#, actions);
        let out = run(&cfg, &["check-config"], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{actions}: {err}");
        assert!(
            err.contains("grants[0].actions[0]:") && err.contains("oss:PutObjectAcl"),
            "{actions}: {err}"
        );
    }
    let policy = r#"policy = '{"Version":"1","Statement":[{"Effect":"Allow","Action":"oss:*","Resource":"acs:oss:*:*:examplebucket/uploads/*"}]}'"#;
    let cfg = ISSUE_EXAMPLE.replace(r#"actions = ["oss:PutObject"]"#, policy);
    let out = run(&cfg, &["check-config"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("grants[0].policy:") && err.contains("oss:PutObjectAcl"),
        "{err}"
    );
    // Named on purpose, it is the operator's choice.
    let cfg = ISSUE_EXAMPLE.replace(r#"["oss:PutObject"]"#, r#"["oss:PutObject", "oss:PutObjectAcl"]"#);
    let out = run(&cfg, &["check-config"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_public_address_is_fine_when_every_grant_authenticates() {
    let key = ossvend::auth::api_key::hash_key("ovk_example");
    let cfg = ISSUE_EXAMPLE.replace("127.0.0.1:8000", "0.0.0.0:8000").replace(
        r#"actions = ["oss:PutObject"]"#,
        &format!("actions = [\"oss:PutObject\"]\nauth = [\"api_key\"]\n\n[[auth.api_keys]]\nid = \"backend\"\nsha256 = \"{key}\""),
    );
    let out = run(&cfg, &["check-config"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn hash_key_prints_a_config_entry_and_reads_the_key_from_stdin() {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ossvend"))
        .args(["hash-key", "--id", "web"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ovk_example\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("id = \"web\""), "{text}");
    assert!(text.contains(&ossvend::auth::api_key::hash_key("ovk_example")));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ossvend"))
        .args(["hash-key", "--generate"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ovk_") && text.contains("sha256 = "), "{text}");
}

/// A newcomer's first `ossvend serve`: no config file, no `--config`, no cloud
/// identity. It starts local mode and says so, instead of failing on a missing file;
/// with a cloud identity in the environment it does not.
#[test]
fn serve_without_config_or_identity_falls_back_to_local_mode_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let start = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ossvend"));
        cmd.arg("serve")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("OSSVEND_SERVER_LISTEN", "127.0.0.1:0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    };

    let mut child = start(&[]);
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("ossvend local listening on") {
                break;
            }
        }
        seen
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !lines.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let seen = lines.join().unwrap();
    assert!(seen.contains("starting LOCAL MODE"), "{seen}");
    assert!(seen.contains("ossvend local listening on"), "{seen}");
    assert!(dir.path().join(".ossvend-local").is_dir(), "{seen}");

    // A cloud identity means the user meant production: no silent local mode.
    let out = start(&[
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIfakeTestKeyId0001"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "fakeTestSecretDoNotUse0001"),
    ])
    .wait_with_output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("config/ossvend.toml"), "{stderr}");
    assert!(!stderr.contains("LOCAL MODE"), "{stderr}");
}
