//! `source = "profile"`: the Alibaba Cloud CLI's `~/.aliyun/config.json` and the
//! credentials SDKs' ini file (docs/signing.md §5, steps 3 and 4).
//!
//! - CLI file: `identity.cli_config_file`, else env `ALIBABA_CLOUD_CONFIG_FILE`,
//!   else `~/.aliyun/config.json`. Profile: `identity.profile`, else env
//!   `ALIBABA_CLOUD_PROFILE`, else the file's `current`, else `default`. Modes
//!   `AK`, `StsToken`, `RamRoleArn` (AssumeRole with the profile's key),
//!   `EcsRamRole`, `OIDC`.
//! - Ini file (tried when the CLI file is absent or lacks the profile):
//!   `identity.credentials_file`, else env `ALIBABA_CLOUD_CREDENTIALS_FILE`, else
//!   `~/.alibabacloud/credentials`, else `~/.alibabacloud/credentials.ini`.
//!   Section: `identity.profile`, else env `ALIBABA_CLOUD_PROFILE`, else
//!   `default`. `type` = `access_key`, `ram_role_arn`, `ecs_ram_role`,
//!   `oidc_role_arn` (`rsa_key_pair` is refused).
//!
//! The files are read again on every refresh (and every minute for fixed keys),
//! so `aliyun configure` takes effect without a restart. `~` expands to `$HOME`.
//! Errors name the file and the profile, never a secret.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use secrecy::SecretString;

use super::ecs::{EcsSettings, EcsSource};
use super::oidc::{OidcSettings, OidcSource};
use super::{Credentials, ErrorKind, FILE_RELOAD_INTERVAL, Fetch, IdentityError, env_var};
use crate::config::IdentityConfig;
use crate::sts::{AssumeRole, AssumeRoleRequest, StsClient};

pub const SOURCE: &str = "profile";

const DEFAULT_CLI_FILE: &str = "~/.aliyun/config.json";
const DEFAULT_INI_FILES: [&str; 2] = ["~/.alibabacloud/credentials", "~/.alibabacloud/credentials.ini"];
const MAX_PROFILE_FILE: u64 = 1024 * 1024;

/// What a profile says to do.
#[derive(Debug, Clone)]
pub enum ProfileSpec {
    /// `AK`, `StsToken`, ini `access_key`: a key (maybe with a token) as is.
    Static(Credentials),
    /// `RamRoleArn`, ini `ram_role_arn`: AssumeRole signed with the profile's key.
    RamRoleArn {
        base: Credentials,
        role_arn: String,
        session_name: Option<String>,
        duration_seconds: Option<u32>,
        policy: Option<String>,
        external_id: Option<String>,
    },
    /// `EcsRamRole`, ini `ecs_ram_role`.
    EcsRamRole { role_name: Option<String> },
    /// `OIDC`, ini `oidc_role_arn`.
    Oidc {
        role_arn: String,
        oidc_provider_arn: String,
        token_file: PathBuf,
        session_name: Option<String>,
        duration_seconds: Option<u32>,
        policy: Option<String>,
    },
}

impl ProfileSpec {
    pub fn mode(&self) -> &'static str {
        match self {
            ProfileSpec::Static(c) if c.security_token.is_some() => "StsToken",
            ProfileSpec::Static(_) => "AK",
            ProfileSpec::RamRoleArn { .. } => "RamRoleArn",
            ProfileSpec::EcsRamRole { .. } => "EcsRamRole",
            ProfileSpec::Oidc { .. } => "OIDC",
        }
    }
}

/// A profile found in a file.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub file: PathBuf,
    pub profile: String,
    pub spec: ProfileSpec,
}

