//! Every client family's native credential format, proven with the REAL clients
//! (issue 6; docs/signing.md §6, §12). Each test drives a real SDK against the running
//! `ossvend` on loopback and spends what it vends on a verifying peer:
//!
//! - ali-oss 6.23.0 (Node, `tests/clients/alioss.js`): `refreshSTSToken` fetching the
//!   default body; V4 `put` and `multipartUpload` to the embedded OSS sink, with a refresh in
//!   the middle of the upload;
//! - alibabacloud-credentials 1.0.12 (`ALIBABA_CLOUD_CREDENTIALS_URI`) feeding
//!   alibabacloud-oss-v2 1.4.1 (V4) to the embedded OSS sink (`tests/clients/alibaba_uri.py`);
//! - boto3 1.44.5 with `AWS_CONTAINER_CREDENTIALS_FULL_URI` (`format=aws`) and with
//!   `credential_process = ossvend credential-process …`, `put_object` to the
//!   in-process s3s peer (`tests/clients/boto3_put.py`);
//! - refusals: a wrong API key fails each AWS path (and ossvend logs the 401), an
//!   unknown `format` is a 400.
//!
//! The embedded OSS sink checks V4 signatures, the exact issued security token and the session
//! policy; the s3s peer checks SigV4 against the secret registered for the vended key.
//! Missing clients fail the tests (`scripts/test-deps` installs them); nothing is skipped.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::s3peer::S3Peer;
use crate::support::*;
use ossvend::identity::key_id_prefix;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const OSS_BUCKET: &str = "examplebucket";
const S3_BUCKET: &str = "s3bucket";
/// The API key the AWS clients present (a test value; the config holds its SHA-256).
const API_KEY: &str = "ovk_clientsTestKeyNotARealSecret000000000001";
const WRONG_KEY: &str = "ovk_clientsTestKeyNotARealSecret000000000002";
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// The endpoint of a grant a test does not upload to (nothing ever connects to it).
const UNUSED: &str = "http://127.0.0.1:9";

/// Grant `web`: anonymous (loopback), uploads to the embedded OSS sink. Grant `aws`: API key
/// only, the bucket of the s3s peer.
fn clients_config(sts: &StsStub, oss_endpoint: &str, s3_endpoint: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
default_grant = "web"

[identity]
source = "env"

[sts]
endpoint = "{sts}"
role_arn = "{ROLE_ARN}"
retry_base_delay = "10ms"

[[auth.api_keys]]
id = "aws-client"
sha256 = "{digest}"

[[grants]]
name = "web"
bucket = "{OSS_BUCKET}"
region = "cn-hangzhou"
endpoint = "{oss_endpoint}"
prefix = "uploads/"

[[grants]]
name = "aws"
bucket = "{S3_BUCKET}"
region = "cn-hangzhou"
prefix = "uploads/"
s3_endpoint = "{s3_endpoint}"
auth = ["api_key"]
"#,
        sts = sts.endpoint,
        digest = ossvend::auth::api_key::hash_key(API_KEY),
    )
}

fn script(name: &str) -> PathBuf {
    clients_dir().join(name)
}

/// The first 16 hex digits of SHA-256(`s`), as boto3_put.py prints a token.
fn sha16(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..8])
}

/// Runs a client on a blocking thread (the fakes and the server are other processes).
async fn run(cmd: Command) -> ClientRun {
    tokio::task::spawn_blocking(move || run_client(cmd, RUN_LIMIT))
        .await
        .unwrap()
}

