use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ossvend::config::{self, Config, DEFAULT_CONFIG_PATH};
use ossvend::server;
use ossvend::state::AppState;

// A request allocates about fifty small, short-lived objects (hyper, axum,
// the log line); glibc's malloc spent ~17% of a cached request's instructions
// on them, mimalloc's thread-local free lists a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Vends short-lived, least-privilege upload rights for Alibaba Cloud OSS.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve {
        /// Config file (default: config/ossvend.toml).
        #[arg(long, env = "OSSVEND_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Offline local mode: the whole upload flow with no cloud account. STS and
    /// OSS are emulated in this process (development only; loopback only).
    Local {
        /// Demo page, ossvend routes, STS emulator (/_local/sts) and listing (/_local/objects).
        #[arg(long, default_value = DEFAULT_LOCAL_LISTEN)]
        listen: String,
        /// The emulated OSS endpoint (default: the port after --listen's).
        #[arg(long)]
        oss_listen: Option<String>,
        /// Where uploaded objects are stored.
        #[arg(long, default_value = DEFAULT_LOCAL_DATA_DIR)]
        data_dir: PathBuf,
        /// A config to use instead of the built-in config/ossvend.local.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Do not give grants without [grants.callback] an upload callback to this
        /// process (on by default: uploads are answered with the verified event).
        #[arg(long)]
        no_callbacks: bool,
    },
    /// Validate a config file and print every problem found.
    CheckConfig {
        #[arg(long, env = "OSSVEND_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the SHA-256 digest of an API key read from stdin, for [[auth.api_keys]];
    /// with --generate, make a new random key and print both.
    HashKey {
        #[arg(long)]
        generate: bool,
        /// The subject the key stands for (used in the printed config snippet).
        #[arg(long, default_value = "my-backend")]
        id: String,
    },
    /// Print AWS `credential_process` JSON fetched from an ossvend credentials URL
    /// (for `credential_process = ossvend credential-process --url …` in ~/.aws/config).
    CredentialProcess {
        /// e.g. https://vend.example.com/v1/grants/uploads/credentials
        #[arg(long)]
        url: String,
        /// File whose first line is the API key (sent as X-Api-Key).
        #[arg(long)]
        api_key_file: Option<PathBuf>,
    },
    /// Offline signer for debugging SignatureDoesNotMatch (explicit --at, --explain).
    #[command(subcommand)]
    Sign(ossvend::signcli::SignCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    match cli.command {
        Command::HashKey { generate, id } => hash_key(generate, &id),
        Command::CredentialProcess { url, api_key_file } => credential_process(&url, api_key_file.as_deref()),
        Command::Sign(cmd) => match ossvend::signcli::run(&cmd) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => report(&[e]),
        },
        Command::CheckConfig { config } => match load_checked(config.as_deref(), &env) {
            Ok((path, cfg)) => {
                println!("{}: ok ({} grant(s))", path.display(), cfg.grants.len());
                ExitCode::SUCCESS
            }
            Err(problems) => report(&problems),
        },
        Command::Local {
            listen,
            oss_listen,
            data_dir,
            config,
            no_callbacks,
        } => run_local(
            LocalArgs {
                listen,
                oss_listen,
                data_dir,
                config,
                callbacks: !no_callbacks,
            },
            &env,
        ),
        // No config file and no cloud identity: a newcomer's first run. Local mode,
        // said loudly, instead of an error about a missing file.
        Command::Serve { config: None }
            if !Path::new(DEFAULT_CONFIG_PATH).exists() && first_run_goes_local(&env) =>
        {
            eprintln!(
                "ossvend: no {DEFAULT_CONFIG_PATH} and no cloud identity in the environment: \
                 starting LOCAL MODE (emulated STS and OSS, development only). \
                 Use `ossvend serve --config FILE` for the real thing."
            );
            run_local(
                LocalArgs {
                    listen: env
                        .get("OSSVEND_SERVER_LISTEN")
                        .cloned()
                        .unwrap_or_else(|| DEFAULT_LOCAL_LISTEN.to_string()),
                    oss_listen: None,
                    data_dir: PathBuf::from(DEFAULT_LOCAL_DATA_DIR),
                    config: None,
                    callbacks: true,
                },
                &env,
            )
        }
        Command::Serve { config } => {
            let (path, cfg) = match load_checked(config.as_deref(), &env) {
                Ok(c) => c,
                Err(problems) => return report(&problems),
            };
            // Held to the end: dropping it writes out the queued log lines.
            let _log = ossvend::telemetry::init(cfg.server.log_format);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return report(&[format!("cannot start the runtime: {e}")]),
            };
            rt.block_on(async move {
                let listen = cfg.server.listen.clone();
                let admin_listen = cfg.admin.listen.clone();
                let state = match AppState::build(cfg, &env).await {
                    Ok(s) => s,
                    Err(e) => return report(&[e]),
                };
                let listener = match tokio::net::TcpListener::bind(&listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        return report(&[format!("server.listen: cannot bind {listen}: {e}")]);
                    }
                };
                let admin = match admin_listen {
                    None => None,
                    Some(a) => match tokio::net::TcpListener::bind(&a).await {
                        Ok(l) => Some(l),
                        Err(e) => return report(&[format!("admin.listen: cannot bind {a}: {e}")]),
                    },
                };
                // Reloads re-read this file with this environment.
                let live = ossvend::reload::Live::new(state, ossvend::routes::app, path, env.clone());
                match server::run_live(live, listener, admin).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => report(&[format!("server error: {e}")]),
                }
            })
        }
    }
}

