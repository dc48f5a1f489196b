//! `ossvend check-config` and `ossvend serve` on good and bad configs.

use std::process::{Command, Output};

use crate::support::*;

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
fn an_unknown_identity_source_is_reported_at_its_key_with_the_allowed_values() {
    let bad = ISSUE_EXAMPLE.replace(r#"source = "env""#, r#"source = "envv""#);
    let out = run(&bad, &["check-config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("identity.source") && err.contains("envv"), "{err}");
    for allowed in [
        "env",
        "static",
        "profile",
        "ecs_ram_role",
        "oidc",
        "credentials_uri",
        "ram_role_arn",
        "chain",
    ] {
        assert!(
            err.contains(&format!("`{allowed}`")) || err.contains(&format!("\"{allowed}\"")),
            "{allowed}: {err}"
        );
    }
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
    // [admin] is overridable too (documented); a section that is not is refused, not ignored.
    let out = run(
        ISSUE_EXAMPLE,
        &["check-config"],
        &[("OSSVEND_ADMIN_LISTEN", "0.0.0.0:9000")],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.listen:"));
    let out = run(
        ISSUE_EXAMPLE,
        &["check-config"],
        &[("OSSVEND_CORS_MAX_AGE", "abc")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("OSSVEND_CORS_MAX_AGE") && err.contains("[cors] cannot be set"),
        "{err}"
    );
    // A wrong type from the environment is refused like one in the file.
    let out = run(
        ISSUE_EXAMPLE,
        &["check-config"],
        &[("OSSVEND_SERVER_REQUEST_TIMEOUT", "abc")],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Variables of other programs (or a ticket secret named OSSVEND_TICKET_SECRET) are left alone.
    let out = run(
        ISSUE_EXAMPLE,
        &["check-config"],
        &[("OSSVEND_TICKET_SECRET", "x")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The example config says a key set in it shows its default unless the line
/// says "# example" or "# required": with those lines dropped (required ones
/// kept), it must mean exactly what an almost empty file means.
#[test]
fn the_example_config_shows_real_defaults() {
    let text = std::fs::read_to_string(repo_root().join("config/ossvend.example.toml")).unwrap();
    let defaults_only: String = text
        .lines()
        .filter(|l| !l.contains("# example"))
        .map(|l| format!("{l}\n"))
        .collect();
    let minimal = r#"
[sts]
role_arn = "acs:ram::1234567890123456:role/oss-upload"
[[grants]]
name = "browser-upload"
bucket = "examplebucket"
region = "cn-hangzhou"
"#;
    let env = std::collections::BTreeMap::new();
    let a = ossvend::config::parse(&defaults_only, &env).unwrap();
    let b = ossvend::config::parse(minimal, &env).unwrap();
    assert_eq!(format!("{a:#?}"), format!("{b:#?}"));
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
    // {subject} only inside an explicit policy's strings is ambiguous too (the
    // policy is JSON, so its braces must not hide the placeholder).
    let cfg = with_auth(
        r#"auth = ["api_key", "jwt"]
policy = '{"Version":"1","Statement":[{"Effect":"Allow","Action":"oss:PutObject","Resource":"acs:oss:*:*:examplebucket/u/{subject}/*"}]}'"#,
    );
    let out = run(&cfg, &["check-config"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("grants[0].subjects:"), "{err}");
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

/// An explicit grant policy is a JSON document whose string values may hold
/// placeholders. Before, every `{` of the JSON was read as a placeholder and
/// `check-config` refused any such document ("has a } without {").
const EXPLICIT_POLICY_GRANT: &str = r#"
[[grants]]
name = "explicit"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "users/{subject}/"
auth = ["api_key"]
policy = '''
{"Version": "1", "Statement": [
  {"Effect": "Allow", "Action": ["oss:PutObject"],
   "Resource": ["acs:oss:*:*:examplebucket/users/{subject}/*"]},
  {"Effect": "Allow", "Action": ["oss:ListObjects"], "Resource": ["acs:oss:*:*:examplebucket"],
   "Condition": {"StringLike": {"oss:Prefix": ["users/{subject}/*"]}}},
  {"Effect": "Deny", "Action": ["oss:*"], "Resource": ["*"],
   "Condition": {"NotIpAddress": {"acs:SourceIp": ["192.0.2.0/24", "198.51.100.7"]}}}
]}
'''
"#;

fn explicit_policy_config(sts_endpoint: &str) -> String {
    let key = ossvend::auth::api_key::hash_key("alice-secret-key-0001");
    format!(
        "{}\n[[auth.api_keys]]\nid = \"alice\"\nsha256 = \"{key}\"\n{EXPLICIT_POLICY_GRANT}",
        crate::support::config(sts_endpoint)
    )
}

#[test]
fn an_explicit_multi_statement_policy_with_placeholders_is_valid() {
    let out = run(
        &explicit_policy_config("https://sts.aliyuncs.com"),
        &["check-config"],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A placeholder the policy may not use is still reported, with its path.
    let bad =
        explicit_policy_config("https://sts.aliyuncs.com").replace("users/{subject}/*\"]}}", "{uuid}\"]}}");
    let out = run(&bad, &["check-config"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("grants[2].policy:") && err.contains("{uuid}"),
        "{err}"
    );
}

#[tokio::test]
async fn an_explicit_policy_is_rendered_per_caller_inside_its_strings() {
    let sts = StsStub::start();
    let app = TestApp::new(&explicit_policy_config(&sts.endpoint)).await;
    let key = [("x-api-key", "alice-secret-key-0001")];
    let r = app.get_with("/v1/grants/explicit/explain", &key).await;
    assert_eq!(r.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let policy = &body["policy"];
    assert_eq!(policy["Statement"].as_array().unwrap().len(), 3, "{body}");
    assert_eq!(
        policy["Statement"][0]["Resource"][0],
        "acs:oss:*:*:examplebucket/users/alice/*"
    );
    assert_eq!(
        policy["Statement"][1]["Condition"]["StringLike"]["oss:Prefix"][0],
        "users/alice/*"
    );
    assert_eq!(policy["Statement"][2]["Effect"], "Deny");
    assert!(
        !body["policy_text"].as_str().unwrap().contains(' '),
        "compacted: {body}"
    );

    // The credentials route sends exactly that document to STS.
    let r = app.get_with("/v1/grants/explicit/credentials", &key).await;
    assert_eq!(r.status, 200);
    let calls = sts.calls().await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["params"]["Policy"], body["policy_text"]);
}

/// Issue 13 item 6: a config that does not parse must not echo a secret. Each
/// config is broken on (or in a string starting on) a line that sets a secret;
/// `check-config` and `serve` report where, never what.
#[test]
fn parse_errors_never_echo_a_secret() {
    const SECRET: &str = "NotARealSecretButSecretAnyway42";
    let static_identity = |line: &str| {
        ISSUE_EXAMPLE.replace(
            "[identity]\nsource = \"env\"",
            &format!(
                "[identity]\nsource = \"static\"\naccess_key_id = \"LTAIfakeTestKeyId0001\"\n\
                 allow_inline_secret = true\n{line}"
            ),
        )
    };
    let broken = [
        // Unterminated string: the excerpt is the secret's line.
        static_identity(&format!("access_key_secret = \"{SECRET}")),
        // Trailing garbage after the value.
        static_identity(&format!("access_key_secret = \"{SECRET}\" x")),
        // Mixed case key, literal string, garbage.
        static_identity(&format!("Access_Key_Secret = '{SECRET}' ]")),
        // A multi-line string that starts on the secret's line and breaks later.
        static_identity(&format!(
            "access_key_secret = \"\"\"\nfirst-half\n{SECRET}\\q\n\"\"\""
        )),
        // An inline table naming a secret.
        ISSUE_EXAMPLE.replace(
            "[identity]\nsource = \"env\"",
            &format!(
                "[identity]\nsource = \"ram_role_arn\"\nrole_arn = \"{ROLE_ARN}\"\n\
                 base = {{ source = \"static\", allow_inline_secret = true, access_key_secret = \"{SECRET}\" x }}"
            ),
        ),
        // A number where a string is expected: the type error names the value.
        static_identity("access_key_secret = 31415926535897932"),
    ];
    for config in &broken {
        for args in [&["check-config"][..], &["serve"][..]] {
            let out = run(config, args, &[]);
            assert_eq!(out.status.code(), Some(2), "{args:?}\n{config}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !err.contains(SECRET) && !err.contains("31415926535897932"),
                "{args:?} echoed the secret:\n{err}"
            );
            assert!(err.contains("ossvend.toml"), "{args:?} no file named:\n{err}");
        }
    }
    // Where is still said: the line, for a syntax error.
    let out = run(&broken[0], &["check-config"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 10"), "{err}");
    assert!(err.contains("access_key_secret"), "{err}");
    // A syntax error on an ordinary line keeps its excerpt.
    let out = run(
        &ISSUE_EXAMPLE.replace("prefix = \"uploads/\"", "prefix = \"uploads/\" x"),
        &["check-config"],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("prefix = \"uploads/\" x"), "{err}");
}

/// The same through `OSSVEND_*`: a secret that looks like a number or a boolean is
/// a string (it used to be a type error that printed it).
#[test]
fn secret_env_overrides_are_strings_and_never_echoed() {
    let cfg = ISSUE_EXAMPLE.replace(
        "[identity]\nsource = \"env\"",
        "[identity]\nsource = \"static\"\naccess_key_id = \"LTAIfakeTestKeyId0001\"\nallow_inline_secret = true",
    );
    for secret in ["31415926535897932", "true", "[1, 2]"] {
        let out = run(
            &cfg,
            &["check-config"],
            &[("OSSVEND_IDENTITY_ACCESS_KEY_SECRET", secret)],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{secret}: {err}");
        assert!(!err.contains(secret), "{err}");
    }
}

/// Issue 13 item 7b: CORS origins and patterns must be what a browser sends.
#[test]
fn cors_origins_and_patterns_must_be_browser_origins() {
    let env: std::collections::BTreeMap<String, String> = [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", CALLER_AK),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", CALLER_SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let problems = |cors: &str| -> Vec<String> {
        let text = format!("{ISSUE_EXAMPLE}\n[cors]\n{cors}\n");
        let cfg = ossvend::config::parse(&text, &env).unwrap();
        ossvend::check::config(&cfg, &env)
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let good = r#"allowed_origins = ["https://app.example.com", "http://localhost:3000"]
allowed_origin_patterns = ["https://*.example.com", "http://*.localhost:3000", "https://*.xn--bcher-kva.example"]"#;
    assert_eq!(problems(good), Vec::<String>::new());
    for bad in [
        "https://*.example.com?",
        "https://*.example.com?x=1",
        "https://*.example.com#",
        "https://*.exa\\\\mple.com",
        "https://*.example.com/",
        "https://*.example.com/path",
        "https://*.Example.com",
        "https://*.example.com:443",
        "https://*.user@example.com",
        "https://*.exa mple.com",
        "https://*.*.example.com",
        "ftp://*.example.com",
        "https://*example.com",
        "*.example.com",
    ] {
        let p = problems(&format!("allowed_origin_patterns = [\"{bad}\"]"));
        assert!(
            p.len() == 1 && p[0].starts_with("cors.allowed_origin_patterns[0]:"),
            "{bad}: {p:?}"
        );
    }
    for bad in [
        "https://app.example.com?",
        "https://app.example.com/",
        "null",
        "*",
        "https://APP.example.com",
    ] {
        let p = problems(&format!("allowed_origins = [\"{bad}\"]"));
        assert!(
            p.len() == 1 && p[0].starts_with("cors.allowed_origins[0]:"),
            "{bad}: {p:?}"
        );
    }
}

/// A Redis URL's password (under `url`, a key naming no secret) never shows in
/// `check-config`'s excerpt of a file that fails to parse, nor in a type error.
#[test]
fn url_passwords_never_show_in_parse_errors() {
    for bad in [
        // Syntax error on the URL's line: toml quotes the line.
        "\n[shared]\nurl = \"rediss://ossvend:hunter2-fake-pw@r-bp1.redis.rds.aliyuncs.com:6380\" x\n",
        // Unterminated string: toml quotes the line too.
        "\n[shared]\nurl = \"redis://:hunter2-fake-pw@10.0.0.5:6379\n",
        // Type error quoting the value, under another key.
        "\n[server.extra]\nx = 1\n",
    ] {
        let cfg = if bad.contains("server.extra") {
            ISSUE_EXAMPLE.replace(
                "listen = \"127.0.0.1:8000\"",
                "listen = \"127.0.0.1:8000\"\nrequest_timeout = \"https://u:hunter2-fake-pw@h\"",
            )
        } else {
            format!("{ISSUE_EXAMPLE}{bad}")
        };
        let out = run(&cfg, &["check-config"], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("://***@"), "{err}");
    }
}
