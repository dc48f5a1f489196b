//! Checks our signers against every vector in `tests/vectors/*.json` (copied
//! from `../shared/spec/vectors/`, computed by running the official SDKs).
//! `OSSVEND_VECTORS_DIR` points the test at another directory of the same files.
//!
//! Each file gets one line: `vectors: <file> checked=<n> skipped=<m>`. A vector
//! of a kind we implement that cannot be checked is a failure, not a skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ossvend::sign::sts_rpc;
use serde_json::Value;

fn vectors_dir() -> PathBuf {
    std::env::var_os("OSSVEND_VECTORS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors"))
}

/// Result of checking one vector: `Ok(true)` checked, `Ok(false)` not applicable.
type Check = fn(&Value) -> Result<(), String>;

/// Which checker handles a file, by the kind in its name; `None` = not implemented yet.
fn checker_for(file: &str) -> Option<Check> {
    match file.trim_end_matches(".json") {
        "sts_rpc_hmac_sha1" => Some(check_sts_rpc),
        _ => None,
    }
}

fn str_at<'a>(v: &'a Value, path: &str) -> Result<&'a str, String> {
    path.split('.')
        .try_fold(v, |cur, k| {
            cur.get(k).ok_or_else(|| format!("missing {path}"))
        })?
        .as_str()
        .ok_or_else(|| format!("{path} is not a string"))
}

fn expect_eq(what: &str, ours: &str, theirs: &str) -> Result<(), String> {
    if ours == theirs {
        Ok(())
    } else {
        Err(format!("{what}:\n  ours:   {ours}\n  theirs: {theirs}"))
    }
}

fn check_sts_rpc(v: &Value) -> Result<(), String> {
    let input = &v["input"];
    let params: BTreeMap<String, String> = input["params"]
        .as_object()
        .ok_or("missing input.params")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let secret = str_at(input, "access_key_secret")?;
    let method = str_at(input, "http_method")?;
    let pairs = || params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let sig = sts_rpc::sign(method, pairs(), secret);
    let exp = &v["expected"];
    expect_eq(
        "canonicalized_query_string",
        &sig.canonicalized_query,
        str_at(exp, "canonicalized_query_string")?,
    )?;
    expect_eq(
        "string_to_sign",
        &sig.string_to_sign,
        str_at(exp, "string_to_sign")?,
    )?;
    expect_eq("signature", &sig.signature, str_at(exp, "signature")?)?;
    if let Some(get) = exp.get("get_variant").filter(|g| !g.is_null()) {
        let g = sts_rpc::sign("GET", pairs(), secret);
        expect_eq(
            "get_variant.string_to_sign",
            &g.string_to_sign,
            str_at(get, "string_to_sign")?,
        )?;
        expect_eq(
            "get_variant.signature",
            &g.signature,
            str_at(get, "signature")?,
        )?;
    }
    Ok(())
}

/// A plain `main` (harness = false) so the per-file lines always print.
fn main() {
    let mut failed = 0;
    for (name, test) in [
        (
            "every_vector_file",
            every_vector_file as fn() -> Result<(), String>,
        ),
        (
            "fake_sts_verifier_agrees_with_the_vectors",
            fake_sts_verifier_agrees_with_the_vectors,
        ),
    ] {
        match test() {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                println!("test {name} ... FAILED\n{e}");
                failed += 1;
            }
        }
    }
    println!("vectors: {} passed, {failed} failed", 2 - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}

fn every_vector_file() -> Result<(), String> {
    let dir = vectors_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no vector files in {}", dir.display());
    let mut failures = Vec::new();
    let mut implemented_checked = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        let vectors = doc["vectors"].as_array().cloned().unwrap_or_default();
        let (mut checked, mut skipped) = (0, 0);
        match checker_for(&name) {
            Some(check) => {
                if vectors.is_empty() {
                    failures.push(format!(
                        "{name}: no vectors in a file of an implemented kind"
                    ));
                }
                for v in &vectors {
                    let id = v["id"].as_str().unwrap_or("?");
                    match check(v) {
                        Ok(()) => checked += 1,
                        Err(e) => failures.push(format!("{name} / {id}: {e}")),
                    }
                }
                implemented_checked += checked;
            }
            None => skipped = vectors.len(),
        }
        println!("vectors: {name} checked={checked} skipped={skipped}");
    }
    if !failures.is_empty() {
        return Err(format!(
            "{} vector failure(s):\n{}",
            failures.len(),
            failures.join("\n")
        ));
    }
    if implemented_checked == 0 {
        return Err("no vector was checked".into());
    }
    Ok(())
}

/// The fake STS used by the integration tests verifies signatures with its own
/// code; prove that code against the same official-SDK vectors.
fn fake_sts_verifier_agrees_with_the_vectors() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(root.join("tests/fakes/fake_sts.py"))
        .arg("--selftest")
        .arg(vectors_dir().join("sts_rpc_hmac_sha1.json"))
        .output()
        .map_err(|e| format!("python3 must be installed: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("fake STS {stdout}");
    if !out.status.success() || !stdout.contains("selftest:") {
        return Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}
