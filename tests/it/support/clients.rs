//! Real clients (issue 6): ali-oss under Node (tests/clients/), the Python
//! credentials SDKs and boto3 (.venv), each run as a child process with a
//! clean environment and a bounded run time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::repo_root;

/// `tests/clients/`: the Node project with the pinned ali-oss, and the client scripts.
pub fn clients_dir() -> PathBuf {
    repo_root().join("tests/clients")
}

/// Fails (never skips) when a real client is not installed: `scripts/test-deps`
/// installs ali-oss (tests/clients/node_modules) and the Python clients (.venv).
pub fn require_client_deps() {
    let mut missing = Vec::new();
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !node_ok {
        missing.push("node on PATH".to_string());
    }
    let alioss = clients_dir().join("node_modules/ali-oss/package.json");
    match std::fs::read_to_string(&alioss) {
        Ok(text) if text.contains("\"version\": \"6.23.0\"") => {}
        Ok(_) => missing.push(format!("{} is not ali-oss 6.23.0", alioss.display())),
        Err(_) => missing.push(format!("{} (npm ci in tests/clients)", alioss.display())),
    }
    let python = repo_root().join(".venv/bin/python");
    let imports_ok = python.exists()
        && Command::new(&python)
            .args([
                "-c",
                "import boto3, alibabacloud_credentials, alibabacloud_oss_v2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !imports_ok {
        missing.push(format!(
            "{} with boto3, alibabacloud-credentials and alibabacloud-oss-v2",
            python.display()
        ));
    }
    assert!(
        missing.is_empty(),
        "the client tests need {}: run scripts/test-deps first (scripts/test does)",
        missing.join(", ")
    );
}

/// `program` with an empty environment but `PATH` and `HOME=home`: no credential
/// variable or profile of the machine running the tests can leak into a client.
pub fn client_command(program: impl AsRef<std::ffi::OsStr>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("LANG", "C.UTF-8");
    cmd
}

/// What a client process printed (stdout and stderr, interleaved) and how it ended.
#[derive(Debug)]
pub struct ClientRun {
    /// `None`: killed after the time limit.
    pub code: Option<i32>,
    pub output: String,
}

impl ClientRun {
    pub fn succeeded(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `cmd` to completion, or kills it after `timeout`. Output goes to a file
/// (a pipe could fill up while nobody reads it). Blocks the calling thread.
pub fn run_client(mut cmd: Command, timeout: Duration) -> ClientRun {
    let out = tempfile::NamedTempFile::new().unwrap();
    // One append-mode handle shared by both streams: nothing overwrites anything.
    let file = std::fs::OpenOptions::new().append(true).open(out.path()).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s.code().unwrap_or(-1));
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ClientRun {
        code,
        output: std::fs::read_to_string(out.path()).unwrap_or_default(),
    }
}