// ---------------------------------------------------------------- ali-oss

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ali_oss_refresh_sts_token_uploads_v4_and_refreshes_mid_upload() {
    require_client_deps();
    let sts = StsStub::start();
    // The first credential lives 100 s: above min_remaining (60 s) but inside
    // refresh_before (120 s), so ossvend's second answer starts a background refresh
    // and its third is a new credential (as in tests/it/server.rs).
    sts.script(json!([{ "expires_in": 100 }])).await;
    let oss = EmbeddedOss::for_stub(&sts);
    let server = Server::start_with(
        ServerOptions::new(clients_config(&sts, &oss.endpoint, UNUSED))
            .env("OSSVEND_STS_MIN_REMAINING", "60s")
            .env("OSSVEND_STS_REFRESH_BEFORE", "120s"),
    );
    let home = tempfile::tempdir().unwrap();
    let mut cmd = client_command("node", home.path());
    cmd.current_dir(clients_dir())
        .arg(script("alioss.js"))
        .args(["--creds-url", &server.url("/v1/grants/web/credentials")])
        .args(["--interval", "500"]);
    let r = run(cmd).await;
    print!("{}", r.output);
    let context = || {
        format!(
            "node alioss.js: {:?}\n{}\nOSS sink:\n{}\nossvend logs:\n{}",
            r.code,
            r.output,
            oss.log_text(),
            server.logs.text()
        )
    };
    assert!(r.succeeded(), "{}", context());

    // What reached the embedded OSS sink from the documented wrapper, in order.
    let requests: Vec<Value> = oss
        .requests()
        .await
        .into_iter()
        .filter(|q| {
            q["key"]
                .as_str()
                .unwrap_or_default()
                .starts_with("uploads/alioss/")
        })
        .collect();
    let shape: Vec<String> = requests
        .iter()
        .map(|q| {
            let query: Vec<&str> = q["query"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            format!("{} {}", q["method"].as_str().unwrap(), query.join("&"))
        })
        .collect();
    assert_eq!(
        shape,
        [
            "PUT ",
            "POST uploads",
            "PUT partNumber&uploadId",
            "PUT partNumber&uploadId",
            "PUT partNumber&uploadId",
            "POST uploadId"
        ],
        "{}",
        context()
    );
    for q in &requests {
        assert_eq!(
            (q["verdict"].as_str(), q["auth"].as_str()),
            (Some("OK"), Some("v4-header")),
            "{q}\n{}",
            context()
        );
    }
    let keys: Vec<&str> = requests
        .iter()
        .map(|q| q["access_key_id"].as_str().unwrap())
        .collect();
    let (first, last) = (keys[0], keys[keys.len() - 1]);
    assert_ne!(first, last, "no refresh reached the requests: {keys:?}");
    // put and initiate with the first credential; from the first part on, the new one
    // (the embedded OSS sink accepts a key only with exactly its own issued token).
    assert_eq!(&keys[..2], [first, first], "{keys:?}");
    assert!(keys[2..].iter().all(|k| *k == last), "{keys:?}");
    let issued: Vec<String> = sts
        .calls()
        .await
        .iter()
        .filter_map(|c| c["access_key_id_issued"].as_str().map(str::to_owned))
        .collect();
    let issued: Vec<String> = issued.iter().map(|k| key_id_prefix(k)).collect();
    assert_eq!(issued, [first, last], "one AssumeRole each, both from ossvend");
    let now: Value = http()
        .get(server.url("/v1/grants/web/credentials"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        key_id_prefix(now["AccessKeyId"].as_str().unwrap()),
        last,
        "the new credential is the one ossvend serves"
    );

    // The bytes, as sent.
    assert_eq!(
        oss.object(OSS_BUCKET, "uploads/alioss/v4-put.txt")
            .await
            .as_deref(),
        Some(&b"hello from ali-oss"[..])
    );
    let expected: Vec<u8> = (0..250 * 1024).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        oss.object(OSS_BUCKET, "uploads/alioss/multipart.bin").await,
        Some(expected)
    );

    // The probe: ossvend's body returned unchanged from refreshSTSToken. ali-oss merges
    // every key into its options; an `Endpoint` string would replace the parsed URL
    // object (the next request would have no host), which is why the body says
    // `OssEndpoint`. The raw body must keep working after a refresh.
    let probe = r
        .output
        .lines()
        .find(|l| l.contains("returning ossvend's body unchanged"))
        .unwrap_or_else(|| panic!("no probe line\n{}", context()));
    assert!(
        probe.contains("options.endpoint object -> object") && probe.contains("put after refresh -> 200"),
        "ali-oss breaks on ossvend's raw body after a refresh\n{probe}"
    );
    println!(
        "clients: ali-oss 6.23.0 refreshSTSToken <- /v1/grants/web/credentials: V4 put + multipartUpload \
         verified by the embedded OSS sink, refreshed {first} -> {last} mid-upload: OK"
    );
}

// ---------------------------------------------------------------- Alibaba credentials URI

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alibabacloud_credentials_uri_feeds_oss_v2_upload() {
    require_client_deps();
    let sts = StsStub::start();
    let oss = EmbeddedOss::for_stub(&sts);
    let server = Server::start(clients_config(&sts, &oss.endpoint, UNUSED));
    let home = tempfile::tempdir().unwrap();
    let key = "uploads/python/oss-v2.txt";
    let mut cmd = client_command(venv_python(), home.path());
    cmd.arg(script("alibaba_uri.py"))
        .args(["--oss-endpoint", &oss.endpoint, "--region", "cn-hangzhou"])
        .args(["--bucket", OSS_BUCKET, "--key", key])
        .env(
            "ALIBABA_CLOUD_CREDENTIALS_URI",
            server.url("/v1/grants/web/credentials"),
        )
        .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true");
    let r = run(cmd).await;
    print!("{}", r.output);
    let context = || {
        format!(
            "alibaba_uri.py: {:?}\n{}\nOSS sink:\n{}\nossvend logs:\n{}",
            r.code,
            r.output,
            oss.log_text(),
            server.logs.text()
        )
    };
    assert!(r.succeeded(), "{}", context());
    assert!(
        r.output.contains("provider default/credential_uri"),
        "the default chain did not end at the URI provider\n{}",
        context()
    );

    let served: Value = http()
        .get(server.url("/v1/grants/web/credentials"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ak = served["AccessKeyId"].as_str().unwrap();
    let requests = oss.requests().await;
    let put: Vec<&Value> = requests.iter().filter(|q| q["key"] == key).collect();
    assert_eq!(put.len(), 1, "{requests:?}");
    assert_eq!(
        (put[0]["verdict"].as_str(), put[0]["auth"].as_str()),
        (Some("OK"), Some("v4-header")),
        "{}",
        context()
    );
    assert_eq!(
        put[0]["access_key_id"],
        key_id_prefix(ak),
        "signed with ossvend's credential"
    );
    assert_eq!(
        oss.object(OSS_BUCKET, key).await.as_deref(),
        Some(&b"hello from alibabacloud-oss-v2"[..])
    );
    assert_eq!(sts.call_count().await, 1);
    println!(
        "clients: alibabacloud-credentials 1.0.12 ALIBABA_CLOUD_CREDENTIALS_URI -> alibabacloud-oss-v2 1.4.1 \
         V4 put_object verified by the embedded OSS sink (signature, token, session policy): OK"
    );
}

// ---------------------------------------------------------------- AWS SDKs (boto3)

struct Aws {
    peer: S3Peer,
    _sts: StsStub,
    server: Server,
    /// Holds each run's HOME (removed on drop).
    dir: tempfile::TempDir,
}

impl Aws {
    /// The peer and ossvend; the credential ossvend vends for grant `aws` (the same
    /// cache entry the clients will get) is registered with the peer.
    async fn start() -> (Aws, Value) {
        let peer = S3Peer::start(&[S3_BUCKET]);
        let sts = StsStub::start();
        let server = Server::start(clients_config(&sts, UNUSED, &peer.endpoint));
        let r = http()
            .get(server.url("/v1/grants/aws/credentials?format=aws"))
            .header("x-api-key", API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let c: Value = r.json().await.unwrap();
        peer.register(
            c["AccessKeyId"].as_str().unwrap(),
            c["SecretAccessKey"].as_str().unwrap(),
        );
        (
            Aws {
                peer,
                _sts: sts,
                server,
                dir: tempfile::tempdir().unwrap(),
            },
            c,
        )
    }

    fn credentials_url(&self) -> String {
        self.server.url("/v1/grants/aws/credentials")
    }

    /// A fresh, empty HOME for one client run (no `~/.aws` unless the run writes one).
    fn new_home(&self) -> PathBuf {
        tempfile::Builder::new()
            .prefix("home")
            .tempdir_in(self.dir.path())
            .unwrap()
            .keep()
    }

    /// boto3_put.py with `home` and the no-IMDS switch; the credential source is the caller's.
    fn boto3(&self, home: &std::path::Path, key: &str) -> Command {
        let mut cmd = client_command(venv_python(), home);
        cmd.arg(script("boto3_put.py"))
            .args(["--endpoint", &self.peer.endpoint, "--region", "cn-hangzhou"])
            .args(["--bucket", S3_BUCKET, "--key", key])
            .env("AWS_EC2_METADATA_DISABLED", "true");
        cmd
    }

    /// boto3 with `AWS_CONTAINER_CREDENTIALS_FULL_URI=…?format=aws` and `token`.
    fn container(&self, key: &str, token: &str) -> Command {
        let mut cmd = self.boto3(&self.new_home(), key);
        cmd.env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{}?format=aws", self.credentials_url()),
        )
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", token);
        cmd
    }

    /// boto3 with `~/.aws/config` naming `ossvend credential-process` and a key file.
    fn process(&self, key: &str, api_key: &str) -> Command {
        let home = self.new_home();
        let key_file = home.join("ossvend-api-key");
        std::fs::write(&key_file, format!("{api_key}\n")).unwrap();
        let aws_dir = home.join(".aws");
        std::fs::create_dir_all(&aws_dir).unwrap();
        std::fs::write(
            aws_dir.join("config"),
            format!(
                "[default]\ncredential_process = {} credential-process --url {} --api-key-file {}\n",
                env!("CARGO_BIN_EXE_ossvend"),
                self.credentials_url(),
                key_file.display()
            ),
        )
        .unwrap();
        self.boto3(&home, key)
    }

    fn context(&self, r: &ClientRun) -> String {
        format!(
            "boto3_put.py: {:?}\n{}\nossvend logs:\n{}",
            r.code,
            r.output,
            self.server.logs.text()
        )
    }

    /// The client stored the object with the vended credential.
    #[track_caller]
    fn assert_stored(&self, r: &ClientRun, c: &Value, key: &str, method: &str) {
        assert!(r.succeeded(), "{}", self.context(r));
        let ak = c["AccessKeyId"].as_str().unwrap();
        let token = c["Token"].as_str().unwrap();
        assert!(
            r.output.contains(&format!("credentials via {method}, ak {ak}"))
                && r.output.contains(&format!("token sha256 {}", sha16(token))),
            "boto3 did not use the vended credential via {method}\n{}",
            self.context(r)
        );
        assert_eq!(
            self.peer.object(S3_BUCKET, key).as_deref(),
            Some(&b"hello from boto3"[..])
        );
        let lookups = self.peer.lookups();
        assert!(
            !lookups.is_empty() && lookups.iter().all(|k| k == ak),
            "{lookups:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_container_credentials_full_uri_format_aws() {
    require_client_deps();
    let (aws, c) = Aws::start().await;
    let key = "uploads/boto3/container.txt";
    let r = run(aws.container(key, API_KEY)).await;
    print!("{}", r.output);
    aws.assert_stored(&r, &c, key, "container-role");
    println!(
        "clients: boto3 1.44.5 AWS_CONTAINER_CREDENTIALS_FULL_URI (?format=aws, bare API key) -> \
         put_object verified by the s3s peer: OK"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_credential_process_runs_ossvend() {
    require_client_deps();
    let (aws, c) = Aws::start().await;
    let key = "uploads/boto3/process.txt";
    let r = run(aws.process(key, API_KEY)).await;
    print!("{}", r.output);
    aws.assert_stored(&r, &c, key, "custom-process");
    println!(
        "clients: boto3 1.44.5 credential_process = ossvend credential-process -> put_object \
         verified by the s3s peer: OK"
    );
}

/// botocore turns either failure into an exception before any S3 request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_api_key_fails_each_aws_path_and_is_logged() {
    require_client_deps();
    let (aws, _) = Aws::start().await;
    for (path, provider) in [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "container-role"),
        ("credential_process", "custom-process"),
    ] {
        let cmd = if provider == "container-role" {
            aws.container("uploads/boto3/refused.txt", WRONG_KEY)
        } else {
            aws.process("uploads/boto3/refused.txt", WRONG_KEY)
        };
        let before = count_401(&aws.server.logs.text());
        let r = run(cmd).await;
        print!("{}", r.output);
        assert_eq!(r.code, Some(2), "boto3 must raise ({path})\n{}", aws.context(&r));
        assert!(
            r.output.contains("credentials refused")
                && r.output.contains(&format!("from {provider}"))
                && r.output.contains("401"),
            "{path}\n{}",
            aws.context(&r)
        );
        assert!(
            wait_until(|| count_401(&aws.server.logs.text()) > before).await,
            "ossvend did not log a 401 for {path}\n{}",
            aws.context(&r)
        );
        println!("clients: boto3 {path} with a wrong API key -> raised, ossvend logged 401: OK");
    }
    assert!(aws.peer.keys(S3_BUCKET).is_empty());
    assert!(aws.peer.lookups().is_empty(), "no request reached the peer");
    assert!(
        !aws.server.logs.text().contains(WRONG_KEY),
        "a key reached the logs"
    );
}

/// Polls `f` for up to 5 s (log lines arrive through a reader thread).
async fn wait_until(f: impl Fn() -> bool) -> bool {
    for _ in 0..250 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Request log lines of ossvend answering 401 on grant `aws`'s credentials route.
fn count_401(logs: &str) -> usize {
    logs.lines()
        .filter(|l| l.contains("path=/v1/grants/aws/credentials") && log_has_field(l, "status", "401"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_format_is_a_400() {
    let sts = StsStub::start();
    let server = Server::start(clients_config(&sts, UNUSED, UNUSED));
    for path in [
        "/v1/grants/web/credentials?format=bogus",
        "/get_sts_token_for_oss_upload?format=bogus",
    ] {
        let r = http().get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "unknown_format", "{path}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("default, aws, camel, credential-process"),
            "{body}"
        );
    }
    println!("clients: ?format=bogus -> 400 unknown_format: OK");
}
