//! Pure signing functions. Every input is explicit, including the time, so each
//! signer can be checked byte-for-byte against the vectors in `tests/vectors/`.
//! Nothing here reads a clock, the environment, the config or the network.

pub mod encode;
pub mod sts_rpc;

use base64::Engine as _;
use hmac::{Hmac, Mac};

pub fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}
