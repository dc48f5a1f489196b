//! `tests/fakes/fake_sts.py`, the signature-checking fake of STS (and of the identity
//! sources: instance metadata, credentials URI, AssumeRoleWithOIDC), as a child
//! process. Tests that only need AssumeRole in-process use [`super::StsStub`].

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{CALLER_AK, CALLER_SECRET, Captured, http, repo_root};

/// GETs a fake's control endpoint and returns the array under `field`.
pub(super) async fn json_list(client: &reqwest::Client, url: String, field: &str) -> Vec<Value> {
    let v: Value = client.get(url).send().await.unwrap().json().await.unwrap();
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} array in {v}"))
        .clone()
}

/// `tests/fakes/fake_sts.py` on an ephemeral port; killed on drop.
pub struct FakeSts {
    child: Child,
    pub endpoint: String,
    pub output: Captured,
    client: reqwest::Client,
}

impl FakeSts {
    pub fn start() -> FakeSts {
        Self::start_with_keys(&[])
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .client
            .post(format!("{}{path}", self.endpoint))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "fake STS control {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Every AssumeRole request received so far.
    pub async fn calls(&self) -> Vec<Value> {
        json_list(&self.client, format!("{}/_fake/calls", self.endpoint), "calls").await
    }

    pub async fn call_count(&self) -> usize {
        self.calls().await.len()
    }

    #[allow(dead_code)] // the in-process StsStub plays these knobs now; kept for tests folded in later
    /// Queues behaviours for the next verified calls (see the fake's docstring).
    pub async fn script(&self, responses: Value) {
        self.post("/_fake/script", json!({ "responses": responses }))
            .await;
    }

    #[allow(dead_code)] // the in-process StsStub plays these knobs now; kept for tests folded in later
    /// Sets the behaviour used when the script is empty (`{}` = normal).
    pub async fn mode(&self, behaviour: Value) {
        self.post("/_fake/mode", behaviour).await;
    }

    #[allow(dead_code)] // the in-process StsStub plays these knobs now; kept for tests folded in later
    /// Waits until at least `n` calls were recorded.
    pub async fn wait_calls(&self, n: usize, timeout: Duration) -> usize {
        let start = Instant::now();
        loop {
            let c = self.call_count().await;
            if c >= n || start.elapsed() > timeout {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Like [`FakeSts::start`], also accepting these long-term caller keys
    /// (the default [`CALLER_AK`] stays accepted).
    pub fn start_with_keys(keys: &[(&str, &str)]) -> FakeSts {
        let mut cmd = Command::new("python3");
        cmd.arg(repo_root().join("tests/fakes/fake_sts.py"))
            .args(["--port", "0", "--max-session-duration", "43200"])
            .args(["--key", &format!("{CALLER_AK}:{CALLER_SECRET}")]);
        for (ak, sk) in keys {
            cmd.args(["--key", &format!("{ak}:{sk}")]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 must be installed to run the fake STS");
        let output = Captured::default();
        let (tx, rx) = mpsc::channel();
        output.spawn_reader(child.stdout.take().unwrap(), Some(("listening on ", tx)));
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("fake STS did not start");
        FakeSts {
            child,
            endpoint: format!("http://{addr}"),
            output,
            client: http(),
        }
    }

    /// Partial update of the fake instance metadata service (see the fake's docstring).
    pub async fn imds(&self, config: Value) -> Value {
        self.post("/_fake/imds", config).await
    }

    /// Requests the fake instance metadata service received.
    pub async fn imds_calls(&self) -> Vec<Value> {
        json_list(&self.client, format!("{}/_fake/imds", self.endpoint), "calls").await
    }

    /// Partial update of the fake credentials URI (`GET /creds`).
    pub async fn uri(&self, config: Value) -> Value {
        self.post("/_fake/uri", config).await
    }

    /// Requests the fake credentials URI received.
    pub async fn uri_calls(&self) -> Vec<Value> {
        json_list(&self.client, format!("{}/_fake/uri", self.endpoint), "calls").await
    }

    /// Partial update of AssumeRoleWithOIDC: `valid_tokens`, `mode`, `script`.
    pub async fn oidc(&self, config: Value) -> Value {
        self.post("/_fake/oidc", config).await
    }

    /// The secret half of a credential this fake issued (any source), if it did.
    pub async fn issued(&self, access_key_id: &str) -> Option<Value> {
        let r = self
            .client
            .get(format!("{}/_fake/issued/{access_key_id}", self.endpoint))
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            Some(r.json().await.unwrap())
        } else {
            None
        }
    }

    /// Every secret and security token this fake issued so far (STS, OIDC, IMDS, URI).
    pub async fn issued_secrets(&self) -> Vec<String> {
        let mut aks: Vec<String> = Vec::new();
        for c in self
            .calls()
            .await
            .into_iter()
            .chain(self.imds_calls().await)
            .chain(self.uri_calls().await)
        {
            if let Some(ak) = c["access_key_id_issued"].as_str() {
                aks.push(ak.to_string());
            }
        }
        let mut out = Vec::new();
        for ak in aks {
            if let Some(v) = self.issued(&ak).await {
                for field in ["AccessKeySecret", "SecurityToken"] {
                    out.push(v[field].as_str().unwrap().to_string());
                }
            }
        }
        out
    }
}

impl Drop for FakeSts {
    fn drop(&mut self) {
        self.kill();
    }
}
