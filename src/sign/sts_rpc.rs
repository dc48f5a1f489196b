//! Alibaba Cloud RPC signature, version 1.0 (HMAC-SHA1), as used for STS
//! `AssumeRole` (docs/signing.md §1.3). The string-to-sign percent-encodes the already
//! encoded canonical query a second time, and the key is `secret + "&"`.

use super::encode::pct;
use super::{b64, hmac_sha1};

/// The intermediate strings and the result, so a mismatch can be explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcSignature {
    pub canonicalized_query: String,
    pub string_to_sign: String,
    pub signature: String,
}

/// Signs `params` (every parameter that will be sent, query and form body
/// together, without `Signature`) for `method` (`GET` or `POST`).
pub fn sign<'a, I>(method: &str, params: I, access_key_secret: &str) -> RpcSignature
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut pairs: Vec<(&str, &str)> = params.into_iter().filter(|(k, _)| *k != "Signature").collect();
    // Sorting by name in byte order; names are unique in a well-formed request.
    pairs.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(b.1)));
    let canonicalized_query = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&");
    let string_to_sign = format!("{}&{}&{}", method, pct("/"), pct(&canonicalized_query));
    let key = format!("{access_key_secret}&");
    let signature = b64(&hmac_sha1(key.as_bytes(), string_to_sign.as_bytes()));
    RpcSignature {
        canonicalized_query,
        string_to_sign,
        signature,
    }
}
