//! An independent, verifying S3 endpoint in-process: `s3s` + `s3s-fs` (pinned 0.14.1)
//! on an ephemeral loopback port, storing objects in a temp dir. It checks SigV4
//! header and query signatures, presigned-URL expiry and every POST policy
//! condition, so it judges ossvend's `s3-v4` presigned URLs and POST policies.
//!
//! The key table is filled at run time ([`S3Peer::register`]) with whatever
//! credential ossvend signs with (the grant's cached STS credential).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::{S3Auth, SecretKey};
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Request, S3Result, s3_error};

#[derive(Default)]
struct Keys {
    secrets: HashMap<String, String>,
    /// Every access key id the peer was asked about, in order.
    lookups: Vec<String>,
}

/// The peer's `S3Auth`: a key table the test fills while the peer runs.
#[derive(Clone, Default)]
struct PeerAuth(Arc<Mutex<Keys>>);

#[async_trait::async_trait]
impl S3Auth for PeerAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        let mut keys = self.0.lock().unwrap();
        keys.lookups.push(access_key.to_string());
        match keys.secrets.get(access_key) {
            Some(secret) => Ok(SecretKey::from(secret.as_str())),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

/// What the peer stored for one object, read back through the S3 API (`HeadObject`).
#[derive(Debug)]
pub struct ObjectInfo {
    pub content_type: Option<String>,
    pub content_length: Option<i64>,
}

/// The running peer; stopped (and its directory removed) on drop.
pub struct S3Peer {
    /// `http://127.0.0.1:PORT`, for a grant's `s3_endpoint` (path-style on loopback).
    pub endpoint: String,
    root: PathBuf,
    auth: PeerAuth,
    /// A second s3s-fs view of the same directory, for reading back. Made before
    /// the server starts: `FileSystem::new` sweeps leftover temp files.
    reader: s3s_fs::FileSystem,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl S3Peer {
    /// Starts the peer with `buckets` created (empty).
    ///
    /// It runs on its own thread and Tokio runtime, so blocking calls in a test
    /// (starting ossvend, `std::thread::sleep`) never stall it.
    pub fn start(buckets: &[&str]) -> S3Peer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for b in buckets {
            // What s3s-fs's CreateBucket does: a bucket is a directory under the root.
            std::fs::create_dir(root.join(b)).unwrap();
        }
        let auth = PeerAuth::default();
        let reader = s3s_fs::FileSystem::new(&root).expect("s3s-fs root");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (fs_root, peer_auth) = (root.clone(), auth.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let fs = s3s_fs::FileSystem::new(&fs_root).expect("s3s-fs root");
                let mut b = S3ServiceBuilder::new(fs);
                b.set_auth(peer_auth);
                let service = b.build();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => {
                            let Ok((sock, _)) = accepted else { continue };
                            let svc = service.clone();
                            tokio::spawn(async move {
                                let _ = Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(sock), svc)
                                    .await;
                            });
                        }
                    }
                }
            });
            rt.shutdown_timeout(Duration::from_secs(2));
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("s3s peer did not start");
        S3Peer {
            endpoint: format!("http://{addr}"),
            root,
            auth,
            reader,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Makes the peer accept SigV4 signatures by `access_key_id` with `secret`.
    pub fn register(&self, access_key_id: &str, secret: &str) {
        self.auth
            .0
            .lock()
            .unwrap()
            .secrets
            .insert(access_key_id.to_string(), secret.to_string());
    }

    /// Access key ids the peer looked up so far (one per signature it checked).
    pub fn lookups(&self) -> Vec<String> {
        self.auth.0.lock().unwrap().lookups.clone()
    }

    /// The stored bytes of `bucket/key`, read from the data directory.
    pub fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let path = self.root.join(bucket).join(key);
        path.is_file().then(|| std::fs::read(path).unwrap())
    }

    /// Every object key in `bucket`, sorted (s3s-fs keeps its metadata and temp
    /// files outside bucket directories; `.tmp.*` part files are skipped anyway).
    pub fn keys(&self, bucket: &str) -> BTreeSet<String> {
        fn walk(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.map_while(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                let path = e.path();
                if path.is_dir() {
                    walk(&path, &format!("{prefix}{name}/"), out);
                } else if !name.starts_with(".tmp.") {
                    out.insert(format!("{prefix}{name}"));
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.root.join(bucket), "", &mut out);
        out
    }

    /// `HeadObject` through s3s-fs's own S3 implementation (no HTTP, no auth):
    /// what a later GET would answer. `None` when there is no such object.
    pub async fn head(&self, bucket: &str, key: &str) -> Option<ObjectInfo> {
        let input = s3s::dto::HeadObjectInput::builder()
            .bucket(bucket.to_string())
            .key(key.to_string())
            .build()
            .unwrap();
        let req = S3Request {
            input,
            method: axum::http::Method::HEAD,
            uri: format!("/{bucket}/{key}").parse().unwrap(),
            headers: Default::default(),
            extensions: Default::default(),
            credentials: None,
            region: None,
            service: None,
            trailing_headers: None,
        };
        let out = self.reader.head_object(req).await.ok()?.output;
        Some(ObjectInfo {
            content_type: out.content_type,
            content_length: out.content_length,
        })
    }
}

impl Drop for S3Peer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
