//! The `[identity]` checks of `check-config`, start-up and reload: what the
//! source would fail on, found without the network (environment variables,
//! secret, profile and token files, endpoint shapes). They live here, with the
//! sources that read the same files, so `config` stays a model without I/O.

use std::collections::BTreeMap;

use crate::config::validate::{
    MAX_DURATION_SECONDS, MIN_DURATION_SECONDS, Problems, check_external_id, check_session_name,
    is_oidc_provider_arn, is_role_arn,
};
use crate::config::{IdentityConfig, IdentitySource};

/// Checks `[identity]` (at `identity`): what start-up would fail on, reading
/// local files and the environment but never the network.
pub fn check(id: &IdentityConfig, env: &BTreeMap<String, String>, p: &mut Problems) {
    check_identity_at("identity", id, env, 0, p);
}

/// One `[identity]` table (or a nested `[identity.base]`) at `path`. Checks what
/// start-up would fail on, reading local files and the environment but never
/// the network.
fn check_identity_at(
    path: &str,
    id: &IdentityConfig,
    env: &BTreeMap<String, String>,
    depth: usize,
    p: &mut Problems,
) {
    check_keys_used(path, id, p);
    check_shared_keys(path, id, p);
    match id.source {
        IdentitySource::Env => check_env(path, id, env, p),
        IdentitySource::Static => check_static(path, id, env, p),
        IdentitySource::Profile => {
            if let Err(e) = super::profile::resolve(id, env) {
                p.add(at(path, "profile"), e.message);
            }
        }
        IdentitySource::Oidc => check_oidc(path, id, env, p),
        IdentitySource::CredentialsUri | IdentitySource::Chain => check_credentials_uri(path, id, env, p),
        IdentitySource::RamRoleArn => check_ram_role_arn(path, id, env, depth, p),
        IdentitySource::EcsRamRole => {}
    }
}

/// `path.key`, where a problem is reported.
fn at(path: &str, key: &str) -> String {
    format!("{path}.{key}")
}

/// A non-empty environment variable is set.
fn has(env: &BTreeMap<String, String>, name: &str) -> bool {
    env.get(name).is_some_and(|v| !v.is_empty())
}

/// Keys set that the source does not read.
fn check_keys_used(path: &str, id: &IdentityConfig, p: &mut Problems) {
    let used = IdentityConfig::keys_used_by(id.source);
    for key in id.keys_set() {
        if !used.contains(&key) {
            p.add(
                at(path, key),
                format!(
                    "is not used by source = {:?} (it reads: {})",
                    id.source.as_str(),
                    used.join(", ")
                ),
            );
        }
    }
}

/// Keys several sources read, checked the same way for each.
fn check_shared_keys(path: &str, id: &IdentityConfig, p: &mut Problems) {
    let used = IdentityConfig::keys_used_by(id.source);
    if let Some(name) = &id.role_session_name {
        check_session_name(&at(path, "role_session_name"), name, p);
    }
    if let Some(d) = id.duration_seconds
        && !(MIN_DURATION_SECONDS..=MAX_DURATION_SECONDS).contains(&d)
    {
        p.add(
            at(path, "duration_seconds"),
            format!("{d} must be between {MIN_DURATION_SECONDS} and {MAX_DURATION_SECONDS} seconds"),
        );
    }
    if used.contains(&"metadata_endpoint")
        && let Err(e) = super::ecs::check_metadata_endpoint(id.metadata_endpoint())
    {
        p.add(at(path, "metadata_endpoint"), e);
    }
    if used.contains(&"role_name")
        && let Some(r) = &id.role_name
        && let Err(e) = super::ecs::check_role_name(r)
    {
        p.add(at(path, "role_name"), e);
    }
}

fn check_env(path: &str, id: &IdentityConfig, env: &BTreeMap<String, String>, p: &mut Problems) {
    if id.access_key_secret.is_some() && !id.allow_inline_secret {
        p.add(
            at(path, "access_key_secret"),
            "a secret written in the config file is refused; put it in ALIBABA_CLOUD_ACCESS_KEY_SECRET, \
             or set identity.allow_inline_secret = true if you really mean it",
        );
    }
    let names = super::env::family(env);
    if id.access_key_id.is_none() && !has(env, names.id) {
        p.add(path, format!("source = \"env\" but {} is not set", names.id));
    }
    if id.access_key_secret.is_none() && !has(env, names.secret) {
        p.add(path, format!("source = \"env\" but {} is not set", names.secret));
    }
}