/// Finds the profile `cfg`/`env` select. `NotConfigured` when no profile file
/// exists at all; `Config` for a file that exists but is wrong.
pub fn resolve(cfg: &IdentityConfig, env: &BTreeMap<String, String>) -> Result<Resolved, IdentityError> {
    let config_err = |m: String| IdentityError::config(SOURCE, m);
    let explicit = cfg
        .profile
        .clone()
        .filter(|p| !p.is_empty())
        .or_else(|| env_var(env, "ALIBABA_CLOUD_PROFILE").map(str::to_string));
    let mut tried = Vec::new();

    // 1. The CLI's config.json.
    let cli = cfg
        .cli_config_file
        .clone()
        .or_else(|| env_var(env, "ALIBABA_CLOUD_CONFIG_FILE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CLI_FILE));
    let cli = super::expand_home(&cli, env).map_err(config_err)?;
    if let Some(bytes) = read_if_exists(&cli).map_err(config_err)? {
        match cli_profile(&cli, &bytes, explicit.as_deref())? {
            Some(r) => return Ok(r),
            None => tried.push(format!(
                "{} has no profile {:?}",
                cli.display(),
                explicit.as_deref().unwrap_or("(current)")
            )),
        }
    } else {
        tried.push(format!("{} does not exist", cli.display()));
    }

    // 2. The credentials-SDK ini file.
    let section = explicit.clone().unwrap_or_else(|| "default".into());
    let candidates: Vec<PathBuf> = match cfg
        .credentials_file
        .clone()
        .or_else(|| env_var(env, "ALIBABA_CLOUD_CREDENTIALS_FILE").map(PathBuf::from))
    {
        Some(p) => vec![p],
        None => DEFAULT_INI_FILES.iter().map(PathBuf::from).collect(),
    };
    let mut found_file = false;
    for path in candidates {
        let path = super::expand_home(&path, env).map_err(config_err)?;
        let Some(bytes) = read_if_exists(&path).map_err(config_err)? else {
            tried.push(format!("{} does not exist", path.display()));
            continue;
        };
        found_file = true;
        match ini_profile(&path, &bytes, &section)? {
            Some(r) => return Ok(r),
            None => tried.push(format!("{} has no profile [{section}]", path.display())),
        }
        break;
    }
    let any_file = found_file || tried.iter().any(|t| t.contains(" has no profile"));
    let message = format!("no usable profile: {}", tried.join("; "));
    Err(IdentityError::new(
        SOURCE,
        if any_file {
            ErrorKind::Config
        } else {
            ErrorKind::NotConfigured
        },
        message,
    ))
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        Ok(m) if m.is_dir() => Err(format!("{} is a directory", path.display())),
        Ok(_) => super::read_small_file(path, MAX_PROFILE_FILE).map(Some),
    }
}

/// `Ok(None)`: the file has no such profile.
fn cli_profile(file: &Path, bytes: &[u8], explicit: Option<&str>) -> Result<Option<Resolved>, IdentityError> {
    let err = |m: String| IdentityError::config(SOURCE, format!("{}: {m}", file.display()));
    // Syntax errors name a line and column, never the content.
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| err(format!("not valid JSON ({e})")))?;
    let name = explicit
        .map(str::to_string)
        .or_else(|| {
            doc.get("current")
                .and_then(|c| c.as_str())
                .filter(|c| !c.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "default".into());
    let profiles = match doc.get("profiles") {
        Some(serde_json::Value::Array(a)) => a.as_slice(),
        None => &[],
        Some(_) => return Err(err("\"profiles\" is not a list".into())),
    };
    let Some(p) = profiles
        .iter()
        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(name.as_str()))
    else {
        return Ok(None);
    };
    let mode = p.get("mode").and_then(|m| m.as_str()).unwrap_or("");
    let perr = |m: String| err(format!("profile {name:?} (mode {mode:?}): {m}"));
    let text = |key: &str| -> Option<String> {
        p.get(key)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let need = |key: &str| text(key).ok_or_else(|| perr(format!("{key} is missing or empty")));
    let number = |key: &str| -> Option<i64> { p.get(key).and_then(|v| v.as_i64()).filter(|n| *n > 0) };
    let duration = number("expired_seconds").and_then(|n| u32::try_from(n).ok());
    let key = |with_token: bool| -> Result<Credentials, IdentityError> {
        Ok(Credentials {
            access_key_id: need("access_key_id")?,
            access_key_secret: SecretString::from(need("access_key_secret")?),
            security_token: if with_token {
                Some(SecretString::from(need("sts_token")?))
            } else {
                text("sts_token").map(SecretString::from)
            },
            expiration: None,
        })
    };
    let spec = match mode.to_ascii_lowercase().as_str() {
        "ak" => ProfileSpec::Static(Credentials {
            security_token: None,
            ..key(false)?
        }),
        "ststoken" => {
            let mut c = key(true)?;
            c.expiration = number("sts_expiration").and_then(|t| DateTime::from_timestamp(t, 0));
            ProfileSpec::Static(c)
        }
        "ramrolearn" => ProfileSpec::RamRoleArn {
            base: key(false)?,
            role_arn: need("ram_role_arn")?,
            session_name: text("ram_session_name"),
            duration_seconds: duration,
            policy: None,
            external_id: text("external_id"),
        },
        "ecsramrole" => ProfileSpec::EcsRamRole {
            role_name: text("ram_role_name"),
        },
        "oidc" => ProfileSpec::Oidc {
            role_arn: need("ram_role_arn")?,
            oidc_provider_arn: need("oidc_provider_arn")?,
            token_file: PathBuf::from(need("oidc_token_file")?),
            session_name: text("ram_session_name"),
            duration_seconds: duration,
            policy: None,
        },
        "" => return Err(perr("mode is missing".into())),
        _ => {
            return Err(perr(
                "this mode is not supported (supported: AK, StsToken, RamRoleArn, EcsRamRole, OIDC)".into(),
            ));
        }
    };
    Ok(Some(Resolved {
        file: file.to_path_buf(),
        profile: name,
        spec,
    }))
}

/// Sections of an ini file: `[name]`, `key = value` (or `key: value`), `#`/`;`
/// comments; values trimmed, one pair of surrounding double quotes removed.
/// Later keys win; lines outside a section are ignored.
pub fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_string();
            out.entry(name.clone()).or_default();
            section = Some(name);
            continue;
        }
        let Some(s) = &section else { continue };
        let Some(at) = line.find(['=', ':']) else { continue };
        let key = line[..at].trim().to_string();
        let mut value = line[at + 1..].trim();
        if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
            value = &value[1..value.len() - 1];
        }
        if let Some(sec) = out.get_mut(s) {
            sec.insert(key, value.to_string());
        }
    }
    out
}

