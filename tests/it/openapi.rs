//! `GET /openapi.json`: the document the real router serves (in this process) is the committed
//! snapshot `docs/openapi.json` (byte for byte; `UPDATE_SNAPSHOTS=1` rewrites it),
//! an independent validator (Python `openapi-spec-validator`) accepts it, and every
//! operation it describes is served.

use std::collections::BTreeSet;
use std::process::Command;

use axum::body::Body;
use serde_json::Value;

use crate::support::{StsStub, TestApp, config, repo_root, venv_python};

const SNAPSHOT: &str = "docs/openapi.json";
const METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

/// The document as served, by a server with the harness's usual config.
async fn served() -> (StsStub, TestApp, String) {
    let sts = StsStub::start();
    let app = TestApp::new(&config(&sts.endpoint)).await;
    let resp = app.get("/openapi.json").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body = resp.text();
    (sts, app, body)
}

/// The document pretty-printed as committed: the server serves it pretty-printed
/// already (key order is the handlers' declaration order), the file ends in a newline.
fn pretty(body: &str) -> String {
    let _: Value = serde_json::from_str(body).expect("/openapi.json is JSON");
    format!("{}\n", body.trim_end())
}

#[tokio::test]
async fn served_document_matches_the_committed_snapshot() {
    let (_sts, _server, body) = served().await;
    let got = pretty(&body);
    let path = repo_root().join(SNAPSHOT);
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if got == want {
        return;
    }
    if std::env::var("UPDATE_SNAPSHOTS").as_deref() == Ok("1") {
        std::fs::write(&path, &got).unwrap();
        eprintln!("rewrote {SNAPSHOT}");
        return;
    }
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    let first = (0..g.len().max(w.len()))
        .find(|&i| g.get(i) != w.get(i))
        .unwrap_or(0);
    let show = |lines: &[&str]| {
        lines
            .iter()
            .enumerate()
            .skip(first.saturating_sub(3))
            .take(8)
            .map(|(i, l)| format!("{:>6} {l}", i + 1))
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "/openapi.json differs from {SNAPSHOT} (served {} lines, snapshot {} lines), first at line {}\n\
         --- served:\n{}\n--- {SNAPSHOT}:\n{}\n\
         If the API change is intended, rewrite the snapshot: UPDATE_SNAPSHOTS=1 cargo test --test it openapi::",
        g.len(),
        w.len(),
        first + 1,
        show(&g),
        show(&w),
    );
}

#[tokio::test]
async fn served_document_is_valid_openapi_3() {
    let (_sts, _server, body) = served().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &body).unwrap();
    let out = Command::new(venv_python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    // The validator quotes the whole document in its errors: keep the start.
    let clip = |b: &[u8]| String::from_utf8_lossy(b).chars().take(2000).collect::<String>();
    let (stdout, stderr) = (clip(&out.stdout), clip(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("OK"),
        "openapi-spec-validator rejected /openapi.json ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "ossvend");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["info"]["license"]["name"], "Apache-2.0");
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for s in ["api_key", "jwt", "ticket"] {
        assert!(schemes.contains_key(s), "no security scheme {s}");
    }
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_owned(), path.clone()));
            }
        }
    }
    out
}

/// Resolves a `$ref` into `components`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => schema,
    }
}

/// The router and the document are derived from one declaration (`routes::api`), so
/// no route can be served undocumented; this checks the other half on the real
/// binary: every documented operation is answered by a route, not the fallbacks.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let (_sts, server, body) = served().await;
    let doc: Value = serde_json::from_str(&body).unwrap();
    let documented = documented(&doc);
    assert!(documented.len() >= 13, "{documented:?}");

    // Every documented operation is answered by a route, not the fallbacks.
    for (method, path) in &documented {
        let url = path.replace("{grant}", "browser-upload");
        let resp = match method.as_str() {
            "get" => server.get(&url).await,
            "post" => server.post_json(&url, &[], &serde_json::json!({})).await,
            "delete" => server.request("DELETE", &url, &[], Body::empty()).await,
            other => panic!("unexpected method {other} for {path}"),
        };
        let status = resp.status;
        let text = resp.text();
        let code = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned));
        assert!(
            status != 405 && !(status == 404 && code.as_deref() == Some("not_found")),
            "{method} {path}: {status} {text}"
        );
    }
    // ...and the check can tell: an unknown path and a wrong method are refused.
    let r = server.get("/v1/nothing-here").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap()["code"],
        "not_found"
    );
    let r = server.request("DELETE", "/healthz", &[], Body::empty()).await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn every_documented_error_has_the_error_body() {
    let (_sts, _server, body) = served().await;
    let doc: Value = serde_json::from_str(&body).unwrap();
    let mut errors = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, resp) in op["responses"].as_object().unwrap() {
                let n: u16 = status.parse().unwrap();
                if n < 400 || (path == "/readyz" && n == 503) {
                    // /readyz's 503 is the readiness report itself.
                    continue;
                }
                errors += 1;
                // Shared error responses are `$ref`s into `components.responses`.
                let resp = resolve(&doc, resp);
                let schema = &resp["content"]["application/json"]["schema"];
                assert!(!schema.is_null(), "{method} {path} {status}: no JSON body");
                let schema = resolve(&doc, schema);
                assert!(
                    !schema["properties"]["code"].is_null()
                        && schema["required"]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|f| f == "code")),
                    "{method} {path} {status}: the body has no required `code`: {schema}"
                );
                for legacy in ["message", "request_id", "StatusCode", "ErrorCode", "ErrorMessage"] {
                    assert!(
                        !schema["properties"][legacy].is_null(),
                        "{method} {path} {status}: no `{legacy}`"
                    );
                }
            }
        }
    }
    assert!(errors > 50, "only {errors} error responses documented");
}