fn check_static(path: &str, id: &IdentityConfig, env: &BTreeMap<String, String>, p: &mut Problems) {
    if id.access_key_id.as_deref().is_none_or(str::is_empty) {
        p.add(at(path, "access_key_id"), "is required for source = \"static\"");
    }
    let given = [
        id.secret_env.is_some(),
        id.secret_file.is_some(),
        id.access_key_secret.is_some(),
    ];
    match given.iter().filter(|g| **g).count() {
        0 => p.add(path, "source = \"static\" needs secret_env or secret_file"),
        1 => {}
        _ => p.add(
            path,
            "give only one of secret_env, secret_file and access_key_secret",
        ),
    }
    if let Some(var) = &id.secret_env
        && !has(env, var)
    {
        p.add(
            at(path, "secret_env"),
            format!("the environment variable {var} is not set"),
        );
    }
    if let Some(file) = &id.secret_file {
        match super::expand_home(file, env) {
            Err(e) => p.add(at(path, "secret_file"), e),
            Ok(f) => {
                if let Err(e) = super::static_key::read_secret_file(&f) {
                    p.add(at(path, "secret_file"), e);
                }
            }
        }
    }
    if id.access_key_secret.is_some() && !id.allow_inline_secret {
        p.add(
            at(path, "access_key_secret"),
            "a secret written in the config file is refused; use secret_env or secret_file, \
             or set identity.allow_inline_secret = true if you really mean it",
        );
    }
}

fn check_oidc(path: &str, id: &IdentityConfig, env: &BTreeMap<String, String>, p: &mut Problems) {
    let s = match super::oidc::OidcSettings::from_config(id, env) {
        Err(e) => return p.add(path, format!("source = \"oidc\": {}", e.message)),
        Ok(s) => s,
    };
    if !is_role_arn(&s.role_arn) {
        p.add(
            at(path, "role_arn"),
            format!(
                "{:?} is not a role ARN like acs:ram::1234567890123456:role/name",
                s.role_arn
            ),
        );
    }
    if !is_oidc_provider_arn(&s.oidc_provider_arn) {
        p.add(
            at(path, "oidc_provider_arn"),
            format!(
                "{:?} is not an OIDC provider ARN like acs:ram::1234567890123456:oidc-provider/name",
                s.oidc_provider_arn
            ),
        );
    }
    if let Err(e) = super::oidc::read_token_file(&s.token_file) {
        p.add(at(path, "oidc_token_file"), e);
    }
    check_session_name(&at(path, "role_session_name"), &s.session_name, p);
}

/// `credentials_uri` needs a URI; the chain checks one only when it is given.
fn check_credentials_uri(path: &str, id: &IdentityConfig, env: &BTreeMap<String, String>, p: &mut Problems) {
    match super::uri::configured_uri(id, env) {
        Some(uri) => {
            if let Err(e) = super::uri::check_uri(uri) {
                let key = if id.credentials_uri.is_some() {
                    at(path, "credentials_uri")
                } else {
                    format!("{path} (ALIBABA_CLOUD_CREDENTIALS_URI)")
                };
                p.add(key, e);
            }
        }
        None if id.source == IdentitySource::CredentialsUri => p.add(
            path,
            "source = \"credentials_uri\" but neither credentials_uri nor ALIBABA_CLOUD_CREDENTIALS_URI is set",
        ),
        None => {}
    }
}

/// The role, its ExternalId and the `[identity.base]` that signs for it (checked in turn).
fn check_ram_role_arn(
    path: &str,
    id: &IdentityConfig,
    env: &BTreeMap<String, String>,
    depth: usize,
    p: &mut Problems,
) {
    match &id.role_arn {
        None => p.add(at(path, "role_arn"), "is required for source = \"ram_role_arn\""),
        Some(r) if !is_role_arn(r) => p.add(
            at(path, "role_arn"),
            format!("{r:?} is not a role ARN like acs:ram::1234567890123456:role/name"),
        ),
        Some(_) => {}
    }
    if let Some(ext) = &id.external_id {
        check_external_id(&at(path, "external_id"), ext, p);
    }
    match &id.base {
        None => p.add(
            at(path, "base"),
            "[identity.base] is required for source = \"ram_role_arn\": the provider whose credentials sign the AssumeRole",
        ),
        Some(_) if depth >= 3 => p.add(at(path, "base"), "is nested too deep"),
        Some(base) => check_identity_at(&at(path, "base"), base, env, depth + 1, p),
    }
}
