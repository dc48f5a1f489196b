//! Shared harness of the integration tests (one test binary, `tests/it`):
//! [`TestApp`] runs the real router in this process; [`StsStub`] is an in-process
//! STS on an ephemeral port; [`FakeSts`] is the Python fake for what it alone plays
//! (identity sources, exact wire checks); [`Server`]/[`LocalServer`] run the real
//! binary where a process matters; [`EmbeddedOss`] and [`s3peer`] verify uploads.

use std::path::PathBuf;
use std::time::Duration;

mod app;
mod clients;
mod embedded_oss;
mod fake_sts;
mod process;
pub mod s3peer;
mod sts_stub;

pub use app::*;
pub use clients::*;
pub use embedded_oss::*;
pub use fake_sts::*;
pub use process::*;
pub use sts_stub::*;

/// The fake caller key the fake STS accepts. Obviously not a real credential.
pub const CALLER_AK: &str = "LTAIfakeTestKeyId0001";
pub const CALLER_SECRET: &str = "fakeTestSecretDoNotUse0001";
pub const ROLE_ARN: &str = "acs:ram::1234567890123456:role/oss-upload";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn http() -> reqwest::Client {
    ossvend::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A config with two grants, pointed at `sts_endpoint`, listening on an ephemeral port.
pub fn config(sts_endpoint: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
default_grant = "browser-upload"

[identity]
source = "env"

[sts]
endpoint = "{sts_endpoint}"
role_arn = "{ROLE_ARN}"
max_retries = 2
retry_base_delay = "10ms"

[[grants]]
name = "browser-upload"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "uploads/"
actions = ["oss:PutObject"]

[[grants]]
name = "avatars"
bucket = "examplebucket"
region = "cn-hangzhou"
prefix = "avatars/"
actions = ["oss:PutObject", "oss:GetObject"]
duration_seconds = 7200
session_name = "avatars-session"
"#
    )
}

/// One at a time: the tests that check timeouts on the wire or timings at STS
/// (connections, sts_outage, fleet). In one test binary they would otherwise run side by side, each
/// one's hundreds of sockets or requests delaying the other's clock checks.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds the timing tests' turn (see [`SERIAL`]) in an async test.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Holds the timing tests' turn in a plain `#[test]` (not inside a runtime).
pub fn serial_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.blocking_lock()
}

/// The Python interpreter of the test venv (made by `scripts/test-deps`).
pub fn venv_python() -> PathBuf {
    let p = repo_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test-deps (scripts/test does) first",
        p.display()
    );
    p
}

/// True if a log line has `key` = `value` in any of tracing's renderings:
/// `key=value`, `key="value"` or JSON `"key":"value"`.
pub fn log_has_field(logs: &str, key: &str, value: &str) -> bool {
    logs.lines().any(|l| {
        l.contains(&format!("{key}=\"{value}\""))
            || l.contains(&format!("\"{key}\":\"{value}\""))
            || l.split(|c: char| c.is_whitespace() || c == ',')
                .any(|w| w == format!("{key}={value}"))
    })
}

/// The `fields` object of a JSON body, in document order (a `serde_json::Value`
/// would sort it, and the order of form fields is part of the contract).
pub fn ordered_fields(raw: &str) -> Vec<(String, String)> {
    struct Fields(Vec<(String, String)>);
    impl<'de> serde::Deserialize<'de> for Fields {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Fields;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object of strings")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Fields, A::Error> {
                    let mut out = Vec::new();
                    while let Some(kv) = m.next_entry::<String, String>()? {
                        out.push(kv);
                    }
                    Ok(Fields(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    #[derive(serde::Deserialize)]
    struct Body {
        fields: Fields,
    }
    serde_json::from_str::<Body>(raw)
        .expect("a body with fields")
        .fields
        .0
}
