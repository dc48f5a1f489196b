//! The real `ossvend` binary as a child process (`serve`, `local`, other commands), on
//! an ephemeral loopback port, with its logs captured: for what needs a process
//! (signals, reload, logs, sockets, the CLI, real clients).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::{CALLER_AK, CALLER_SECRET};

/// Lines a child process writes (collected by a background thread), or an in-process `TestApp` logs.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<String>>, Arc<AtomicUsize>);

/// Where an in-process subscriber writes (see `TestApp`).
impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
    pub(super) fn spawn_reader<R: Read + Send + 'static>(
        &self,
        r: R,
        first_match: Option<(&'static str, mpsc::Sender<String>)>,
    ) {
        let buf = self.0.clone();
        let open = self.1.clone();
        open.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || {
            let mut first = first_match;
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if let Some((needle, tx)) = &first
                    && let Some(pos) = line.find(needle)
                {
                    // The address runs up to the first character that cannot be in it (JSON logs quote it).
                    let rest = &line[pos + needle.len()..];
                    let addr: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
                        .collect();
                    let _ = tx.send(addr);
                    first = None;
                }
                let mut b = buf.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
    /// Waits (at most `timeout`) until every reader has seen its pipe close: after
    /// the child exits, its last lines may still be on their way to the buffer.
    pub fn wait_closed(&self, timeout: Duration) {
        let start = Instant::now();
        while self.1.load(Ordering::SeqCst) > 0 && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    /// Waits until `needle` appears in the output.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.text().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

/// The real `ossvend` binary; killed on drop. Its whole stderr (the logs) is kept.
pub struct Server {
    child: Child,
    pub base: String,
    pub logs: Captured,
    _dir: tempfile::TempDir,
}

pub struct ServerOptions<'a> {
    pub config: String,
    pub env: Vec<(&'a str, &'a str)>,
}

impl<'a> ServerOptions<'a> {
    pub fn new(config: String) -> Self {
        ServerOptions {
            config,
            env: Vec::new(),
        }
    }
    pub fn env(mut self, k: &'a str, v: &'a str) -> Self {
        self.env.push((k, v));
        self
    }
}

/// The command with a clean environment: only what the test sets, plus the caller key
/// (which the test's own `env` may override).
pub fn ossvend_command(dir: &Path, config: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut all = vec![
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", CALLER_AK),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", CALLER_SECRET),
    ];
    all.extend_from_slice(env);
    ossvend_command_bare(dir, config, args, &all)
}

/// [`ossvend_command`] without the default caller key: only PATH, RUST_LOG and `env`.
pub fn ossvend_command_bare(dir: &Path, config: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let path = dir.join("ossvend.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ossvend"));
    cmd.args(args)
        .arg("--config")
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Server {
    pub fn start(config: String) -> Server {
        Self::start_with(ServerOptions::new(config))
    }

    pub fn start_with(opts: ServerOptions<'_>) -> Server {
        Self::try_start_opts(opts, true).unwrap_or_else(|logs| panic!("ossvend did not start; logs:\n{logs}"))
    }

    /// Spawns `cmd` (which owns `dir`) with its stderr captured and waits up to 30 s
    /// for `marker` followed by the address; `Err(logs)` when it exits or never says it.
    pub fn spawn_listening(
        cmd: &mut Command,
        dir: tempfile::TempDir,
        marker: &'static str,
    ) -> Result<Server, String> {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let logs = Captured::default();
        let (tx, rx) = mpsc::channel();
        logs.spawn_reader(child.stderr.take().unwrap(), Some((marker, tx)));
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100)); // let the reader drain
                return Err(logs.text());
            }
        };
        Ok(Server {
            child,
            base: format!("http://{addr}"),
            logs,
            _dir: dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.logs.wait_closed(Duration::from_secs(10));
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "ossvend did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `ossvend serve` WITHOUT `ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET` in its
    /// environment (only PATH, RUST_LOG and `opts.env`); panics if it does not start.
    #[allow(dead_code)] // the identity tests run in-process now; kept for tests folded in later
    pub fn start_bare(opts: ServerOptions<'_>) -> Server {
        Self::try_start_opts(opts, false)
            .unwrap_or_else(|logs| panic!("ossvend did not start; logs:\n{logs}"))
    }

    /// Starts `ossvend serve`, with (`caller_key`) or without the default caller key;
    /// `Err(logs)` when it exits or does not listen within 30 s.
    pub fn try_start_opts(opts: ServerOptions<'_>, caller_key: bool) -> Result<Server, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = if caller_key {
            ossvend_command(dir.path(), &opts.config, &["serve"], &opts.env)
        } else {
            ossvend_command_bare(dir.path(), &opts.config, &["serve"], &opts.env)
        };
        Self::spawn_listening(&mut cmd, dir, "ossvend listening on http://")
    }

    // Operations (issue 8): rewriting the config of a running server, signals,
    // the admin listener.
    /// The config file the server was started with.
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("ossvend.toml")
    }

    /// Replaces the config file atomically (write, then rename), so a reload
    /// never reads half a file.
    pub fn rewrite_config(&self, text: &str) {
        let tmp = self._dir.path().join("ossvend.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} failed");
    }

    /// `http://ADDR` of the admin listener, from its start-up log line.
    pub fn admin_base(&self) -> String {
        let text = self.logs.text();
        let needle = "ossvend admin listening on http://";
        let rest = text
            .split(needle)
            .nth(1)
            .unwrap_or_else(|| panic!("no admin listener in the logs:\n{text}"));
        let addr: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
            .collect();
        format!("http://{addr}")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ossvend local` on free loopback ports; killed on drop (through `server`).
pub struct LocalServer {
    pub server: Server,
    /// The embedded OSS sink's endpoint, e.g. `http://127.0.0.1:41234`.
    pub oss: String,
    pub data_dir: PathBuf,
}

impl LocalServer {
    /// Runs `ossvend local --listen 127.0.0.1:0 --data-dir <temp> [--config <config>] extra…`
    /// with only PATH and RUST_LOG in its environment; panics if it does not start.
    pub fn start(config: Option<&str>, extra: &[&str]) -> LocalServer {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ossvend"));
        cmd.args(["local", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info");
        if let Some(text) = config {
            let path = dir.path().join("local.toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        }
        let server = Server::spawn_listening(&mut cmd, dir, "ossvend local listening on http://")
            .unwrap_or_else(|logs| panic!("ossvend local did not start; logs:\n{logs}"));
        let logs = &server.logs;
        // The same log line names the sink: oss=http://127.0.0.1:PORT, or
        // "oss":"http://…" in JSON logs (the reader reports the address before it
        // stores the line, so wait for the text).
        let start = Instant::now();
        let needle = || {
            let text = logs.text();
            ["oss=http://", "\"oss\":\"http://"]
                .into_iter()
                .find(|n| text.contains(n))
        };
        while needle().is_none() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = logs.text();
        let oss: String = text
            .split(needle().unwrap_or("oss=http://"))
            .nth(1)
            .map(|rest| {
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
                    .collect()
            })
            .unwrap_or_else(|| panic!("no oss= in the start-up line:\n{text}"));
        LocalServer {
            server,
            oss: format!("http://{oss}"),
            data_dir,
        }
    }
}