fn ini_profile(file: &Path, bytes: &[u8], section: &str) -> Result<Option<Resolved>, IdentityError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| IdentityError::config(SOURCE, format!("{} is not UTF-8 text", file.display())))?;
    let sections = parse_ini(text);
    let Some(s) = sections.get(section) else {
        return Ok(None);
    };
    let kind = s.get("type").map(String::as_str).unwrap_or("");
    let perr = |m: String| {
        IdentityError::config(
            SOURCE,
            format!("{}: profile [{section}] (type {kind:?}): {m}", file.display()),
        )
    };
    let text = |key: &str| s.get(key).filter(|v| !v.is_empty()).cloned();
    let need = |key: &str| text(key).ok_or_else(|| perr(format!("{key} is missing or empty")));
    let key = || -> Result<Credentials, IdentityError> {
        Ok(Credentials {
            access_key_id: need("access_key_id")?,
            access_key_secret: SecretString::from(need("access_key_secret")?),
            security_token: None,
            expiration: None,
        })
    };
    let spec = match kind {
        "access_key" => ProfileSpec::Static(key()?),
        "ram_role_arn" => ProfileSpec::RamRoleArn {
            base: key()?,
            role_arn: need("role_arn")?,
            session_name: text("role_session_name"),
            duration_seconds: None,
            policy: text("policy"),
            external_id: text("external_id"),
        },
        "ecs_ram_role" => ProfileSpec::EcsRamRole {
            role_name: text("role_name"),
        },
        "oidc_role_arn" => ProfileSpec::Oidc {
            role_arn: need("role_arn")?,
            oidc_provider_arn: need("oidc_provider_arn")?,
            token_file: PathBuf::from(need("oidc_token_file_path")?),
            session_name: text("role_session_name"),
            duration_seconds: None,
            policy: text("policy"),
        },
        "rsa_key_pair" => return Err(perr("not supported".into())),
        "" => return Err(perr("type is missing".into())),
        _ => {
            return Err(perr(
                "not supported (supported: access_key, ram_role_arn, ecs_ram_role, oidc_role_arn)".into(),
            ));
        }
    };
    Ok(Some(Resolved {
        file: file.to_path_buf(),
        profile: section.to_string(),
        spec,
    }))
}

/// The profile source: resolves the files on every fetch and does what the
/// profile says.
pub struct ProfileSource {
    cfg: IdentityConfig,
    env: BTreeMap<String, String>,
    sts: Arc<StsClient>,
    default_session: String,
}

impl ProfileSource {
    pub fn new(
        cfg: &IdentityConfig,
        env: &BTreeMap<String, String>,
        sts: Arc<StsClient>,
    ) -> Result<Self, IdentityError> {
        Ok(ProfileSource {
            cfg: cfg.clone(),
            env: env.clone(),
            sts,
            default_session: super::session_name(cfg.role_session_name.as_deref(), env),
        })
    }

    pub fn resolve(&self) -> Result<Resolved, IdentityError> {
        resolve(&self.cfg, &self.env)
    }

