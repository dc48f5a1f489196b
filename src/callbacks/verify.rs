//! Verifying the request OSS makes to a callback URL (docs/callbacks.md).
//!
//! OSS signs `url_decode(path) + ("?" + query, if any) + "\n" + body` with
//! RSA PKCS#1 v1.5 over MD5 and sends the base64 signature as
//! `Authorization`, and the base64 of its public key's URL as
//! `x-oss-pub-key-url`. The URL is the request's word and is believed only on
//! an allowlist: Alibaba's key host, whatever scheme the request names, is
//! always fetched over https (OSS names `http://gosspublic.alicdn.com/…`; a key
//! fetched in clear text could be swapped on the way), and no other URL is ever
//! fetched (a fetched URL of the caller's choosing would be an SSRF and a
//! forgery: the caller would sign with its own key). `ossvend local` adds the
//! embedded sink's loopback key URL, in local mode only.
//!
//! Only public-key operations happen here: the `rsa` crate's timing side
//! channel (RUSTSEC-2023-0071) concerns private-key operations, which only the
//! local sink performs, with a throwaway key.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use md5_rsa::{Digest as _, Md5};
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::{Pkcs1v15Sign, RsaPublicKey};

/// Alibaba's callback key host: the only host whose keys are believed outside local mode.
pub const KEY_HOST: &str = "gosspublic.alicdn.com";

/// How long a fetched key is kept; Alibaba rotates by publishing a new URL.
const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a failed fetch is remembered: forged callbacks naming a missing
/// key do not each cost a fetch.
const FAILURE_TTL: Duration = Duration::from_secs(30);
/// Longest accepted key document (a PEM public key is well under 1 KiB).
const MAX_KEY_BYTES: usize = 8 * 1024;

/// What the receiver saw, exactly as it arrived.
pub struct CallbackRequest<'a> {
    /// The request path as on the request line (still percent-encoded).
    pub path: &'a str,
    /// The raw query string without `?`.
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub authorization: Option<&'a str>,
    pub pub_key_url: Option<&'a str>,
}

/// Why a callback is not believed. Nothing of a refused callback is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the callback carries no {0} header")]
    Unsigned(&'static str),
    #[error("x-oss-pub-key-url is not the base64 of a URL")]
    MalformedKeyUrl,
    #[error("the public key URL {0:?} is not on the key-host allowlist")]
    KeyUrlNotAllowed(String),
    #[error("the public key could not be fetched: {0}")]
    KeyUnavailable(String),
    #[error("the Authorization header is not a base64 signature")]
    MalformedSignature,
    #[error("the signature does not verify with OSS's public key")]
    BadSignature,
}

impl Refusal {
    /// The stable error code (README's error table).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unsigned(_) => "callback_unsigned",
            Refusal::MalformedKeyUrl | Refusal::KeyUrlNotAllowed(_) => "callback_key_url_refused",
            Refusal::KeyUnavailable(_) => "callback_key_unavailable",
            Refusal::MalformedSignature | Refusal::BadSignature => "callback_signature_invalid",
        }
    }
}

/// Where public keys come from; tests inject keys, production fetches them.
#[async_trait::async_trait]
pub trait KeySource: Send + Sync {
    /// The PEM text at `url`, an allowed URL (the allowlist ran first).
    async fn fetch(&self, url: &str) -> Result<String, String>;
}

/// Fetches keys over HTTP(S): no redirects (a redirect could leave the key
/// host), short timeouts, a size cap.
pub struct HttpKeySource {
    http: reqwest::Client,
}

impl HttpKeySource {
    pub fn new() -> Result<Self, String> {
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ossvend/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the callback-key HTTP client: {e}"))?;
        Ok(HttpKeySource { http })
    }
}

