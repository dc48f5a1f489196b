//! Config errors that say where, never what, when the place holds a secret.
//!
//! A TOML syntax error quotes the offending line; a type error quotes the
//! value. Both reach `check-config`, the start-up error, the reload log line and
//! the 422 of `POST /admin/reload`. When the line sets a key that names a
//! secret — or lies inside a multi-line string that such a key starts — the
//! excerpt is replaced by the key alone; a type error on such a key loses its
//! value; and any value of a secret-named key is scrubbed from every message.
//! Whatever the key, the userinfo of a URL (`scheme://user:pass@host`) never
//! shows: it becomes `scheme://***@host` in every message (a Redis URL's
//! password sits under `url`, which names no secret).

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

/// Words that make a key secret, matched case-insensitively anywhere in the
/// key: `access_key_secret`, `secret_env`, `token_sha256`, `oidc_token_file`,
/// `password`, `private_key`, `credentials_uri` (a URI can carry a token).
/// Redacting a harmless key only hides an excerpt; missing a secret leaks it.
pub const SECRET_WORDS: &[&str] = &["secret", "token", "password", "passwd", "private", "credential"];

/// The text put where a secret was.
pub use crate::credentials::REDACTED;

/// True if a key (bare, quoted or dotted) names a secret.
pub fn names_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| key.contains(w))
}

/// `key =` anywhere on a line (also inside inline tables): bare, quoted or dotted keys.
static KEY_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"((?:[A-Za-z0-9_-]+|"[^"\n]*"|'[^'\n]*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"\n]*"|'[^'\n]*'))*)\s*="#,
    )
    .expect("valid regex")
});

/// `scheme://userinfo@`: everything from `://` to the last `@` of the token
/// (a password may itself hold `@` or `/`), stopping at whitespace and quotes.
static USERINFO_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"([A-Za-z][A-Za-z0-9+.-]*://)[^\s"'`<>]*@"#).expect("valid regex"));

/// `text` with the userinfo of every URL replaced by `***`.
pub fn scrub_userinfo(text: &str) -> String {
    USERINFO_RE.replace_all(text, "${1}***@").into_owned()
}

/// What a line of the document may reveal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Plain,
    /// Sets a secret-named key; the byte offset where its key ends (`=` included).
    SetsSecret(usize),
    /// Inside a multi-line string that a secret-named key started.
    InSecret,
}

/// Classifies every line, following multi-line strings (`"""`, `'''`).
fn classify(text: &str) -> Vec<Line> {
    let mut out = Vec::new();
    // The closing delimiter of the multi-line string we are in, and whether it is secret.
    let mut open: Option<(&'static str, bool)> = None;
    for line in text.split('\n') {
        if let Some((delim, secret)) = open {
            out.push(if secret { Line::InSecret } else { Line::Plain });
            if closes(line, delim) {
                open = None;
            }
            continue;
        }
        let secret_key = KEY_RE
            .captures_iter(line)
            .find(|c| names_secret(&c[1]))
            .map(|c| c.get(0).map_or(0, |m| m.end()));
        out.push(secret_key.map_or(Line::Plain, Line::SetsSecret));
        // A multi-line string opened (and not closed) on this line.
        let first = ["\"\"\"", "'''"]
            .into_iter()
            .filter_map(|d| line.find(d).map(|at| (at, d)))
            .min();
        if let Some((at, delim)) = first
            && !closes(&line[at + 3..], delim)
        {
            open = Some((delim, secret_key.is_some()));
        }
    }
    out
}

/// True if `delim` occurs in `rest` (unescaped, for basic strings).
fn closes(rest: &str, delim: &str) -> bool {
    let mut from = 0;
    while let Some(at) = rest[from..].find(delim) {
        let at = from + at;
        let backslashes = rest[..at].bytes().rev().take_while(|b| *b == b'\\').count();
        if delim == "'''" || backslashes % 2 == 0 {
            return true;
        }
        from = at + 1;
    }
    false
}

/// 0-based line and 1-based character column of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let offset = (0..=offset)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let before = &text[..offset];
    let line = before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A TOML syntax error on `text`: toml's own rendering, unless a line it covers
/// may reveal a secret; then the position, the key and the message only.
pub fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    scrub_userinfo(&syntax_excerpt(text, e))
}