const DEFAULT_LOCAL_LISTEN: &str = "127.0.0.1:8000";
const DEFAULT_LOCAL_DATA_DIR: &str = ".ossvend-local";

/// `ossvend local`'s arguments as given (the command exists in every build).
#[cfg_attr(not(feature = "local"), allow(dead_code))]
struct LocalArgs {
    listen: String,
    oss_listen: Option<String>,
    data_dir: PathBuf,
    config: Option<PathBuf>,
    callbacks: bool,
}

#[cfg(feature = "local")]
fn first_run_goes_local(env: &BTreeMap<String, String>) -> bool {
    !ossvend::local::env_has_cloud_identity(env)
}

/// A server-only build never starts the emulators by itself.
#[cfg(not(feature = "local"))]
fn first_run_goes_local(_env: &BTreeMap<String, String>) -> bool {
    false
}

#[cfg(feature = "local")]
fn run_local(args: LocalArgs, env: &BTreeMap<String, String>) -> ExitCode {
    let opts = ossvend::local::Options {
        listen: args.listen,
        oss_listen: args.oss_listen,
        data_dir: args.data_dir,
        config: args.config,
        callbacks: args.callbacks,
    };
    let _log = ossvend::telemetry::init(ossvend::local::log_format(&opts, env));
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return report(&[format!("cannot start the runtime: {e}")]),
    };
    match rt.block_on(ossvend::local::run(opts, env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(problems) => report(&problems),
    }
}

#[cfg(not(feature = "local"))]
fn run_local(_args: LocalArgs, _env: &BTreeMap<String, String>) -> ExitCode {
    report(&[
        "this ossvend was built without local mode (cargo feature `local`, on by default; \
              the container image leaves it out): build with default features to run `ossvend local`"
            .to_string(),
    ])
}

/// Loads, overrides from the environment and validates; every problem at once.
fn load_checked(
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<(PathBuf, Config), Vec<String>> {
    let path = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let cfg = config::load(&path, env).map_err(|e| vec![e.to_string()])?;
    let problems = ossvend::check::config(&cfg, env);
    if problems.is_empty() {
        Ok((path, cfg))
    } else {
        Err(problems
            .iter()
            .map(|p| format!("{}: {p}", path.display()))
            .collect())
    }
}

/// Fetches the credential in `credential-process` format and prints it; any
/// failure is one line on stderr and a non-zero exit, as AWS SDKs expect.
fn credential_process(url: &str, api_key_file: Option<&Path>) -> ExitCode {
    let run = async {
        let mut url = url::Url::parse(url).map_err(|e| format!("--url {url:?}: {e}"))?;
        // This command prints credential_process JSON and nothing else: any
        // `format` in the URL is replaced (the server would take the first one).
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "format")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .append_pair("format", "credential-process");
        ossvend::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .map_err(|e| e.to_string())?;
        let mut req = client.get(url);
        if let Some(path) = api_key_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--api-key-file {}: {e}", path.display()))?;
            let key = text.lines().next().unwrap_or_default().trim().to_string();
            if key.is_empty() {
                return Err(format!("--api-key-file {} is empty", path.display()));
            }
            req = req.header("x-api-key", key);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach ossvend: {e}"))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            let code = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(format!("ossvend answered HTTP {status} {code}"));
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|_| "ossvend did not answer JSON".to_string())?;
        if v["Version"] != 1 {
            return Err("the response is not credential_process JSON (Version 1)".into());
        }
        Ok(body)
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return report(&[e.to_string()]),
    };
    match rt.block_on(run) {
        Ok(body) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => report(&[e]),
    }
}

/// Keys are read from stdin, never from the command line (shell history).
fn hash_key(generate: bool, id: &str) -> ExitCode {
    use ossvend::auth::api_key;
    let key = if generate {
        api_key::generate_key()
    } else {
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_err() || line.trim().is_empty() {
            return report(&["pipe the API key on stdin, or use --generate".into()]);
        }
        line.trim().to_string()
    };
    if generate {
        println!("key (give it to the client; it is not stored anywhere): {key}");
    }
    println!(
        "[[auth.api_keys]]\nid = {id:?}\nsha256 = {:?}",
        api_key::hash_key(&key)
    );
    ExitCode::SUCCESS
}

fn report(problems: &[String]) -> ExitCode {
    for p in problems {
        eprintln!("error: {p}");
    }
    if problems.len() > 1 {
        eprintln!("{} problems found", problems.len());
    }
    ExitCode::from(2)
}
