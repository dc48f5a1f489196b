//! `ossvend sign`: the offline signer operators use when OSS or STS answers
//! `SignatureDoesNotMatch`. Every input is explicit, including the time
//! (`--at`), so the output can be compared with what a client or the server
//! computed; `--explain` prints the canonical request and the string-to-sign.
//!
//! The secret is read from the environment, never from the command line
//! (which ends up in shell history and process listings).

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};

use crate::sign::oss_v4::V4Scope;
use crate::sign::{self, AddressingStyle, Endpoint, RequestToSign, SigningCredentials};

#[derive(Subcommand, Debug)]
pub enum SignCommand {
    /// A presigned URL (OSS V4, OSS V1 or S3 SigV4).
    Presign(PresignArgs),
    /// Sign a PostObject policy document (V4 or V1) and print the form fields.
    PostPolicy(PostArgs),
    /// Sign an STS AssumeRole request (RPC signature 1.0) and print its parameters.
    StsRequest(StsArgs),
}

#[derive(Args, Debug)]
pub struct CredArgs {
    /// AccessKey id; the secret is read from $ALIBABA_CLOUD_ACCESS_KEY_SECRET and
    /// an STS token, if any, from $ALIBABA_CLOUD_SECURITY_TOKEN.
    #[arg(long, env = "ALIBABA_CLOUD_ACCESS_KEY_ID")]
    pub access_key_id: String,
    /// Signing time, e.g. 2024-03-01T08:00:00Z (default: now).
    #[arg(long)]
    pub at: Option<DateTime<Utc>>,
    /// Print the canonical request and string-to-sign too.
    #[arg(long)]
    pub explain: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Scheme {
    OssV4,
    OssV1,
    /// Spelled as in grants (`presign_scheme = "s3-v4"`); `s3v4` is still accepted.
    #[value(name = "s3-v4", alias = "s3v4")]
    S3V4,
}

#[derive(Args, Debug)]
pub struct PresignArgs {
    #[command(flatten)]
    pub cred: CredArgs,
    #[arg(long, value_enum, default_value = "oss-v4")]
    pub scheme: Scheme,
    #[arg(long, default_value = "PUT")]
    pub method: String,
    #[arg(long)]
    pub bucket: String,
    #[arg(long)]
    pub key: String,
    /// Region id without "oss-", e.g. cn-hangzhou.
    #[arg(long)]
    pub region: String,
    /// Default https://oss-<region>.aliyuncs.com (s3-v4: https://s3.oss-<region>.aliyuncs.com).
    #[arg(long)]
    pub endpoint: Option<String>,
    #[arg(long)]
    pub path_style: bool,
    /// Seconds the URL stays valid.
    #[arg(long, default_value_t = 900)]
    pub expires: u64,
    /// A header the client will send, bound into the signature (repeatable), e.g. "Content-Type: image/png".
    #[arg(long = "header")]
    pub headers: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PostVersionArg {
    V4,
    V1,
}

#[derive(Args, Debug)]
pub struct PostArgs {
    #[command(flatten)]
    pub cred: CredArgs,
    /// The exact policy JSON text to sign (V4: must contain the x-oss-* conditions for --at).
    #[arg(long)]
    pub policy: String,
    #[arg(long, value_enum, default_value = "v4")]
    pub version: PostVersionArg,
    #[arg(long, default_value = "cn-hangzhou")]
    pub region: String,
}

#[derive(Args, Debug)]
pub struct StsArgs {
    #[command(flatten)]
    pub cred: CredArgs,
    #[arg(long)]
    pub role_arn: String,
    #[arg(long)]
    pub session_name: String,
    #[arg(long, default_value_t = 3600)]
    pub duration: u32,
    #[arg(long)]
    pub policy: Option<String>,
    /// SignatureNonce (default: random).
    #[arg(long)]
    pub nonce: Option<String>,
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// Value of the Format parameter.
    #[arg(long, default_value = "JSON")]
    pub format: String,
}

struct Secrets {
    secret: String,
    token: Option<String>,
}

fn secrets() -> Result<Secrets, String> {
    let secret = std::env::var("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or("set ALIBABA_CLOUD_ACCESS_KEY_SECRET (the secret is never taken from the command line)")?;
    let token = std::env::var("ALIBABA_CLOUD_SECURITY_TOKEN")
        .ok()
        .filter(|s| !s.is_empty());
    Ok(Secrets { secret, token })
}

fn creds<'a>(c: &'a CredArgs, s: &'a Secrets) -> SigningCredentials<'a> {
    SigningCredentials {
        access_key_id: &c.access_key_id,
        access_key_secret: &s.secret,
        security_token: s.token.as_deref(),
    }
}

/// Runs the subcommand and returns what to print.
pub fn run(cmd: &SignCommand) -> Result<String, String> {
    let s = secrets()?;
    match cmd {
        SignCommand::Presign(a) => presign(a, &s),
        SignCommand::PostPolicy(a) => post_policy(a, &s),
        SignCommand::StsRequest(a) => sts_request(a, &s),
    }
}

/// `--header "Name: value"` arguments as pairs.
fn parse_headers(headers: &[String]) -> Result<Vec<(&str, &str)>, String> {
    headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or(format!("--header {h:?}: expected \"Name: value\""))
        })
        .collect()
}

/// A presigned URL, after the explanation when `--explain`.
fn presign(a: &PresignArgs, s: &Secrets) -> Result<String, String> {
    let mut out = String::new();
    let at = a.cred.at.unwrap_or_else(Utc::now);
    let headers = parse_headers(&a.headers)?;
    let req = RequestToSign {
        method: &a.method,
        bucket: Some(&a.bucket),
        key: &a.key,
        headers: &headers,
        query: &[],
    };
    let default_endpoint = match a.scheme {
        Scheme::S3V4 => format!("https://s3.oss-{}.aliyuncs.com", a.region),
        _ => format!("https://oss-{}.aliyuncs.com", a.region),
    };
    let base = a.endpoint.clone().unwrap_or(default_endpoint);
    let ep = Endpoint {
        base: &base,
        style: if a.path_style {
            AddressingStyle::Path
        } else {
            AddressingStyle::VirtualHosted
        },
    };
    let c = creds(&a.cred, s);
    let p = match a.scheme {
        Scheme::OssV4 => {
            sign::oss_v4::presign_url(&c, &req, &V4Scope::oss(&a.region), &[], &ep, at, a.expires)
        }
        Scheme::OssV1 => sign::oss_v1::presign_url(&c, &req, &ep, at, a.expires),
        Scheme::S3V4 => sign::s3::presign_url(&c, &req, &ep, &a.region, at, a.expires),
    }
    .map_err(|e| e.to_string())?;
    if a.cred.explain {
        if let Some(cr) = &p.canonical_request {
            out.push_str(&format!("canonical request:\n{cr}\n\n"));
        }
        out.push_str(&format!(
            "string to sign:\n{}\n\nsignature: {}\n",
            p.string_to_sign, p.signature
        ));
        for (k, v) in &p.required_headers {
            out.push_str(&format!("header to send: {k}: {v}\n"));
        }
        out.push_str(&format!("expires at (unix): {}\n\n", p.expires_at_unix));
    }
    out.push_str(&p.url);
    out.push('\n');

    Ok(out)
}

/// The PostObject form fields, after the explanation when `--explain`.
fn post_policy(a: &PostArgs, s: &Secrets) -> Result<String, String> {
    let mut out = String::new();
    let at = a.cred.at.unwrap_or_else(Utc::now);
    let c = creds(&a.cred, s);
    let form = match a.version {
        PostVersionArg::V4 => {
            let scope = V4Scope::oss(&a.region);
            sign::post::sign_v4(&c, &scope, at, &a.policy, &[]).map_err(|e| {
                // Say exactly what to add: the conditions depend on the key id, region and --at.
                let needed = sign::post::v4_required_conditions(&c, &scope, at)
                    .map(|r| {
                        let list: Vec<String> =
                            r.iter().map(|(k, v)| format!(r#"{{"{k}":"{v}"}}"#)).collect();
                        format!(
                            "\na V4 policy signed at {at} must contain these conditions: {}",
                            list.join(",")
                        )
                    })
                    .unwrap_or_default();
                sign::SignError::to_string(&e) + &needed
            })
        }
        PostVersionArg::V1 => sign::post::sign_v1(&c, &a.policy, &[]).map_err(|e| e.to_string()),
    }?;
    if a.cred.explain {
        out.push_str(&format!(
            "string to sign (the base64 policy):\n{}\n\nsignature: {}\n\n",
            form.string_to_sign, form.signature
        ));
    }
    for (k, v) in &form.fields {
        out.push_str(&format!("{k}={v}\n"));
    }

    Ok(out)
}

/// The signed AssumeRole parameters, after the explanation when `--explain`.
fn sts_request(a: &StsArgs, s: &Secrets) -> Result<String, String> {
    let mut out = String::new();
    // The same checks as the other two subcommands (an id like `LTAI…` is refused, not signed).
    creds(&a.cred, s).check().map_err(|e| e.to_string())?;
    let at = a.cred.at.unwrap_or_else(Utc::now);
    let ts = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let nonce = a
        .nonce
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let duration = a.duration.to_string();
    let mut params: Vec<(&str, &str)> = vec![
        ("Action", "AssumeRole"),
        ("Version", "2015-04-01"),
        ("Format", &a.format),
        ("AccessKeyId", &a.cred.access_key_id),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", &nonce),
        ("Timestamp", &ts),
        ("RoleArn", &a.role_arn),
        ("RoleSessionName", &a.session_name),
        ("DurationSeconds", &duration),
    ];
    if let Some(t) = &s.token {
        params.push(("SecurityToken", t));
    }
    if let Some(p) = &a.policy {
        params.push(("Policy", p));
    }
    let sig = sign::sts_rpc::sign(&a.method, params.iter().copied(), &s.secret);
    if a.cred.explain {
        out.push_str(&format!(
            "canonicalized query:\n{}\n\nstring to sign:\n{}\n\nsignature: {}\n\n",
            sig.canonicalized_query, sig.string_to_sign, sig.signature
        ));
    }
    params.push(("Signature", &sig.signature));
    for (k, v) in params {
        out.push_str(&format!("{k}={v}\n"));
    }

    Ok(out)
}
