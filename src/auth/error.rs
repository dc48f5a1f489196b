//! Why a credential was refused. Messages are safe to show a client; `reason()`
//! is the stable label for logs and metrics.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("credentials are missing")]
    Missing,
    /// Bad signature, malformed, unknown key, wrong issuer or audience, algorithm
    /// not allowed... The `&'static str` is the [`AuthError::reason`] label.
    #[error("invalid credentials: {0}")]
    Invalid(&'static str),
    #[error("credentials have expired")]
    Expired,
    #[error("credentials are not valid yet")]
    NotYetValid,
    #[error("this ticket was issued for another grant")]
    WrongGrant,
    /// The JWKS could not be fetched and no keys are cached.
    #[error("the key server could not be reached")]
    KeysUnavailable,
}

impl AuthError {
    /// Stable snake_case label: `missing`, `expired`, `not_yet_valid`,
    /// `wrong_grant`, `keys_unavailable`, or the label `Invalid` carries:
    /// `malformed`, `bad_signature`, `unknown_key` (API keys), `unknown_kid`,
    /// `missing_kid`, `alg_not_allowed`, `alg_key_mismatch`, `bad_key`,
    /// `unsupported_header`, `wrong_issuer`, `wrong_audience`, `missing_exp`,
    /// `missing_subject` (JWTs).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid(reason) => reason,
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongGrant => "wrong_grant",
            AuthError::KeysUnavailable => "keys_unavailable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_stable_labels() {
        assert_eq!(AuthError::Missing.reason(), "missing");
        assert_eq!(AuthError::Invalid("bad_signature").reason(), "bad_signature");
        assert_eq!(AuthError::Expired.reason(), "expired");
        assert_eq!(AuthError::NotYetValid.reason(), "not_yet_valid");
        assert_eq!(AuthError::WrongGrant.reason(), "wrong_grant");
        assert_eq!(AuthError::KeysUnavailable.reason(), "keys_unavailable");
        assert_eq!(
            AuthError::Invalid("unknown_key").to_string(),
            "invalid credentials: unknown_key"
        );
    }
}
