//! Who is asking: turns a request's credentials into a [`Principal`], or a
//! 401 (missing or invalid credentials) / 403 (a valid caller this grant does
//! not accept). Knows nothing about OSS.
//!
//! Methods, per grant: `api_key` (`X-Api-Key` or `Authorization: ApiKey …`),
//! `jwt` (`Authorization: Bearer …`, verified against the issuer's JWKS),
//! `ticket` (`?ticket=…`, minted by `POST /v1/tickets` for clients that cannot
//! send headers) and `none` (anonymous).

pub mod api_key;
pub mod error;
pub mod jwt;
pub mod ticket;

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode, header};
use chrono::{DateTime, Utc};
use tracing::warn;

pub use error::AuthError;

use crate::config::{AuthMethod, Config};
use crate::error::ApiError;
use crate::policy::template::Placeholders;

/// The caller a grant is issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `None` for an anonymous caller.
    pub subject: Option<String>,
    /// Claims templates may use as `{claim.NAME}`.
    pub claims: BTreeMap<String, String>,
    pub method: AuthMethod,
    /// Whose id space `subject` belongs to: an API key `alice` and a JWT
    /// subject `alice` are different callers. `None` for anonymous callers and
    /// for tickets minted before tickets carried it.
    pub namespace: Option<SubjectNamespace>,
}

/// An id space of subjects. The names contain no `.`, so `<namespace>.<subject>`
/// (how namespaced grants render `{subject}`) never reads two ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectNamespace {
    /// `auth.api_keys[].id`
    ApiKey,
    /// The `auth.jwt` issuer's subject claim (one issuer; several would each
    /// need a namespace of their own).
    Jwt,
}

impl SubjectNamespace {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectNamespace::ApiKey => "api_key",
            SubjectNamespace::Jwt => "jwt",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "api_key" => Some(SubjectNamespace::ApiKey),
            "jwt" => Some(SubjectNamespace::Jwt),
            _ => None,
        }
    }
}

impl Principal {
    pub fn anonymous() -> Self {
        Principal {
            subject: None,
            claims: BTreeMap::new(),
            method: AuthMethod::None,
            namespace: None,
        }
    }

    /// For logs: the subject, or `anonymous`.
    pub fn display(&self) -> &str {
        self.subject.as_deref().unwrap_or("anonymous")
    }

    /// The subject qualified by its namespace (`api_key.alice`), for keys
    /// that must not merge callers of different methods (rate limits).
    pub fn qualified_subject(&self) -> Option<String> {
        let subject = self.subject.as_deref()?;
        // No namespace (an old ticket) is the empty name: still injective.
        let ns = self.namespace.map(SubjectNamespace::as_str).unwrap_or_default();
        Some(format!("{ns}.{subject}"))
    }
}

/// The credentials a request carries, before any is checked.
#[derive(Debug, Default)]
pub struct Presented<'a> {
    pub bearer: Option<&'a str>,
    pub api_key: Option<&'a str>,
    pub ticket: Option<String>,
    /// Two credentials of a kind: two `Authorization` or `X-Api-Key` headers, two
    /// `ticket` parameters, or an `X-Api-Key` and an `Authorization` key that
    /// differ. Refused (400 `ambiguous_credentials`) rather than first-wins: a
    /// proxy and a client disagreeing about who is calling must not be settled
    /// by header order.
    pub ambiguous: bool,
}

/// RFC 9110 `token` characters (an auth scheme).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `Authorization: <scheme> <credentials>` split per RFC 9110 §11.4: a token,
/// then 1*SP — leniently, any run of spaces and tabs. `None` without
/// whitespace (a bare value) or when the scheme is not a token.
pub fn split_scheme(value: &str) -> Option<(&str, &str)> {
    let at = value.find([' ', '\t'])?;
    let (scheme, rest) = value.split_at(at);
    (!scheme.is_empty() && scheme.bytes().all(is_tchar)).then(|| (scheme, rest.trim_matches([' ', '\t'])))
}

