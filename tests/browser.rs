//! The demo page (`static/`) in a real browser: Debian's Chromium, driven by
//! `tests/browser/e2e.js` (playwright-core), uploads with all three methods
//! from ossvend's origin to the fake OSS on another port (real CORS), and the
//! fake's control API confirms the stored bytes. Needs `/usr/bin/chromium` and
//! `tests/browser/node_modules`: `scripts/test-deps` installs both.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const GRANT: &str = "browser-upload";

fn browser_config(sts: &FakeSts, oss: &FakeOss, static_dir: &Path) -> String {
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

[[grants]]
name = "{GRANT}"
bucket = "examplebucket"
region = "cn-hangzhou"
endpoint = "{oss}"
prefix = "uploads/"
content_types = ["image/png"]
max_size_bytes = 4096
"#,
        static_dir = static_dir.display(),
        sts = sts.endpoint,
        oss = oss.endpoint,
    )
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

#[test]
fn demo_page_uploads_with_all_three_methods_in_chromium() {
    let browser_dir = require_browser_deps();
    let artifacts = target_dir().join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();

    let sts = FakeSts::start();
    let oss = FakeOss::start(&sts, &[]);
    let server = Server::start(browser_config(&sts, &oss, &repo_root().join("static")));

    // Output goes to files: the script is killed if it hangs, and a pipe could fill up.
    let out_path = artifacts.join("browser-e2e.log");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new("node")
        .arg(browser_dir.join("e2e.js"))
        .args([
            "--ossvend",
            &server.base,
            "--oss",
            &oss.endpoint,
            "--grant",
            GRANT,
            "--artifacts",
        ])
        .arg(&artifacts)
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
    let context = || {
        format!(
            "(e2e output above and in {})\nfake OSS:\n{}\nossvend logs:\n{}",
            out_path.display(),
            oss.output.text(),
            server.logs.text()
        )
    };
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
    assert!(
        artifacts.join("demo-upload.png").exists(),
        "no screenshot was taken"
    );
}