fn syntax_excerpt(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.to_string();
    };
    let lines = classify(text);
    let Range { start, end } = span;
    let (first, column) = position(text, start);
    let (last, _) = position(text, end.saturating_sub(1).max(start));
    let hidden = (first..=last).any(|l| lines.get(l).is_some_and(|c| *c != Line::Plain));
    if !hidden {
        return e.to_string();
    }
    let source: Vec<&str> = text.split('\n').collect();
    let number = first + 1;
    let gutter = " ".repeat(number.to_string().len());
    let shown = match lines.get(first) {
        Some(Line::SetsSecret(key_end)) => {
            format!("{} {REDACTED}", source[first][..*key_end].trim_end())
        }
        _ => format!("{REDACTED} (inside a secret value)"),
    };
    let mut message = e.message().to_string();
    // Belt and braces: toml's messages describe, they do not quote; if one ever
    // did, the value part of the hidden lines goes.
    for (text, class) in source.iter().zip(&lines).take(last + 1).skip(first) {
        let value = match class {
            Line::SetsSecret(key_end) => &text[*key_end..],
            Line::InSecret => text,
            Line::Plain => continue,
        };
        let value = value.trim().trim_matches(['"', '\'']).trim();
        if value.len() >= 4 {
            message = message.replace(value, REDACTED);
        }
    }
    format!(
        "TOML parse error at line {number}, column {column} (the line holds a secret: its text is not shown)\n\
         {gutter} |\n{number} | {shown}\n{gutter} |\n{message}\n"
    )
}

/// Renderings of every value of a secret-named key in `doc` (at any depth),
/// as a type error would quote them.
pub fn secret_values(doc: &toml::Table) -> Vec<String> {
    fn collect(v: &toml::Value, secret: bool, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    collect(v, secret || names_secret(k), out);
                }
            }
            toml::Value::Array(items) => items.iter().for_each(|i| collect(i, secret, out)),
            _ if !secret => {}
            toml::Value::String(s) => out.push(s.clone()),
            other => out.push(other.to_string()),
        }
    }
    let mut out = Vec::new();
    for (k, v) in doc {
        collect(v, names_secret(k), &mut out);
    }
    // Short values would blank out ordinary words; longest first so a value
    // containing another is replaced whole.
    out.retain(|s| s.len() >= 4);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// A type error from the parsed document: the value is dropped when the error