#[async_trait::async_trait]
impl KeySource for HttpKeySource {
    async fn fetch(&self, url: &str) -> Result<String, String> {
        let resp = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        if resp.content_length().is_some_and(|n| n > MAX_KEY_BYTES as u64) {
            return Err("the key document is too large".into());
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > MAX_KEY_BYTES {
            return Err("the key document is too large".into());
        }
        String::from_utf8(body.to_vec()).map_err(|_| "the key document is not text".into())
    }
}

/// The key URLs believed: Alibaba's host, plus in local mode one loopback origin.
#[derive(Debug, Clone, Default)]
pub struct KeyHosts {
    /// `http://127.0.0.1:<port>/`: the embedded sink's key URL prefix (`ossvend local` only).
    pub local: Option<String>,
}

impl KeyHosts {
    /// The URL to fetch for a key URL the request names, or the refusal.
    /// Alibaba's host is always fetched over https, whatever the scheme named.
    pub fn fetch_url(&self, named: &str) -> Result<String, Refusal> {
        let refused = || Refusal::KeyUrlNotAllowed(named.chars().take(200).collect());
        if let Some(local) = &self.local
            && named.starts_with(local.as_str())
            && !named[local.len()..].contains(['?', '#', '@', '\\'])
        {
            return Ok(named.to_string());
        }
        // The parser would normalise `/a/../k.pem` away: a name it must change is not taken.
        if named.contains("..") || named.contains('%') {
            return Err(refused());
        }
        let url = url::Url::parse(named).map_err(|_| refused())?;
        let plain = matches!(url.scheme(), "http" | "https")
            && url.host_str() == Some(KEY_HOST)
            && url.port().is_none()
            && url.username().is_empty()
            && url.password().is_none()
            && url.query().is_none()
            && url.fragment().is_none();
        // Alibaba's naming (`/callback_pub_key_v1.pem`): a request cannot make
        // ossvend fetch arbitrary paths of the key host either.
        let path = url.path();
        let pem = path
            .strip_prefix("/callback_pub_key_v")
            .and_then(|v| v.strip_suffix(".pem"))
            .is_some_and(|v| !v.is_empty() && v.len() <= 4 && v.bytes().all(|b| b.is_ascii_digit()));
        if plain && pem {
            Ok(format!("https://{KEY_HOST}{path}"))
        } else {
            Err(refused())
        }
    }
}

/// Verifies OSS callbacks, with fetched keys cached per URL.
pub struct Verifier {
    hosts: KeyHosts,
    source: Arc<dyn KeySource>,
    keys: moka::future::Cache<String, Arc<RsaPublicKey>>,
    failures: moka::future::Cache<String, String>,
}

impl Verifier {
    pub fn new(hosts: KeyHosts, source: Arc<dyn KeySource>) -> Self {
        Verifier {
            hosts,
            source,
            keys: moka::future::Cache::builder()
                .max_capacity(16)
                .time_to_live(KEY_TTL)
                .build(),
            failures: moka::future::Cache::builder()
                .max_capacity(64)
                .time_to_live(FAILURE_TTL)
                .build(),
        }
    }

    /// `Ok` only for a request OSS (or, in local mode, the embedded sink) signed.
    pub async fn verify(&self, req: &CallbackRequest<'_>) -> Result<(), Refusal> {
        let auth = req.authorization.ok_or(Refusal::Unsigned("Authorization"))?;
        let named = req.pub_key_url.ok_or(Refusal::Unsigned("x-oss-pub-key-url"))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let named = b64
            .decode(named.trim())
            .ok()
            .and_then(|u| String::from_utf8(u).ok())
            .ok_or(Refusal::MalformedKeyUrl)?;
        let url = self.hosts.fetch_url(&named)?;
        let signature = b64.decode(auth.trim()).map_err(|_| Refusal::MalformedSignature)?;
        let key = self.key(url).await?;
        let digest = Md5::digest(string_to_sign(req));
        key.verify(Pkcs1v15Sign::new::<Md5>(), &digest, &signature)
            .map_err(|_| Refusal::BadSignature)
    }

    async fn key(&self, url: String) -> Result<Arc<RsaPublicKey>, Refusal> {
        if let Some(why) = self.failures.get(&url).await {
            return Err(Refusal::KeyUnavailable(why));
        }
        let source = self.source.clone();
        let fetch_url = url.clone();
        let got = self
            .keys
            .try_get_with(url.clone(), async move {
                let pem = source.fetch(&fetch_url).await?;
                parse_public_key(&pem).map(Arc::new)
            })
            .await;
        match got {
            Ok(key) => Ok(key),
            Err(e) => {
                let why = (*e).clone();
                self.failures.insert(url, why.clone()).await;
                Err(Refusal::KeyUnavailable(why))
            }
        }
    }
}

/// A PEM public key, SubjectPublicKeyInfo (what Alibaba publishes) or PKCS#1.
pub fn parse_public_key(pem: &str) -> Result<RsaPublicKey, String> {
    RsaPublicKey::from_public_key_pem(pem.trim())
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem.trim()))
        .map_err(|e| format!("not an RSA public key: {e}"))
}

