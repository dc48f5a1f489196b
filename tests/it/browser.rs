//! The demo page (`static/`) in a real browser: Debian's Chromium, driven by
//! `tests/browser/e2e.js` (playwright-core), uploads with all three methods
//! from ossvend's origin to the embedded OSS sink (run in this process) on
//! another port (real CORS), and the sink's listing confirms the stored bytes; then the same script runs
//! against `ossvend local` alone (embedded STS emulator and OSS sink). Needs `/usr/bin/chromium` and
//! `tests/browser/node_modules`: `scripts/test-deps` installs both.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const GRANT: &str = "browser-upload";

fn browser_config(sts: &StsStub, oss: &EmbeddedOss, static_dir: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
static_dir = "{static_dir}"

[identity]
source = "env"

[sts]
endpoint = "{sts}"
role_arn = "{ROLE_ARN}"
retry_base_delay = "10ms"
{grants}"#,
        static_dir = static_dir.display(),
        sts = sts.endpoint,
        grants = browser_config_grants(&oss.endpoint),
    )
}

/// What e2e.js expects: image/png only, PostObject uploads capped at 4 KiB, and
/// a twin whose policies and URLs live 1 s.
fn browser_config_grants(oss: &str) -> String {
    let grant = |name: &str, extra: &str| {
        format!(
            r#"
[[grants]]
name = "{name}"
bucket = "examplebucket"
region = "cn-hangzhou"
endpoint = "{oss}"
prefix = "uploads/"
content_types = ["image/png"]
max_size_bytes = 4096
{extra}"#
        )
    };
    grant(GRANT, "") + &grant("short-lived", "upload_expires = \"1s\"\n")
}

/// `target/` (or `CARGO_TARGET_DIR`): the binary lives in `<target>/<profile>/`.
fn target_dir() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_ossvend"));
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Fails (never skips) when the browser toolchain is missing.
fn require_browser_deps() -> PathBuf {
    let browser_dir = repo_root().join("tests/browser");
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (Debian package chromium)"));
    }
    if !browser_dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push(format!("{}/node_modules (npm ci there)", browser_dir.display()));
    }
    if Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        missing.push("node on PATH".into());
    }
    assert!(
        missing.is_empty(),
        "the browser test needs {}: run scripts/test-deps first (scripts/test does)",
        missing.join(", ")
    );
    browser_dir
}

/// Runs `tests/browser/e2e.js` against the page at `ossvend` uploading to `oss`;
/// `callbacks` is what the page must show after each upload (`none`, or `expect`:
/// the callback's event for the form and presigned PUT); `context` adds what the
/// servers saw to a failure message.
fn run_e2e(
    ossvend: &str,
    oss: &str,
    (listing, callbacks): (&str, &str),
    artifacts: &Path,
    context: &dyn Fn() -> String,
) {
    let browser_dir = require_browser_deps();
    std::fs::create_dir_all(artifacts).unwrap();
    // Output goes to files: the script is killed if it hangs, and a pipe could fill up.
    let out_path = artifacts.join("browser-e2e.log");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new("node")
        .arg(browser_dir.join("e2e.js"))
        .args([
            "--ossvend",
            ossvend,
            "--oss",
            oss,
            "--grant",
            GRANT,
            "--short-grant",
            "short-lived",
            "--listing",
            listing,
            "--callbacks",
            callbacks,
            "--artifacts",
        ])
        .arg(artifacts)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("node must be installed to run the browser test");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    println!("{output}");
    println!("screenshot: {}", artifacts.join("demo-upload.png").display());
    // The e2e output is printed above; on failure add what the servers saw.
    let context = || format!("(e2e output above and in {})\n{}", out_path.display(), context());
    let Some(status) = status else {
        panic!("tests/browser/e2e.js did not finish in 180 s {}", context());
    };
    assert!(
        status.success(),
        "tests/browser/e2e.js failed ({status}) {}",
        context()
    );
    assert!(
        output.contains("browser: ") && output.contains(" 0 failed"),
        "no summary line {}",
        context()
    );
    for method in ["sts", "post", "presign"] {
        assert!(
            output.contains(&format!("ok   callback shown after {method}")),
            "the page's callback result after {method} was not checked {}",
            context()
        );
    }
    assert!(
        artifacts.join("demo-upload.png").exists(),
        "no screenshot was taken"
    );
}

#[test]
fn demo_page_uploads_with_all_three_methods_in_chromium() {
    let sts = StsStub::start();
    let oss = EmbeddedOss::for_stub(&sts);
    let server = Server::start(browser_config(&sts, &oss, &repo_root().join("static")));
    let context = || {
        format!(
            "OSS sink:\n{}\nossvend logs:\n{}",
            oss.log_text(),
            server.logs.text()
        )
    };
    run_e2e(
        &server.base,
        &oss.endpoint,
        // `serve` adds no callback of its own: the page shows "no callback".
        ("sink", "none"),
        &target_dir().join("test-artifacts"),
        &context,
    );
}

/// The same page and script against `ossvend local` alone: no fake, no other
/// process; the embedded STS emulator and OSS sink do the verifying.
#[test]
fn demo_page_uploads_against_ossvend_local_alone() {
    // The same grants as above, in a local-mode config (endpoints are filled in by local mode).
    let config = format!(
        "{}\n[identity]\nsource = \"env\"\n[sts]\nrole_arn = \"acs:ram::1000000000000001:role/ossvend-local\"\n{}",
        format_args!(
            "[server]\nlisten = \"127.0.0.1:0\"\nstatic_dir = \"{}\"",
            repo_root().join("static").display()
        ),
        browser_config_grants("http://127.0.0.1:1")
    );
    let local = LocalServer::start(Some(&config), &[]);
    let context = || format!("ossvend local logs:\n{}", local.server.logs.text());
    run_e2e(
        &local.server.base,
        &local.oss,
        // Local mode calls back by default and, with no [webhooks] url, answers the
        // upload with the verified event: the page shows it for the form and the PUT.
        ("local", "expect"),
        &target_dir().join("test-artifacts/local"),
        &context,
    );
    // Nothing was written outside the data dir's objects, and the accepted uploads are there.
    assert!(local.data_dir.join("objects").is_dir(), "{}", context());
}

/// Issue 15: a frontend on its own dev server (`http://localhost:<port>`, another
/// loopback origin) `fetch`es the credentials route of `ossvend local` in
/// Chromium. The `content-type: application/json` header makes it a preflighted
/// request, so both the preflight and the GET must carry CORS headers.
#[test]
fn a_page_on_another_loopback_port_fetches_local_credentials() {
    let browser_dir = require_browser_deps();
    let local = LocalServer::start(None, &[]);
    assert!(
        local.server.logs.text().contains("any loopback origin"),
        "local mode does not say it admits loopback origins:\n{}",
        local.server.logs.text()
    );
    let run = run_client(
        {
            let mut cmd = Command::new("node");
            cmd.arg(browser_dir.join("cors.js"))
                .args(["--ossvend", &local.server.base, "--grant", GRANT]);
            cmd
        },
        Duration::from_secs(120),
    );
    println!("{}", run.output);
    assert!(run.succeeded(), "cors.js failed:\n{}", run.output);
    let line = run
        .output
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("{}");
    let result: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(
        result["origin"]
            .as_str()
            .unwrap_or("")
            .starts_with("http://localhost:"),
        "{result}"
    );
    assert_eq!(
        result["status"],
        200,
        "the page could not read the answer: {result}\n{}",
        local.server.logs.text()
    );
    assert!(
        result["keyId"].as_str().is_some_and(|k| k.starts_with("STS.")),
        "{result}"
    );
}
