//! The credential bodies each client family reads (docs/signing.md §12). One credential,
//! several spellings: the superset Alibaba body (ali-oss `refreshSTSToken`, the
//! OSS mobile SDKs' auth-server providers, the credentials-URI providers), the
//! AWS container-credentials body, a camelCase body for browser code, and AWS
//! `credential_process` output.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::sign::format_iso8601_extended;

pub use crate::config::{CredentialFormat, FORMAT_NAMES};

/// Everything a body may show.
pub struct CredentialView<'a> {
    pub access_key_id: &'a str,
    pub access_key_secret: &'a str,
    pub security_token: &'a str,
    pub expiration: DateTime<Utc>,
    pub refresh_after: DateTime<Utc>,
    pub bucket: &'a str,
    /// Region id without `oss-`.
    pub region: &'a str,
    pub endpoint: &'a str,
    pub prefix: &'a str,
}

/// `format=default`: ali-oss `refreshSTSToken`, the OSS Android/iOS
/// `OSSAuthCredentialsProvider` and `ALIBABA_CLOUD_CREDENTIALS_URI`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
#[schema(as = CredentialsDefault)]
pub(crate) struct AlibabaBody<'a> {
    /// Always 200.
    #[schema(example = 200)]
    status_code: u16,
    /// Always `Success`.
    #[schema(example = "Success")]
    code: &'static str,
    access_key_id: &'a str,
    access_key_secret: &'a str,
    security_token: &'a str,
    /// `YYYY-MM-DDThh:mm:ssZ`, without milliseconds.
    #[schema(example = "2026-11-23T19:41:52Z")]
    expiration: String,
    /// The last moment this credential is served; come back then.
    #[schema(example = "2026-11-23T19:26:52Z")]
    refresh_after: String,
    bucket: &'a str,
    /// ali-oss option form (`oss-cn-hangzhou`); signatures use the bare id.
    #[schema(example = "oss-cn-hangzhou")]
    region: String,
    /// Not `Endpoint`: ali-oss merges every key of a `refreshSTSToken` result
    /// into its options, and a string `endpoint` would replace the parsed one it
    /// keeps there (every later request would go nowhere). `ossEndpoint` is inert.
    oss_endpoint: &'a str,
    /// The key prefix uploads must use.
    prefix: &'a str,
}

/// `format=aws`: the AWS SDKs' container credentials (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
#[schema(as = CredentialsAws)]
pub(crate) struct AwsContainerBody<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: String,
}

/// `format=camel`: for browser code.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = CredentialsCamel)]
pub(crate) struct CamelBody<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    security_token: &'a str,
    expiration: String,
}

/// `format=credential-process`: AWS `credential_process` output. `Version` must be
/// the integer 1, and the token is `SessionToken`, not `Token`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
#[schema(as = CredentialsProcess)]
pub(crate) struct CredentialProcessBody<'a> {
    #[schema(example = 1)]
    version: u8,
    access_key_id: &'a str,
    secret_access_key: &'a str,
    session_token: &'a str,
    expiration: String,
}

/// The JSON text of `v` in `format`.
pub fn to_json(format: CredentialFormat, v: &CredentialView<'_>) -> String {
    let expiration = format_iso8601_extended(v.expiration);
    let out = match format {
        CredentialFormat::Default => serde_json::to_string(&AlibabaBody {
            status_code: 200,
            code: "Success",
            access_key_id: v.access_key_id,
            access_key_secret: v.access_key_secret,
            security_token: v.security_token,
            expiration,
            refresh_after: format_iso8601_extended(v.refresh_after),
            bucket: v.bucket,
            region: format!("oss-{}", v.region),
            oss_endpoint: v.endpoint,
            prefix: v.prefix,
        }),
        CredentialFormat::Aws => serde_json::to_string(&AwsContainerBody {
            access_key_id: v.access_key_id,
            secret_access_key: v.access_key_secret,
            token: v.security_token,
            expiration,
        }),
        CredentialFormat::Camel => serde_json::to_string(&CamelBody {
            access_key_id: v.access_key_id,
            secret_access_key: v.access_key_secret,
            security_token: v.security_token,
            expiration,
        }),
        CredentialFormat::CredentialProcess => serde_json::to_string(&CredentialProcessBody {
            version: 1,
            access_key_id: v.access_key_id,
            secret_access_key: v.access_key_secret,
            session_token: v.security_token,
            expiration,
        }),
    };
    out.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for n in FORMAT_NAMES.split(", ") {
            assert!(n.parse::<CredentialFormat>().is_ok(), "{n}");
        }
        assert!("AWS".parse::<CredentialFormat>().is_err());
    }
}