impl<'a> Presented<'a> {
    pub fn from_request(headers: &'a HeaderMap, query: Option<&str>) -> Self {
        let mut authorizations = headers.get_all(header::AUTHORIZATION).iter();
        let authorization = authorizations.next().and_then(|v| v.to_str().ok());
        let mut x_api_keys = headers.get_all("x-api-key").iter();
        let x_api_key = x_api_keys.next().and_then(|v| v.to_str().ok());
        let parsed = authorization.and_then(split_scheme);
        let scheme = |name: &str| {
            parsed
                .filter(|(s, _)| s.eq_ignore_ascii_case(name))
                .map(|(_, rest)| rest)
        };
        let header_key = scheme("ApiKey")
            // AWS SDKs send AWS_CONTAINER_AUTHORIZATION_TOKEN verbatim: a bare key.
            .or_else(|| authorization.filter(|a| !a.is_empty() && !a.contains([' ', '\t'])));
        let mut tickets = query
            .into_iter()
            .flat_map(|q| url::form_urlencoded::parse(q.as_bytes()))
            .filter(|(k, _)| k == "ticket")
            .map(|(_, v)| v.into_owned());
        let ticket = tickets.next();
        let ambiguous = authorizations.next().is_some()
            || x_api_keys.next().is_some()
            || tickets.next().is_some()
            || matches!((x_api_key, header_key), (Some(a), Some(b)) if a != b);
        Presented {
            bearer: scheme("Bearer"),
            api_key: x_api_key.or(header_key),
            ticket,
            ambiguous,
        }
    }
}

pub struct Authenticator {
    api_keys: api_key::ApiKeys,
    jwt: Option<jwt::JwtVerifier>,
    pub tickets: ticket::Tickets,
    pub placeholders: Placeholders,
}

impl Authenticator {
    pub fn from_config(cfg: &Config, env: &BTreeMap<String, String>) -> Result<Self, String> {
        Ok(Authenticator {
            api_keys: api_key::ApiKeys::new(&cfg.auth.api_keys)?,
            jwt: cfg.auth.jwt.as_ref().map(jwt::JwtVerifier::new).transpose()?,
            tickets: ticket::Tickets::from_config(&cfg.auth.tickets, env)?,
            placeholders: Placeholders::new(&cfg.auth.placeholders)?,
        })
    }

    /// Who is calling `grant` (named `grant_name`, accepting `methods`).
    /// Credentials that are presented are always checked, even on a grant that
    /// also accepts anonymous callers: a bad token is an error, not a downgrade.
    pub async fn authenticate(
        &self,
        grant_name: &str,
        methods: &[AuthMethod],
        presented: &Presented<'_>,
        now: DateTime<Utc>,
    ) -> Result<Principal, ApiError> {
        if presented.ambiguous {
            crate::prom::auth_failure(grant_name, "multiple", "ambiguous");
            warn!(
                grant = grant_name,
                "authentication refused: ambiguous credentials"
            );
            return Err(ApiError::bad_request(
                "ambiguous_credentials",
                "the request carries more than one credential of a kind (Authorization, X-Api-Key or \
                 ticket); send exactly one",
            ));
        }
        let accepts = |m| methods.contains(&m);
        let fail = |method: AuthMethod, e: AuthError| {
            crate::prom::auth_failure(grant_name, method.as_str(), e.reason());
            warn!(
                grant = grant_name,
                method = method.as_str(),
                reason = e.reason(),
                "authentication failed"
            );
            auth_error(methods, method, e)
        };
        if let Some(t) = &presented.ticket {
            if !accepts(AuthMethod::Ticket) {
                return Err(not_accepted(grant_name, AuthMethod::Ticket));
            }
            let c = self
                .tickets
                .verify(t, grant_name, now)
                .map_err(|e| fail(AuthMethod::Ticket, e))?;
            return Ok(Principal {
                subject: Some(c.subject),
                claims: c.claims,
                method: AuthMethod::Ticket,
                namespace: c.namespace,
            });
        }
        if let Some(k) = presented.api_key {
            if !accepts(AuthMethod::ApiKey) {
                return Err(not_accepted(grant_name, AuthMethod::ApiKey));
            }
            let key = self.api_keys.verify(k).map_err(|e| fail(AuthMethod::ApiKey, e))?;
            if !key.grants.is_empty() && !key.grants.iter().any(|g| g == grant_name) {
                warn!(grant = grant_name, subject = %key.id, "API key not allowed on this grant");
                crate::prom::auth_failure(grant_name, AuthMethod::ApiKey.as_str(), "grant_not_allowed");
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "grant_not_allowed",
                    format!("this API key may not use grant {grant_name:?}"),
                ));
            }
            return Ok(Principal {
                subject: Some(key.id.clone()),
                claims: BTreeMap::new(),
                method: AuthMethod::ApiKey,
                namespace: Some(SubjectNamespace::ApiKey),
            });
        }
        if let Some(token) = presented.bearer {
            let verifier = match (&self.jwt, accepts(AuthMethod::Jwt)) {
                (Some(v), true) => v,
                _ => return Err(not_accepted(grant_name, AuthMethod::Jwt)),
            };
            let v = verifier
                .verify(token)
                .await
                .map_err(|e| fail(AuthMethod::Jwt, e))?;
            return Ok(Principal {
                subject: Some(v.subject),
                claims: v.claims,
                method: AuthMethod::Jwt,
                namespace: Some(SubjectNamespace::Jwt),
            });
        }
        if accepts(AuthMethod::None) {
            return Ok(Principal::anonymous());
        }
        crate::prom::auth_failure(grant_name, AuthMethod::None.as_str(), AuthError::Missing.reason());
        Err(auth_error(methods, AuthMethod::None, AuthError::Missing))
    }
}