    fn in_profile(r: &Resolved, e: IdentityError) -> IdentityError {
        IdentityError::new(
            SOURCE,
            e.kind,
            format!(
                "{} profile {:?} (mode {}): {}",
                r.file.display(),
                r.profile,
                r.spec.mode(),
                e.message
            ),
        )
    }
}

#[async_trait::async_trait]
impl Fetch for ProfileSource {
    async fn fetch(&self) -> Result<Credentials, IdentityError> {
        let r = self.resolve()?;
        let result = match r.spec.clone() {
            ProfileSpec::Static(c) => Ok(c),
            ProfileSpec::RamRoleArn {
                base,
                role_arn,
                session_name,
                duration_seconds,
                policy,
                external_id,
            } => {
                let req = AssumeRoleRequest {
                    role_arn,
                    session_name: session_name.unwrap_or_else(|| self.default_session.clone()),
                    duration_seconds: duration_seconds.unwrap_or(self.cfg.duration_seconds()),
                    policy,
                    external_id,
                };
                self.sts
                    .assume_role(&base, &req)
                    .await
                    .map(Credentials::from)
                    .map_err(|e| IdentityError::from_sts(SOURCE, &e))
            }
            ProfileSpec::EcsRamRole { role_name } => {
                let settings = EcsSettings {
                    endpoint: self.cfg.metadata_endpoint().to_string(),
                    role_name,
                    imds_v1_fallback: self.cfg.imds_v1_fallback,
                };
                match EcsSource::new(settings) {
                    Ok(src) => src.fetch().await,
                    Err(e) => Err(e),
                }
            }
            ProfileSpec::Oidc {
                role_arn,
                oidc_provider_arn,
                token_file,
                session_name,
                duration_seconds,
                policy,
            } => {
                let token_file = super::expand_home(&token_file, &self.env)
                    .map_err(|m| IdentityError::config(SOURCE, m))?;
                let settings = OidcSettings {
                    role_arn,
                    oidc_provider_arn,
                    token_file,
                    session_name: session_name.unwrap_or_else(|| self.default_session.clone()),
                    duration_seconds: duration_seconds.unwrap_or(self.cfg.duration_seconds()),
                    policy,
                };
                OidcSource::new(self.sts.clone(), settings).fetch().await
            }
        };
        result.map_err(|e| Self::in_profile(&r, e))
    }
    fn source_name(&self) -> &'static str {
        SOURCE
    }
    fn reload_every(&self) -> Option<Duration> {
        Some(FILE_RELOAD_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::testutil::{Recorded, TestServer, env, sts_client, sts_success};

    fn cfg_with(dir: &Path) -> IdentityConfig {
        IdentityConfig {
            source: crate::config::IdentitySource::Profile,
            cli_config_file: Some(dir.join("config.json")),
            credentials_file: Some(dir.join("credentials")),
            ..Default::default()
        }
    }

    const CLI: &str = r#"{
      "current": "dev",
      "profiles": [
        {"name": "default", "mode": "AK", "access_key_id": "LTAIdefault", "access_key_secret": "sec-default", "region_id": "cn-hangzhou"},
        {"name": "dev", "mode": "StsToken", "access_key_id": "STS.dev", "access_key_secret": "sec-dev", "sts_token": "tok-dev", "sts_expiration": 4070908800},
        {"name": "arn", "mode": "RamRoleArn", "access_key_id": "LTAIarn", "access_key_secret": "sec-arn", "ram_role_arn": "acs:ram::1:role/r", "ram_session_name": "cli-s", "expired_seconds": 900},
        {"name": "ecs", "mode": "EcsRamRole", "ram_role_name": "EcsRole"},
        {"name": "oidc", "mode": "OIDC", "ram_role_arn": "acs:ram::1:role/o", "oidc_provider_arn": "acs:ram::1:oidc-provider/p", "oidc_token_file": "/t"},
        {"name": "sso", "mode": "CloudSSO"},
        {"name": "half", "mode": "AK", "access_key_id": "LTAIhalf"}
      ]
    }"#;

    #[test]
    fn cli_profiles_by_current_env_and_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), CLI).unwrap();
        let mut cfg = cfg_with(dir.path());
        let r = resolve(&cfg, &env(&[])).unwrap();
        assert_eq!(r.profile, "dev");
        let ProfileSpec::Static(c) = &r.spec else { panic!() };
        assert_eq!(
            (c.access_key_id.as_str(), c.token()),
            ("STS.dev", Some("tok-dev"))
        );
        assert_eq!(c.expiration.unwrap().timestamp(), 4_070_908_800);

        let r = resolve(&cfg, &env(&[("ALIBABA_CLOUD_PROFILE", "default")])).unwrap();
        assert_eq!(r.spec.mode(), "AK");
        cfg.profile = Some("arn".into());
        let r = resolve(&cfg, &env(&[("ALIBABA_CLOUD_PROFILE", "default")])).unwrap();
        let ProfileSpec::RamRoleArn {
            base,
            role_arn,
            session_name,
            duration_seconds,
            ..
        } = r.spec
        else {
            panic!()
        };
        assert_eq!(base.access_key_id, "LTAIarn");
        assert_eq!(role_arn, "acs:ram::1:role/r");
        assert_eq!(session_name.as_deref(), Some("cli-s"));
        assert_eq!(duration_seconds, Some(900));
        cfg.profile = Some("ecs".into());
        assert!(matches!(
            resolve(&cfg, &env(&[])).unwrap().spec,
            ProfileSpec::EcsRamRole { role_name: Some(ref n) } if n == "EcsRole"
        ));
        cfg.profile = Some("oidc".into());
        assert_eq!(resolve(&cfg, &env(&[])).unwrap().spec.mode(), "OIDC");
    }

    #[test]
    fn errors_name_file_and_profile_never_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), CLI).unwrap();
        let mut cfg = cfg_with(dir.path());
        cfg.profile = Some("sso".into());
        let e = resolve(&cfg, &env(&[])).unwrap_err();
        assert!(
            e.message.contains("config.json")
                && e.message.contains("\"sso\"")
                && e.message.contains("not supported")
        );
        cfg.profile = Some("half".into());
        let e = resolve(&cfg, &env(&[])).unwrap_err();
        assert!(e.message.contains("access_key_secret is missing"), "{e}");
        assert!(!e.message.contains("sec-"));
        cfg.profile = Some("nope".into());
        let e = resolve(&cfg, &env(&[])).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.contains("no profile \"nope\""), "{e}");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"profiles": [{"name": "default", "access_key_secret": "sec-x""#,
        )
        .unwrap();
        let e = resolve(&cfg_with(dir.path()), &env(&[])).unwrap_err();
        assert!(
            e.message.contains("not valid JSON") && !e.message.contains("sec-x"),
            "{e}"
        );
        for junk in [
            "[]",
            "null",
            r#"{"profiles": 3}"#,
            r#"{"profiles": [1, "x", {"name": 5}]}"#,
        ] {
            std::fs::write(dir.path().join("config.json"), junk).unwrap();
            assert!(resolve(&cfg_with(dir.path()), &env(&[])).is_err(), "{junk}");
        }
    }

    #[test]
    fn ini_file_types_and_sections() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("credentials"),
            "# comment\n[default]\ntype = access_key\naccess_key_id = LTAIini\naccess_key_secret = \"sec-ini\"\n\n\
             [arn]\ntype = ram_role_arn\naccess_key_id = LTAIa\naccess_key_secret = sec-a\nrole_arn = acs:ram::1:role/x\nrole_session_name = s\npolicy = {\"Version\":\"1\"}\n\
             [ecs]\ntype = ecs_ram_role\nrole_name = R\n\
             [oidc]\ntype = oidc_role_arn\nrole_arn = acs:ram::1:role/o\noidc_provider_arn = acs:ram::1:oidc-provider/p\noidc_token_file_path = /t\n\
             [rsa]\ntype = rsa_key_pair\n",
        )
        .unwrap();
        let mut cfg = cfg_with(dir.path());
        let r = resolve(&cfg, &env(&[])).unwrap();
        let ProfileSpec::Static(c) = &r.spec else { panic!() };
        assert_eq!((c.access_key_id.as_str(), c.secret()), ("LTAIini", "sec-ini"));
        cfg.profile = Some("arn".into());
        let ProfileSpec::RamRoleArn { policy, .. } = resolve(&cfg, &env(&[])).unwrap().spec else {
            panic!()
        };
        assert_eq!(policy.as_deref(), Some("{\"Version\":\"1\"}"));
        cfg.profile = Some("ecs".into());
        assert_eq!(resolve(&cfg, &env(&[])).unwrap().spec.mode(), "EcsRamRole");
        cfg.profile = Some("oidc".into());
        assert_eq!(resolve(&cfg, &env(&[])).unwrap().spec.mode(), "OIDC");
        cfg.profile = Some("rsa".into());
        let e = resolve(&cfg, &env(&[])).unwrap_err();
        assert!(
            e.message.contains("not supported") && e.message.contains("[rsa]"),
            "{e}"
        );
    }

    #[test]
    fn default_paths_expand_home_and_try_credentials_ini() {
        let home = tempfile::tempdir().unwrap();
        let cfg = IdentityConfig {
            source: crate::config::IdentitySource::Profile,
            ..Default::default()
        };
        let e = resolve(&cfg, &env(&[("HOME", home.path().to_str().unwrap())])).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotConfigured);
        std::fs::create_dir_all(home.path().join(".alibabacloud")).unwrap();
        std::fs::write(
            home.path().join(".alibabacloud/credentials.ini"),
            "[default]\ntype = access_key\naccess_key_id = LTAIpy\naccess_key_secret = s\n",
        )
        .unwrap();
        let r = resolve(&cfg, &env(&[("HOME", home.path().to_str().unwrap())])).unwrap();
        assert!(r.file.ends_with(".alibabacloud/credentials.ini"));
        // The CLI file wins when it has the profile.
        std::fs::create_dir_all(home.path().join(".aliyun")).unwrap();
        std::fs::write(home.path().join(".aliyun/config.json"), CLI).unwrap();
        let r = resolve(
            &cfg,
            &env(&[
                ("HOME", home.path().to_str().unwrap()),
                ("ALIBABA_CLOUD_PROFILE", "default"),
            ]),
        )
        .unwrap();
        assert!(r.file.ends_with(".aliyun/config.json"));
        // ALIBABA_CLOUD_CONFIG_FILE / ALIBABA_CLOUD_CREDENTIALS_FILE override the defaults.
        let other = home.path().join("elsewhere.ini");
        std::fs::write(
            &other,
            "[default]\ntype = access_key\naccess_key_id = LTAIenv\naccess_key_secret = s\n",
        )
        .unwrap();
        let r = resolve(
            &cfg,
            &env(&[
                ("HOME", home.path().to_str().unwrap()),
                ("ALIBABA_CLOUD_CONFIG_FILE", "/nonexistent/config.json"),
                ("ALIBABA_CLOUD_CREDENTIALS_FILE", other.to_str().unwrap()),
            ]),
        )
        .unwrap();
        let ProfileSpec::Static(c) = r.spec else { panic!() };
        assert_eq!(c.access_key_id, "LTAIenv");
    }

    #[tokio::test]
    async fn ram_role_arn_profile_assumes_the_role_with_the_profile_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), CLI).unwrap();
        let server =
            TestServer::start(|_: &Recorded| (200, sts_success("STS.NProf", Duration::from_secs(3600))))
                .await;
        let mut cfg = cfg_with(dir.path());
        cfg.profile = Some("arn".into());
        let src = ProfileSource::new(&cfg, &env(&[]), sts_client(&server.url)).unwrap();
        let c = src.fetch().await.unwrap();
        assert_eq!(c.access_key_id, "STS.NProf");
        let p = server.requests()[0].params();
        assert_eq!(p["AccessKeyId"], "LTAIarn");
        assert_eq!(p["RoleSessionName"], "cli-s");
        assert_eq!(p["DurationSeconds"], "900");
    }

    #[tokio::test]
    async fn ecs_profile_uses_the_configured_metadata_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), CLI).unwrap();
        let server = TestServer::start(|r: &Recorded| match r.method.as_str() {
            "PUT" => (200, "tok".into()),
            _ => (
                200,
                r#"{"Code":"Success","AccessKeyId":"STS.NEcsP","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2099-01-01T00:00:00Z"}"#.into(),
            ),
        })
        .await;
        let mut cfg = cfg_with(dir.path());
        cfg.profile = Some("ecs".into());
        cfg.metadata_endpoint = Some(server.url.clone());
        let src = ProfileSource::new(&cfg, &env(&[]), sts_client("http://127.0.0.1:1")).unwrap();
        assert_eq!(src.fetch().await.unwrap().access_key_id, "STS.NEcsP");
        assert_eq!(
            server.requests()[1].path,
            "/latest/meta-data/ram/security-credentials/EcsRole"
        );
    }

    #[test]
    fn ini_parser_is_total() {
        let s = parse_ini("key=outside\n[a]\nx = 1\n[a]\ny: \"2\"\nnoequals\n[ b ]\n=v\n\u{feff}[c\n");
        assert_eq!(s["a"]["x"], "1");
        assert_eq!(s["a"]["y"], "2");
        assert!(s.contains_key("b"));
        assert!(!s.contains_key("key"));
    }
}