/// Every `(status, code)` the source can answer with: `ApiError::new(StatusCode::X, "code"`,
/// `not_found("code"` / `bad_request("code"`, `(StatusCode::X, "code")` tuples, the middleware's
/// `=> ("code", …)` table and JSON bodies with a literal `"code"`. Test modules are skipped.
fn codes_in_source() -> BTreeSet<(u16, String)> {
    fn status(name: &str) -> u16 {
        match name {
            "BAD_REQUEST" | "bad_request" => 400,
            "UNAUTHORIZED" => 401,
            "FORBIDDEN" => 403,
            "NOT_FOUND" | "not_found" => 404,
            "METHOD_NOT_ALLOWED" => 405,
            "CONFLICT" => 409,
            "PAYLOAD_TOO_LARGE" => 413,
            "UNPROCESSABLE_ENTITY" => 422,
            "TOO_MANY_REQUESTS" => 429,
            "INTERNAL_SERVER_ERROR" => 500,
            "BAD_GATEWAY" => 502,
            "SERVICE_UNAVAILABLE" => 503,
            "GATEWAY_TIMEOUT" => 504,
            other => panic!("status {other} is not in the test's table"),
        }
    }
    let patterns = [
        r#"StatusCode::([A-Z_]+),\s*"([a-z][a-z0-9_]*)""#,
        r#"\b(not_found|bad_request)\(\s*"([a-z][a-z0-9_]*)""#,
    ];
    let patterns: Vec<regex::Regex> = patterns.iter().map(|p| regex::Regex::new(p).unwrap()).collect();
    let middleware =
        regex::Regex::new(r#"StatusCode::([A-Z_]+)(?: \| StatusCode::[A-Z_]+)* => \{?\s*\(\s*"([a-z_]+)""#)
            .unwrap();
    let json_code = regex::Regex::new(r#""code": "([a-z_]+)""#).unwrap();
    let mut out = BTreeSet::new();
    let mut stack = vec![repo_root().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                // The local emulator answers as OSS does (XML), not with ossvend's codes.
                if !path.ends_with("local") {
                    stack.push(path);
                }
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.split("#[cfg(test)]").next().unwrap();
            for re in patterns.iter().chain([&middleware]) {
                for c in re.captures_iter(text) {
                    out.insert((status(&c[1]), c[2].to_string()));
                }
            }
            for c in json_code.captures_iter(text) {
                // The admin reload's 422 body is built with json!.
                let s = if &c[1] == "invalid_config" {
                    422
                } else {
                    panic!("{}: code {} in JSON", path.display(), &c[1])
                };
                out.insert((s, c[1].to_string()));
            }
        }
    }
    // The middleware turns any other client error into 400 bad_request, and any
    // server error into 500 internal_error; `internal()` is the latter.
    out.insert((400, "bad_request".into()));
    out.insert((500, "internal_error".into()));
    out
}

/// README's error table: `| status | `code`, `code` | when |` rows.
fn codes_in_readme() -> BTreeSet<(u16, String)> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let table = readme
        .split("| status | `code` | when |")
        .nth(1)
        .expect("README has the error table");
    let mut out = BTreeSet::new();
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let status: u16 = cells[1].parse().unwrap();
        for code in cells[2].split('`').skip(1).step_by(2) {
            out.insert((status, code.to_string()));
        }
    }
    out
}

/// One complete error table: the README lists every code the program returns,
/// with its status, and nothing else; the OpenAPI document names each of them
/// (the admin listener's codes aside: its routes are not in the document).
#[test]
fn the_readme_error_table_is_complete_and_the_openapi_document_agrees() {
    let source = codes_in_source();
    let readme = codes_in_readme();
    assert_eq!(
        source.difference(&readme).collect::<Vec<_>>(),
        Vec::<&(u16, String)>::new(),
        "returned by the program but not in README's table"
    );
    assert_eq!(
        readme.difference(&source).collect::<Vec<_>>(),
        Vec::<&(u16, String)>::new(),
        "in README's table but never returned"
    );
    let doc = std::fs::read_to_string(repo_root().join(SNAPSHOT)).unwrap();
    let admin_only = [
        "admin_token_not_configured",
        "invalid_admin_token",
        "invalid_config",
    ];
    for (_, code) in &source {
        if !admin_only.contains(&code.as_str()) {
            assert!(
                doc.contains(&format!("`{code}`")),
                "{SNAPSHOT} never names `{code}`"
            );
        }
    }
}