fn not_accepted(grant: &str, m: AuthMethod) -> ApiError {
    crate::prom::auth_failure(grant, m.as_str(), "method_not_allowed");
    ApiError::new(
        StatusCode::FORBIDDEN,
        "auth_method_not_allowed",
        format!("grant {grant:?} does not accept {} authentication", m.as_str()),
    )
}

/// 401 with a `WWW-Authenticate` challenge for each method the grant accepts
/// (RFC 6750 error attributes for a rejected bearer token).
fn auth_error(methods: &[AuthMethod], failed: AuthMethod, e: AuthError) -> ApiError {
    let (status, code) = match e {
        AuthError::WrongGrant => (StatusCode::FORBIDDEN, "wrong_grant"),
        AuthError::KeysUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable"),
        AuthError::Missing => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        _ => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
    };
    let mut challenges = Vec::new();
    for m in methods {
        match m {
            AuthMethod::Jwt if failed == AuthMethod::Jwt && e != AuthError::Missing => {
                challenges.push(format!(
                    "Bearer realm=\"ossvend\", error=\"invalid_token\", error_description=\"{}\"",
                    e.reason()
                ))
            }
            AuthMethod::Jwt => challenges.push("Bearer realm=\"ossvend\"".into()),
            AuthMethod::ApiKey => challenges.push("ApiKey realm=\"ossvend\"".into()),
            AuthMethod::Ticket => challenges.push("Ticket realm=\"ossvend\"".into()),
            AuthMethod::None => {}
        }
    }
    let mut err = ApiError::new(status, code, e.to_string());
    if status == StatusCode::UNAUTHORIZED {
        err.www_authenticate = Some(challenges.join(", "));
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_scheme_is_a_token_then_spaces_or_tabs() {
        assert_eq!(split_scheme("Bearer abc"), Some(("Bearer", "abc")));
        assert_eq!(split_scheme("Bearer\tabc"), Some(("Bearer", "abc")));
        assert_eq!(split_scheme("bearer \t  abc "), Some(("bearer", "abc")));
        assert_eq!(split_scheme("Bearer "), Some(("Bearer", "")));
        assert_eq!(split_scheme("ovk_bare-key"), None);
        assert_eq!(split_scheme(" abc"), None);
        assert_eq!(split_scheme("Bea(rer abc"), None);

        let h = headers(&[("authorization", "Bearer\tjwt.x.y")]);
        let p = Presented::from_request(&h, None);
        assert_eq!((p.bearer, p.api_key, p.ambiguous), (Some("jwt.x.y"), None, false));
        let h = headers(&[("authorization", "ovk_bare")]);
        let p = Presented::from_request(&h, None);
        assert_eq!((p.bearer, p.api_key), (None, Some("ovk_bare")));
        let h = headers(&[("authorization", "ApiKey\tovk_k")]);
        assert_eq!(Presented::from_request(&h, None).api_key, Some("ovk_k"));
    }

    #[test]
    fn two_credentials_of_a_kind_are_ambiguous() {
        let ambiguous = |pairs: &[(&'static str, &str)], query: Option<&str>| {
            Presented::from_request(&headers(pairs), query).ambiguous
        };
        assert!(ambiguous(
            &[("authorization", "Bearer a"), ("authorization", "Bearer a")],
            None
        ));
        assert!(ambiguous(&[("x-api-key", "k1"), ("x-api-key", "k1")], None));
        assert!(ambiguous(
            &[("x-api-key", "k1"), ("authorization", "ApiKey k2")],
            None
        ));
        assert!(ambiguous(&[("x-api-key", "k1"), ("authorization", "k2")], None));
        assert!(ambiguous(&[], Some("ticket=a&x=1&ticket=a")));
        assert!(!ambiguous(
            &[("x-api-key", "k1"), ("authorization", "ApiKey k1")],
            None
        ));
        assert!(!ambiguous(&[("x-api-key", "k1")], Some("ticket=t&format=aws")));
        assert!(!ambiguous(
            &[("authorization", "Bearer a")],
            Some("tickets=1&ticket=t")
        ));
    }
}