/// `url_decode(path) + ("?" + query) + "\n" + body`: the path is decoded, the
/// query is taken as sent (OSS's own demo servers do the same).
pub fn string_to_sign(req: &CallbackRequest<'_>) -> Vec<u8> {
    let mut out: Vec<u8> = percent_encoding::percent_decode_str(req.path).collect();
    if let Some(q) = req.query.filter(|q| !q.is_empty()) {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(req.body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_alibabas_key_host_is_fetched_and_always_over_https() {
        let hosts = KeyHosts::default();
        for ok in [
            "http://gosspublic.alicdn.com/callback_pub_key_v1.pem",
            "https://gosspublic.alicdn.com/callback_pub_key_v1.pem",
        ] {
            assert_eq!(
                hosts.fetch_url(ok).unwrap(),
                "https://gosspublic.alicdn.com/callback_pub_key_v1.pem"
            );
        }
        for bad in [
            "http://evil.example/callback_pub_key_v1.pem",
            "http://gosspublic.alicdn.com.evil.example/k.pem",
            "http://gosspublic.alicdn.com@evil.example/k.pem",
            "http://x@gosspublic.alicdn.com/k.pem",
            "http://gosspublic.alicdn.com:8080/k.pem",
            "http://gosspublic.alicdn.com/k.pem?x=1",
            "http://gosspublic.alicdn.com/a/../k.pem",
            "http://gosspublic.alicdn.com/k.txt",
            "http://gosspublic.alicdn.com/k.pem",
            "http://gosspublic.alicdn.com/callback_pub_key_v.pem",
            "http://gosspublic.alicdn.com/images/callback_pub_key_v1.pem",
            "ftp://gosspublic.alicdn.com/k.pem",
            "file:///etc/passwd",
            "http://127.0.0.1:9/k.pem",
        ] {
            assert!(
                matches!(hosts.fetch_url(bad), Err(Refusal::KeyUrlNotAllowed(_))),
                "{bad}"
            );
        }
        let local = KeyHosts {
            local: Some("http://127.0.0.1:4000/".into()),
        };
        assert!(
            local
                .fetch_url("http://127.0.0.1:4000/_ossvend/callback-key.pem")
                .is_ok()
        );
        assert!(local.fetch_url("http://127.0.0.1:4001/k.pem").is_err());
        assert!(local.fetch_url("http://127.0.0.1:4000/k.pem?x").is_err());
    }

    /// OSS's own documented example (the Callback page, "callback signature"):
    /// `POST /index.php?id=1&index=2`, body `bucket=yonghu-test`, signed with
    /// the key then published at gosspublic.alicdn.com/callback_pub_key_v1.pem
    /// (a public key, as quoted by Alibaba's demo servers).
    #[tokio::test]
    async fn osss_documented_example_verifies() {
        struct Fixed;
        #[async_trait::async_trait]
        impl KeySource for Fixed {
            async fn fetch(&self, url: &str) -> Result<String, String> {
                assert_eq!(url, "https://gosspublic.alicdn.com/callback_pub_key_v1.pem");
                Ok(concat!(
                    "-----BEGIN PUBLIC KEY-----\n",
                    "MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAKs/JBGzwUB2aVht4crBx3oIPBLNsjGs\n",
                    "C0fTXv+nvlmklvkcolvpvXLTjaxUHR3W9LXxQ2EHXAJfCB+6H2YF1k8CAwEAAQ==\n",
                    "-----END PUBLIC KEY-----\n"
                )
                .into())
            }
        }
        let v = Verifier::new(KeyHosts::default(), Arc::new(Fixed));
        let mut req = CallbackRequest {
            path: "/index.php",
            query: Some("id=1&index=2"),
            body: b"bucket=yonghu-test",
            authorization: Some(
                "kKQeGTRccDKyHB3H9vF+xYMSrmhMZjzzl2/kdD1ktNVgbWEfYTQG0G2SU/RaHBovRCE8OkQDjC3uG33esH2txA==",
            ),
            pub_key_url: Some("aHR0cDovL2dvc3NwdWJsaWMuYWxpY2RuLmNvbS9jYWxsYmFja19wdWJfa2V5X3YxLnBlbQ=="),
        };
        assert_eq!(v.verify(&req).await, Ok(()));
        req.body = b"bucket=yonghu-tesT";
        assert_eq!(v.verify(&req).await, Err(Refusal::BadSignature));
    }

    #[test]
    fn the_string_to_sign_decodes_the_path_only() {
        let req = CallbackRequest {
            path: "/v1/callbacks/%6Fss",
            query: Some("a=%20b"),
            body: b"{}",
            authorization: None,
            pub_key_url: None,
        };
        assert_eq!(string_to_sign(&req), b"/v1/callbacks/oss?a=%20b\n{}");
        let req = CallbackRequest {
            query: Some(""),
            ..req
        };
        assert_eq!(string_to_sign(&req), b"/v1/callbacks/oss\n{}");
    }
}