/// names a secret-named key (`in \`identity.access_key_secret\``), and any
/// secret value is scrubbed from the rest.
pub fn value_error(e: &toml::de::Error, secrets: &[String]) -> String {
    let text = e.to_string();
    let mut text = match text.rsplit_once("\nin `") {
        Some((_, path)) if names_secret(path) => {
            let path = path.trim_end().trim_end_matches('`');
            format!("invalid value for `{path}` (not shown: the key holds a secret)")
        }
        _ => text,
    };
    for s in secrets {
        text = text.replace(s.as_str(), REDACTED);
    }
    scrub_userinfo(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax(text: &str) -> String {
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        syntax_error(text, &e)
    }

    #[test]
    fn secret_words_match_any_case_and_position() {
        for k in [
            "access_key_secret",
            "Access_Key_Secret",
            "secret_env",
            "token_sha256",
            "oidc_token_file",
            "db_password",
            "private_key",
            "credentials_uri",
            "identity.base.access_key_secret",
            "\"client-secret\"",
        ] {
            assert!(names_secret(k), "{k}");
        }
        for k in [
            "listen",
            "bucket",
            "prefix",
            "access_key_id",
            "role_arn",
            "sha256",
        ] {
            assert!(!names_secret(k), "{k}");
        }
    }

    #[test]
    fn lines_are_classified_through_multi_line_strings() {
        let text = "a = 1\nsecret = \"\"\"\nx\ny\"\"\" \nb = '''\nsecret = 1\n'''\nc = { token = 'q' }\nd = \"\"\"s\"\"\"";
        assert_eq!(
            classify(text),
            vec![
                Line::Plain,
                Line::SetsSecret(8),
                Line::InSecret,
                Line::InSecret,
                Line::Plain,
                Line::Plain, // string content, not a key
                Line::Plain,
                Line::SetsSecret(13),
                Line::Plain,
            ]
        );
        assert!(closes("abc\"\"\"", "\"\"\""));
        assert!(!closes("abc\\\"\"\"", "\"\"\""));
        assert!(closes("abc\\\\\"\"\"", "\"\"\""));
    }

    #[test]
    fn syntax_errors_on_secret_lines_hide_the_line() {
        let e = syntax("[identity]\naccess_key_secret = \"hunter2-is-secret\n");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("line 2, column"), "{e}");
        assert!(e.contains("2 | access_key_secret = <redacted>"), "{e}");
        let e = syntax("[identity]\nsecret = \"\"\"\nhunter2-is-secret \\q\n\"\"\"\n");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        let e = syntax("base = { a = 1, private_key = 'hunter2-is-secret' x }\n");
        assert!(!e.contains("hunter2"), "{e}");
        // Ordinary lines keep toml's excerpt.
        let e = syntax("[server]\nlisten = \"127.0.0.1:8000\" x\n");
        assert!(e.contains("listen = \"127.0.0.1:8000\" x"), "{e}");
    }

    #[test]
    fn url_userinfo_never_shows_whatever_the_key() {
        assert_eq!(
            scrub_userinfo("url = \"rediss://ossvend:hunter2@r-bp1.redis.rds.aliyuncs.com:6380/0\""),
            "url = \"rediss://***@r-bp1.redis.rds.aliyuncs.com:6380/0\""
        );
        // `@` and `/` inside the password, two URLs on a line, none at all.
        assert_eq!(
            scrub_userinfo("a = 'redis://:p@ss/w@h:1' b = \"https://u:x@h/p\" c = 'x@y'"),
            "a = 'redis://***@h:1' b = \"https://***@h/p\" c = 'x@y'"
        );
        assert_eq!(scrub_userinfo("redis://h:6379/0"), "redis://h:6379/0");
        // A syntax error on a line with a URL under a harmless key.
        let e = syntax("[shared]\nurl = \"redis://ossvend:hunter2-pw@10.0.0.5:6379\" x\n");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("redis://***@10.0.0.5:6379"), "{e}");
        let e = syntax("[sts]\nendpoint = \"https://u:hunter2-pw@sts.example\nx = 1\n");
        assert!(!e.contains("hunter2"), "{e}");
        // A type error quoting the value.
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Doc {
            port: u16,
        }
        let doc: toml::Table = toml::from_str("port = \"redis://u:hunter2-pw@h\"").unwrap();
        let e = toml::Value::Table(doc).try_into::<Doc>().unwrap_err();
        let shown = value_error(&e, &[]);
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn type_errors_on_secret_keys_lose_the_value() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Doc {
            identity: Identity,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Identity {
            access_key_secret: String,
            port: u16,
        }
        let doc: toml::Table =
            toml::from_str("[identity]\naccess_key_secret = 31415926535\nport = 1").unwrap();
        let secrets = secret_values(&doc);
        assert_eq!(secrets, vec!["31415926535".to_string()]);
        let e = toml::Value::Table(doc).try_into::<Doc>().unwrap_err();
        let shown = value_error(&e, &secrets);
        assert!(!shown.contains("31415926535"), "{shown}");
        assert!(shown.contains("identity.access_key_secret"), "{shown}");
        // Another key's error keeps its value (it is not a secret).
        let doc: toml::Table =
            toml::from_str("[identity]\naccess_key_secret = \"s3cr3t-value\"\nport = 99999").unwrap();
        let secrets = secret_values(&doc);
        let e = toml::Value::Table(doc).try_into::<Doc>().unwrap_err();
        let shown = value_error(&e, &secrets);
        assert!(shown.contains("99999"), "{shown}");
    }
}
