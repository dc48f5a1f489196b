//! The deployment artifacts (issue 8): the Dockerfile and the Kubernetes manifests in
//! deploy/kubernetes must agree with each other and with the binary. Each kustomize
//! variant (rrsa, accesskey) is rendered here (resources plus strategic-merge patches;
//! compared with `kubectl kustomize` when kubectl is installed), then its container is
//! checked and the real binary is run with its arguments, environment and config.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::Server;

use serde::Deserialize;
use serde_json::{Value, json};

/// The kustomize entry points: RRSA (recommended) and the AccessKey Secret.
const VARIANTS: &[&str] = &["rrsa", "accesskey", "fleet"];
/// Files under deploy/kubernetes that no kustomization lists, on purpose.
const UNLISTED: &[&str] = &[
    "accesskey/secret.example.yaml",
    "fleet/secret.example.yaml",
    "base/ossvend.toml",
];

/// The variants whose identity is RRSA (the fleet variant builds on it).
fn uses_rrsa(name: &str) -> bool {
    matches!(name, "rrsa" | "fleet")
}
const NONROOT: u64 = 65532;

fn deploy_dir() -> PathBuf {
    crate::support::repo_root().join("deploy/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every non-empty document of a YAML file, as JSON.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// Paths compare canonically (`rrsa/../base/x.yaml` is `base/x.yaml`).
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kind_name(doc: &Value) -> (String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (s(&doc["kind"]), s(&doc["metadata"]["name"]))
}

// ---------------------------------------------------------------------------
// Rendering: kustomize's resources and patches, the parts these manifests use.
// ---------------------------------------------------------------------------

/// The merge key of the lists Kubernetes merges by key; other lists are replaced.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "env" | "volumes" | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

/// Strategic merge patch: maps merge, `null` deletes, keyed lists merge by key
/// (`$patch: delete` removes an item), everything else is replaced.
fn strategic_merge(base: &mut Value, patch: &Value) {
    let (Some(b), Some(p)) = (base.as_object_mut(), patch.as_object()) else {
        *base = patch.clone();
        return;
    };
    for (k, pv) in p {
        if pv.is_null() {
            b.remove(k);
            continue;
        }
        let key = merge_key(k);
        match (b.get_mut(k), pv) {
            (Some(bv), Value::Object(_)) if bv.is_object() => strategic_merge(bv, pv),
            (Some(Value::Array(items)), Value::Array(patches)) if key.is_some() => {
                merge_list(items, patches, key.unwrap())
            }
            _ => {
                b.insert(k.clone(), pv.clone());
            }
        }
    }
}

fn merge_list(items: &mut Vec<Value>, patches: &[Value], key: &str) {
    for p in patches {
        let id = p
            .get(key)
            .unwrap_or_else(|| panic!("patch list item without {key}: {p}"));
        let pos = items.iter().position(|i| i.get(key) == Some(id));
        if p.get("$patch") == Some(&json!("delete")) {
            let i = pos.unwrap_or_else(|| panic!("$patch: delete of {id}, which the base does not have"));
            items.remove(i);
            continue;
        }
        match pos {
            Some(i) => strategic_merge(&mut items[i], p),
            None => items.push(p.clone()),
        }
    }
}

/// The documents `kubectl apply -k dir` would apply; `files` collects every file read.
fn render(dir: &Path, files: &mut BTreeSet<PathBuf>) -> Vec<Value> {
    let kpath = dir.join("kustomization.yaml");
    files.insert(canonical(&kpath));
    let k = yaml_docs(&kpath).pop().expect("a kustomization");
    assert_eq!(k["kind"], "Kustomization", "{}", kpath.display());
    for key in k.as_object().unwrap().keys() {
        assert!(
            ["apiVersion", "kind", "resources", "patches"].contains(&key.as_str()),
            "{}: {key} is not rendered by tests/it/deploy.rs; teach it first",
            kpath.display()
        );
    }
    let mut docs = Vec::new();
    for r in k["resources"].as_array().into_iter().flatten() {
        let path = dir.join(r.as_str().unwrap());
        if path.is_dir() {
            docs.extend(render(&path, files));
        } else {
            files.insert(canonical(&path));
            docs.extend(yaml_docs(&path));
        }
    }
    for p in k["patches"].as_array().into_iter().flatten() {
        assert_eq!(
            p.as_object().map(|o| o.len()),
            Some(1),
            "only `- path: FILE` patches are rendered here: {p}"
        );
        let path = dir.join(p["path"].as_str().expect("patch path"));
        files.insert(canonical(&path));
        for patch in yaml_docs(&path) {
            let id = kind_name(&patch);
            let mut targets = docs.iter_mut().filter(|d| kind_name(d) == id);
            let target = targets
                .next()
                .unwrap_or_else(|| panic!("{}: no {id:?} to patch", path.display()));
            strategic_merge(target, &patch);
            assert!(targets.next().is_none(), "two {id:?}");
        }
    }
    docs
}

struct Variant {
    name: &'static str,
    docs: Vec<Value>,
}

impl Variant {
    fn load(name: &'static str) -> Variant {
        Variant {
            name,
            docs: render(&deploy_dir().join(name), &mut BTreeSet::new()),
        }
    }

    fn one(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self.docs.iter().filter(|d| d["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "{}: expected one {kind}", self.name);
        found[0]
    }

    fn deployment(&self) -> &Value {
        self.one("Deployment")
    }

    fn pod(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "{}: one container", self.name);
        &containers[0]
    }

    /// The `--config` path of the container's args and the text of the ConfigMap key
    /// mounted there.
    fn config(&self) -> (String, String) {
        let c = self.container();
        let path = config_arg(&args(c));
        let (dir, file) = path.rsplit_once('/').expect("an absolute --config path");
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{}: nothing is mounted at {dir}", self.name));
        let volume = self.pod()["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mounted volume");
        let cm_name = volume["configMap"]["name"].as_str().expect("a ConfigMap volume");
        let cm = self
            .docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == cm_name)
            .unwrap_or_else(|| panic!("{}: no ConfigMap {cm_name}", self.name));
        let text = cm["data"][file]
            .as_str()
            .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no key {file}"));
        (path, text.to_string())
    }

    /// The container's environment: literal values, Secret references resolved from
    /// secret.example.yaml (the test's stand-in for the real Secret).
    fn env(&self) -> Vec<(String, String)> {
        let secret = example_secret();
        let mut out = Vec::new();
        for e in self.container()["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                let secret = if r["name"] == secret["metadata"]["name"] {
                    secret.clone()
                } else {
                    fleet_secret()
                };
                assert_eq!(r["name"], secret["metadata"]["name"], "{name}: another Secret");
                secret["stringData"][r["key"].as_str().unwrap()]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: the example Secret has no {}", r["key"]))
                    .to_string()
            } else {
                panic!("{}: env {name} is neither a value nor a Secret key", self.name)
            };
            out.push((name, value));
        }
        assert!(self.container()["envFrom"].is_null(), "env only, by name");
        out
    }
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn config_arg(args: &[String]) -> String {
    let i = args
        .iter()
        .position(|a| a == "--config")
        .expect("--config in args");
    args[i + 1].clone()
}

fn example_secret() -> Value {
    let mut docs = yaml_docs(&deploy_dir().join("accesskey/secret.example.yaml"));
    assert_eq!(docs.len(), 1);
    docs.pop().unwrap()
}

fn fleet_secret() -> Value {
    let mut docs = yaml_docs(&deploy_dir().join("fleet/secret.example.yaml"));
    assert_eq!(docs.len(), 1);
    docs.pop().unwrap()
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn parse_config(text: &str) -> ossvend::config::Config {
    ossvend::config::parse(text, &BTreeMap::new()).expect("the ConfigMap's config parses")
}

/// Kubernetes quantities as numbers: cpu in millicores, memory in bytes.
fn quantity(v: &Value) -> f64 {
    let s = match v {
        Value::Number(n) => return n.as_f64().unwrap(),
        Value::String(s) => s.as_str(),
        _ => panic!("not a quantity: {v}"),
    };
    for (suffix, factor) in [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("m", 0.001),
    ] {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().unwrap() * factor;
        }
    }
    s.parse().unwrap_or_else(|_| panic!("not a quantity: {s}"))
}

// ---------------------------------------------------------------------------
// The Dockerfile
// ---------------------------------------------------------------------------

struct Stage {
    from: String,
    instructions: Vec<(String, String)>,
}

fn dockerfile() -> Vec<Stage> {
    let text = read(&crate::support::repo_root().join("Dockerfile"));
    let mut lines = Vec::new();
    let mut cur = String::new();
    for raw in text.lines() {
        let s = raw.trim();
        if s.starts_with('#') || (cur.is_empty() && s.is_empty()) {
            continue;
        }
        match s.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(s);
                lines.push(std::mem::take(&mut cur));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in lines {
        let (word, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let word = word.to_ascii_uppercase();
        if word == "FROM" {
            stages.push(Stage {
                from: rest.trim().to_string(),
                instructions: Vec::new(),
            });
        } else {
            let stage = stages.last_mut().expect("FROM first");
            stage.instructions.push((word, rest.trim().to_string()));
        }
    }
    stages
}

impl Stage {
    fn all(&self, word: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(w, _)| w == word)
            .map(|(_, r)| r.as_str())
            .collect()
    }
    fn last(&self, word: &str) -> &str {
        self.all(word)
            .pop()
            .unwrap_or_else(|| panic!("the runtime stage has no {word}"))
    }
    fn json_array(&self, word: &str) -> Vec<String> {
        serde_json::from_str(self.last(word)).unwrap_or_else(|e| panic!("{word} must be exec form: {e}"))
    }
    fn env(&self) -> BTreeMap<String, String> {
        self.all("ENV")
            .iter()
            .flat_map(|r| r.split_whitespace())
            .map(|pair| {
                let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
                assert!(!v.contains('"'), "unquoted ENV values only: {pair}");
                (k.to_string(), v.to_string())
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Running the binary the way a manifest does
// ---------------------------------------------------------------------------

/// The manifest's args with the config path pointed at a temporary copy of the
/// ConfigMap's file, and the manifest's environment (plus `extra_env` and PATH).
fn manifest_command(v: &Variant, dir: &Path, extra_env: &[(&str, &str)]) -> Command {
    let (config_path, text) = v.config();
    let local = dir.join("ossvend.toml");
    std::fs::write(&local, text).unwrap();
    let args: Vec<String> = args(v.container())
        .into_iter()
        .map(|a| {
            if a == config_path {
                local.display().to_string()
            } else {
                a
            }
        })
        .collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ossvend"));
    cmd.args(&args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, val) in v.env() {
        cmd.env(k, val);
    }
    for (k, val) in extra_env {
        cmd.env(k, val);
    }
    cmd
}

/// A token the fake STS accepts for AssumeRoleWithOIDC (not signed: the fake checks shape
/// and expiry), written where the manifest's token file would be mounted.
fn fake_oidc_token(dir: &Path) -> PathBuf {
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = chrono::Utc::now().timestamp() + 3600;
    let token = format!(
        "{}.{}.{}",
        b64(json!({"alg": "RS256", "typ": "JWT"})),
        b64(json!({"sub": "system:serviceaccount:default:ossvend", "aud": "sts.aliyuncs.com", "exp": exp})),
        b64(json!("not-a-signature"))
    );
    let path = dir.join("token");
    std::fs::write(&path, token).unwrap();
    path
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn every_manifest_parses_and_every_file_is_used() {
    let root = deploy_dir();
    let mut used = BTreeSet::new();
    for v in VARIANTS {
        let docs = render(&root.join(v), &mut used);
        for d in &docs {
            let (kind, name) = kind_name(d);
            assert!(
                d["apiVersion"].is_string() && !kind.is_empty() && !name.is_empty(),
                "{v}: a document without apiVersion, kind or name: {d}"
            );
        }
    }
    let mut all = BTreeSet::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                if path.extension().is_some_and(|e| e == "yaml") {
                    assert!(!yaml_docs(&path).is_empty(), "{}: empty", path.display());
                }
                all.insert(canonical(&path));
            }
        }
    }
    let unlisted: BTreeSet<PathBuf> = UNLISTED.iter().map(|f| canonical(&root.join(f))).collect();
    let expected: BTreeSet<PathBuf> = used.union(&unlisted).cloned().collect();
    assert_eq!(
        all, expected,
        "files no kustomization lists, or listed files that are missing"
    );
}

/// Sorts keyed lists, so that two renderings compare whatever their list order.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => m.values_mut().for_each(normalize),
        Value::Array(items) => {
            items.iter_mut().for_each(normalize);
            for key in ["name", "mountPath"] {
                if items.iter().all(|i| i.get(key).is_some()) {
                    items.sort_by_key(|i| i[key].to_string());
                    break;
                }
            }
        }
        _ => {}
    }
}

#[test]
fn rendering_matches_kubectl_kustomize_when_installed() {
    for v in VARIANTS {
        let dir = deploy_dir().join(v);
        let out = match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
            Ok(out) => out,
            Err(_) => {
                eprintln!("kubectl is not installed: the rendering is not cross-checked");
                return;
            }
        };
        assert!(
            out.status.success(),
            "kubectl kustomize {v}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let by_id = |docs: Vec<Value>| -> BTreeMap<(String, String), Value> {
            docs.into_iter()
                .map(|mut d| {
                    normalize(&mut d);
                    (kind_name(&d), d)
                })
                .collect()
        };
        let theirs: Vec<Value> = serde_yaml_ng::Deserializer::from_slice(&out.stdout)
            .map(|d| Value::deserialize(d).unwrap())
            .filter(|d| !d.is_null())
            .collect();
        assert_eq!(
            by_id(render(&dir, &mut BTreeSet::new())),
            by_id(theirs),
            "{v}: tests/it/deploy.rs renders differently from kubectl kustomize"
        );
    }
}

#[test]
fn pods_are_locked_down() {
    for name in VARIANTS {
        let v = Variant::load(name);
        let d = v.deployment();
        // The fleet variant runs shared.replicas (fleet_variant_shares_through_redis_…).
        let replicas = if *name == "fleet" { 3 } else { 2 };
        assert_eq!(d["spec"]["replicas"], replicas, "{name}");
        let pod = v.pod();
        assert_eq!(
            pod["automountServiceAccountToken"], false,
            "{name}: no Kubernetes API token"
        );
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{name}");
        assert_eq!(psc["runAsUser"], NONROOT, "{name}");
        assert_eq!(psc["runAsGroup"], NONROOT, "{name}");
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        assert!(pod["hostNetwork"].is_null() && pod["hostPID"].is_null(), "{name}");

        let c = v.container();
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert_ne!(sc["privileged"], true, "{name}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert!(sc["capabilities"]["add"].is_null(), "{name}: no capability added");
        if !sc["runAsUser"].is_null() {
            assert_eq!(sc["runAsUser"], NONROOT, "{name}");
        }
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");

        // Read-only mounts of ConfigMaps and projected tokens: nothing writable at all.
        for m in c["volumeMounts"].as_array().unwrap() {
            assert_eq!(m["readOnly"], true, "{name}: {m}");
        }
        for vol in pod["volumes"].as_array().unwrap() {
            assert!(
                vol["configMap"].is_object() || vol["projected"].is_object(),
                "{name}: unexpected volume {vol}"
            );
        }

        // Requests and limits for both resources; the measured peak RSS is 19.6 MiB
        // (docs/deploying.md), so the memory limit keeps several times that.
        let r = &c["resources"];
        for res in ["cpu", "memory"] {
            let (req, lim) = (quantity(&r["requests"][res]), quantity(&r["limits"][res]));
            assert!(req > 0.0 && req <= lim, "{name}: {res} request {req} limit {lim}");
        }
        assert!(quantity(&r["limits"]["memory"]) >= 64.0 * 1048576.0, "{name}");
        assert!(quantity(&r["requests"]["memory"]) >= 24.0 * 1048576.0, "{name}");
    }
}

#[test]
fn identity_wiring_of_each_variant() {
    // RRSA: the service account's role, the OIDC variables, the projected token.
    let v = Variant::load("rrsa");
    let env = v.env();
    assert_eq!(env_value(&env, "OSSVEND_IDENTITY_SOURCE"), Some("oidc"));
    let sa = v.one("ServiceAccount");
    assert_eq!(v.pod()["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(sa["automountServiceAccountToken"], false);
    let role = sa["metadata"]["annotations"]["pod-identity.alibabacloud.com/role-name"]
        .as_str()
        .expect("the ACK RRSA annotation");
    let role_arn = env_value(&env, "ALIBABA_CLOUD_ROLE_ARN").expect("ALIBABA_CLOUD_ROLE_ARN");
    assert!(
        role_arn.ends_with(&format!(":role/{role}")),
        "{role_arn} vs {role}"
    );
    let provider = env_value(&env, "ALIBABA_CLOUD_OIDC_PROVIDER_ARN").expect("provider ARN");
    assert!(provider.contains(":oidc-provider/ack-rrsa-"), "{provider}");
    let token_file = env_value(&env, "ALIBABA_CLOUD_OIDC_TOKEN_FILE").expect("token file");
    let (dir, file) = token_file.rsplit_once('/').unwrap();
    let mount = v.container()["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .expect("the token's directory is mounted");
    let vol = v.pod()["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|vol| vol["name"] == mount["name"])
        .unwrap();
    let sat = &vol["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(sat["path"], file);
    assert_eq!(sat["audience"], "sts.aliyuncs.com");
    assert!(
        !v.container()["env"].to_string().contains("secretKeyRef"),
        "RRSA references no Secret"
    );

    // AccessKey: identity source env, both halves from the Secret.
    let v = Variant::load("accesskey");
    let env = v.env();
    assert_eq!(env_value(&env, "OSSVEND_IDENTITY_SOURCE"), Some("env"));
    for name in ["ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET"] {
        let e = v.container()["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name}"));
        assert!(
            e["valueFrom"]["secretKeyRef"].is_object(),
            "{name} comes from the Secret"
        );
    }
    assert!(v.pod()["serviceAccountName"].is_null());
}

#[test]
fn probes_ports_and_grace_period_match_the_config() {
    for name in VARIANTS {
        let v = Variant::load(name);
        let (_, text) = v.config();
        let cfg = parse_config(&text);
        assert_eq!(
            cfg.server.log_format,
            ossvend::config::LogFormat::Json,
            "{name}: JSON logs"
        );
        let listen = cfg.server.listen_addr().expect("server.listen");
        let c = v.container();
        let ports = c["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            ports[0]["containerPort"],
            listen.port(),
            "{name}: containerPort vs server.listen"
        );
        let port_name = ports[0]["name"].clone();
        let resolves = |p: &Value| *p == port_name || *p == json!(listen.port());

        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{name}: {probe}");
            assert!(resolves(&get["port"]), "{name}: {probe} port {}", get["port"]);
        }
        // /readyz waits up to 2 s for STS's TCP connect.
        assert!(
            c["readinessProbe"]["timeoutSeconds"].as_u64().unwrap_or(1) >= 3,
            "{name}"
        );

        let svc = v.one("Service");
        for p in svc["spec"]["ports"].as_array().unwrap() {
            assert!(
                resolves(&p["targetPort"]),
                "{name}: Service targetPort {}",
                p["targetPort"]
            );
        }
        assert_eq!(
            svc["spec"]["selector"],
            v.deployment()["spec"]["selector"]["matchLabels"]
        );

        // SIGTERM lets in-flight requests finish (each bounded by request_timeout),
        // after the preStop sleep.
        let grace = v.pod()["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace period");
        let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or(0);
        let timeout = cfg.server.request_timeout.as_secs();
        assert!(
            grace > timeout + pre_stop,
            "{name}: terminationGracePeriodSeconds {grace} <= request_timeout {timeout}s + preStop {pre_stop}s"
        );
    }
}

#[test]
fn args_are_accepted_and_the_config_checks_with_the_manifest_env() {
    for name in VARIANTS {
        let v = Variant::load(name);
        let c = v.container();
        assert!(c["command"].is_null(), "{name}: the image's ENTRYPOINT runs");
        let args = args(c);
        assert_eq!(args[0], "serve", "{name}");

        // clap accepts the exact arguments.
        let out = Command::new(env!("CARGO_BIN_EXE_ossvend"))
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: ossvend {args:?} --help: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // check-config with the ConfigMap's file and the container's environment.
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ossvend.toml");
        std::fs::write(&config, v.config().1).unwrap();
        let token = fake_oidc_token(dir.path());
        let mut check = Command::new(env!("CARGO_BIN_EXE_ossvend"));
        check
            .args(["check-config", "--config"])
            .arg(&config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, val) in v.env() {
            check.env(k, val);
        }
        if uses_rrsa(name) {
            // Where the kubelet would mount the projected token.
            check.env("ALIBABA_CLOUD_OIDC_TOKEN_FILE", &token);
        }
        let out = check.output().unwrap();
        assert!(
            out.status.success(),
            "{name}: check-config with the manifest env: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Without the identity the environment gives, the same config must not check.
        let out = Command::new(env!("CARGO_BIN_EXE_ossvend"))
            .args(["check-config", "--config"])
            .arg(&config)
            .env_clear()
            .env(
                "OSSVEND_IDENTITY_SOURCE",
                env_value(&v.env(), "OSSVEND_IDENTITY_SOURCE").unwrap(),
            )
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}: checks without an identity");
    }
}

#[tokio::test]
async fn the_binary_serves_the_probes_with_each_manifest() {
    let secret = example_secret();
    let ak = secret["stringData"]["ALIBABA_CLOUD_ACCESS_KEY_ID"]
        .as_str()
        .unwrap();
    let sk = secret["stringData"]["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]
        .as_str()
        .unwrap();
    let sts = crate::support::FakeSts::start_with_keys(&[(ak, sk)]);
    let http = crate::support::http();
    for name in VARIANTS {
        let v = Variant::load(name);
        let cfg = parse_config(&v.config().1);
        let dir = tempfile::tempdir().unwrap();
        let token = fake_oidc_token(dir.path());
        let mut extra = vec![
            ("OSSVEND_SERVER_LISTEN", "127.0.0.1:0"),
            ("OSSVEND_STS_ENDPOINT", sts.endpoint.as_str()),
        ];
        if uses_rrsa(name) {
            extra.push(("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token.to_str().unwrap()));
        }
        let mut cmd = manifest_command(&v, dir.path(), &extra);
        let mut server = Server::spawn_listening(&mut cmd, dir, "ossvend listening on http://")
            .unwrap_or_else(|logs| panic!("ossvend did not start:\n{logs}"));

        let get = |path: &str| http.get(format!("{}{path}", server.base)).send();
        assert_eq!(get("/healthz").await.unwrap().status(), 200, "{name}");
        let ready = get("/readyz").await.unwrap();
        let status = ready.status();
        let body: Value = ready.json().await.unwrap();
        assert_eq!(status, 200, "{name}: /readyz {body}");
        // Fleet mode without its Redis (nothing answers here): ready, on the fallback.
        let shared = if cfg.shared.is_some() { "fallback" } else { "-" };
        assert_eq!(
            body["shared"]["status"].as_str().unwrap_or("-"),
            shared,
            "{name}: {body}"
        );
        // The shipped config serves nobody anonymously.
        let grant = &cfg.grants[0].name;
        let anon = get(&format!("/v1/grants/{grant}/credentials")).await.unwrap();
        assert_eq!(anon.status(), 401, "{name}");

        if uses_rrsa(name) {
            let env = v.env();
            let calls = sts.calls().await;
            let oidc = calls
                .iter()
                .rev()
                .find(|c| c["params"]["Action"] == "AssumeRoleWithOIDC")
                .expect("the identity came from AssumeRoleWithOIDC");
            assert_eq!(
                oidc["params"]["RoleArn"],
                env_value(&env, "ALIBABA_CLOUD_ROLE_ARN").unwrap()
            );
            assert_eq!(
                oidc["params"]["OIDCProviderArn"],
                env_value(&env, "ALIBABA_CLOUD_OIDC_PROVIDER_ARN").unwrap()
            );
        }

        // SIGTERM: a clean exit (the wait is a guard, not a timing assertion).
        let exit = server.terminate();
        assert!(exit.success(), "{name}: exit {exit} after SIGTERM");
        std::thread::sleep(Duration::from_millis(100)); // the reader's last lines
        let logs: Vec<String> = server.logs.text().lines().map(str::to_string).collect();
        assert!(!logs.is_empty());
        for line in &logs {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("{name}: not JSON: {line}"));
            assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        }
    }
}

#[test]
fn the_dockerfile_matches_the_manifests() {
    let stages = dockerfile();
    assert!(stages.len() >= 2, "a multi-stage build");
    let build = &stages[0];
    assert!(
        build.from.starts_with("rust:"),
        "the official Rust image: {}",
        build.from
    );
    assert!(
        build
            .all("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked --no-default-features")),
        "a locked, server-only release build (no `local` feature)"
    );
    let rt = stages.last().unwrap();
    assert!(
        rt.from.starts_with("gcr.io/distroless/cc-debian12") && rt.from.ends_with(":nonroot"),
        "{}",
        rt.from
    );
    for s in &stages {
        assert!(
            s.all("HEALTHCHECK").is_empty(),
            "no HEALTHCHECK: probes belong to the orchestrator"
        );
    }
    let user = rt.last("USER");
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    assert_eq!(uid.parse::<u64>().ok(), Some(NONROOT), "a numeric non-root USER");
    assert_eq!(gid.parse::<u64>().ok(), Some(NONROOT));
    let env = rt.env();
    assert_eq!(
        env.get("OSSVEND_SERVER_LOG_FORMAT").map(String::as_str),
        Some("json")
    );
    let entrypoint = rt.json_array("ENTRYPOINT");
    assert_eq!(entrypoint, ["/usr/local/bin/ossvend"]);
    let cmd = rt.json_array("CMD");

    // The config the image carries is the ConfigMap's, at the path the args name.
    let copies: Vec<Vec<&str>> = rt
        .all("COPY")
        .iter()
        .map(|r| r.split_whitespace().collect())
        .collect();
    let image_config = config_arg(&cmd);
    let copy = copies
        .iter()
        .find(|c| c.last() == Some(&image_config.as_str()))
        .expect("the image copies its config to the path CMD names");
    let src = crate::support::repo_root().join(copy[copy.len() - 2]);
    assert!(
        !copies.iter().flatten().any(|w| w.starts_with("static")),
        "the demo page is not shipped"
    );
    assert!(copies.iter().any(|c| c.last() == Some(&entrypoint[0].as_str())));
    for name in VARIANTS {
        let v = Variant::load(name);
        let c = v.container();
        assert_eq!(args(c), cmd, "{name}: container args = the image's CMD");
        assert!(c["command"].is_null());
        let (path, text) = v.config();
        assert_eq!(
            path, image_config,
            "{name}: the ConfigMap is mounted where the image's config is"
        );
        // The fleet variant's ConfigMap is the image's config plus its [shared] tail.
        let image_text = read(&src);
        if *name == "fleet" {
            assert!(
                text.starts_with(&image_text),
                "{name}: the ConfigMap does not extend the image's config"
            );
        } else {
            assert_eq!(
                image_text, text,
                "{name}: the image's config differs from the ConfigMap's"
            );
        }
        let expose = rt.last("EXPOSE").trim_end_matches("/tcp");
        assert_eq!(
            json!(expose.parse::<u64>().unwrap()),
            c["ports"][0]["containerPort"]
        );
        assert_eq!(c["securityContext"]["runAsUser"], NONROOT);
    }

    // The build context keeps what the build compiles in and drops the rest.
    let ignore = read(&crate::support::repo_root().join(".dockerignore"));
    let patterns: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["src", "config", "static", "Cargo.toml", "Cargo.lock"] {
        assert!(!patterns.contains(needed), ".dockerignore drops {needed}");
    }
    for dropped in ["target", ".git", ".venv"] {
        assert!(patterns.contains(dropped), ".dockerignore keeps {dropped}");
    }
    let rel = copy[copy.len() - 2];
    assert!(
        !patterns.contains("deploy") || patterns.contains(format!("!{rel}").as_str()),
        ".dockerignore drops {rel}"
    );
}

#[test]
fn no_real_credential_and_the_secret_is_an_example() {
    let secret = example_secret();
    assert_eq!(secret["kind"], "Secret");
    assert!(secret["data"].is_null(), "placeholders in stringData, readable");
    for (k, v) in secret["stringData"].as_object().unwrap() {
        assert!(
            v.as_str().unwrap().contains("EXAMPLE"),
            "{k} is not an obvious placeholder"
        );
    }
    assert!(read(&deploy_dir().join("accesskey/secret.example.yaml")).starts_with("# EXAMPLE ONLY"));
    let fleet = fleet_secret();
    assert!(read(&deploy_dir().join("fleet/secret.example.yaml")).starts_with("# EXAMPLE ONLY"));
    for (k, v) in fleet["stringData"].as_object().unwrap() {
        assert!(
            v.as_str().unwrap().contains("EXAMPLE"),
            "{k} is not an obvious placeholder"
        );
    }
    // An AccessKey id is LTAI plus 12-30 letters and digits; none may appear anywhere.
    let key_like = regex::Regex::new(r"LTAI[0-9A-Za-z]{12,30}").unwrap();
    let mut files = vec![
        crate::support::repo_root().join("Dockerfile"),
        crate::support::repo_root().join("docs/deploying.md"),
        crate::support::repo_root().join("scripts/container-smoke"),
    ];
    let mut stack = vec![deploy_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() { stack.push(p) } else { files.push(p) }
        }
    }
    for f in files {
        let text = read(&f);
        for m in key_like.find_iter(&text) {
            // The fake STS's documented test key, in the smoke script only.
            assert_eq!(
                m.as_str(),
                crate::support::CALLER_AK,
                "{}: {}",
                f.display(),
                m.as_str()
            );
        }
    }
}

/// The fleet variant: the base config plus `[auth.tickets]` and `[shared]`, as
/// many replicas as `shared.replicas`, every secret of `[shared]` and the ticket
/// key from the Secret, no password in the Redis URL.
#[test]
fn fleet_variant_shares_through_redis_with_its_secrets_from_a_secret() {
    let v = Variant::load("fleet");
    let (_, text) = v.config();
    let base = read(&deploy_dir().join("base/ossvend.toml"));
    assert!(
        text.starts_with(&base),
        "the fleet config is base/ossvend.toml plus its [shared] tail"
    );
    let cfg = parse_config(&text);
    let shared = cfg.shared.as_ref().expect("[shared]");
    assert_eq!(
        v.deployment()["spec"]["replicas"].as_u64(),
        Some(u64::from(shared.replicas)),
        "shared.replicas divides the STS budget on the fallback: keep it the Deployment's"
    );
    let url = url::Url::parse(&shared.url).unwrap();
    assert_eq!(
        (url.scheme(), url.password(), url.username()),
        ("rediss", None, "")
    );
    let env = v.container()["env"].as_array().unwrap().clone();
    let vars = [
        Some(&shared.encryption_key_env),
        shared.password_env.as_ref(),
        shared.username_env.as_ref(),
        cfg.auth.tickets.secret_env.as_ref(),
    ];
    for var in vars.into_iter().flatten() {
        let e = env
            .iter()
            .find(|e| e["name"] == var.as_str())
            .unwrap_or_else(|| panic!("{var} is not set"));
        assert_eq!(
            e["valueFrom"]["secretKeyRef"]["name"], "ossvend-fleet",
            "{var} comes from the Secret"
        );
    }
    // Still RRSA underneath: no AccessKey.
    assert_eq!(env_value(&v.env(), "OSSVEND_IDENTITY_SOURCE"), Some("oidc"));
}
