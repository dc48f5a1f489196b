//! The two percent-encoders every Alibaba Cloud signature is built on (docs/signing.md §0).
//!
//! Generic URL encoders are *not* these: form encoders write `+` for space and
//! `encodeURIComponent` keeps `!'()*`. A one-byte difference is a failed signature,
//! so the unreserved set is spelled out here once and used everywhere.

/// RFC 3986 strict: only `A-Z a-z 0-9 - _ . ~` stay; every other byte is `%XX` upper-case.
pub fn pct(s: &str) -> String {
    encode(s, false)
}

/// Like [`pct`] but `/` is kept, for object keys in URL paths.
pub fn pct_path(s: &str) -> String {
    encode(s, true)
}

fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 4);
    encode_into(&mut out, s, keep_slash);
    out
}

/// Appends `s` percent-encoded to `out`. Runs of unreserved bytes are copied
/// whole: a security token is a thousand mostly-unreserved bytes, and copying
/// it byte by byte was the largest cost of a presigned URL.
pub(crate) fn encode_into(out: &mut String, s: &str, keep_slash: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // One load per byte instead of a chain of comparisons.
    static KEEP: [[bool; 256]; 2] = [keep_table(false), keep_table(true)];
    let keep = &KEEP[usize::from(keep_slash)];
    let bytes = s.as_bytes();
    out.reserve(bytes.len());
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if keep[usize::from(b)] {
            continue;
        }
        // A non-empty `start..i` holds only kept ASCII bytes, so both ends are
        // char boundaries (an empty one may sit inside a multi-byte char).
        if start < i {
            out.push_str(&s[start..i]);
        }
        out.push('%');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

const fn keep_table(keep_slash: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~') || (keep_slash && c == b'/');
        b += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_unreserved() {
        assert_eq!(pct("a b*c~d/e+f=g"), "a%20b%2Ac~d%2Fe%2Bf%3Dg");
        assert_eq!(pct_path("dir/my file.txt"), "dir/my%20file.txt");
        assert_eq!(pct("é"), "%C3%A9");
    }

    /// The run-copying encoder against the byte-at-a-time definition.
    fn reference(s: &str, keep_slash: bool) -> String {
        s.bytes()
            .map(|b| {
                let keep = b.is_ascii_alphanumeric()
                    || matches!(b, b'-' | b'_' | b'.' | b'~')
                    || (keep_slash && b == b'/');
                if keep {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    #[test]
    fn same_as_byte_at_a_time() {
        let mut all = String::new();
        for c in (0u32..0x300).filter_map(char::from_u32) {
            all.push(c);
        }
        let samples = [
            all.as_str(),
            "",
            "/",
            "a",
            "%",
            "CAIS+fake/Token==",
            "dir/my file (1).png",
            "ü/中文/🎉",
        ];
        for s in samples {
            assert_eq!(pct(s), reference(s, false), "{s:?}");
            assert_eq!(pct_path(s), reference(s, true), "{s:?}");
        }
    }
}
