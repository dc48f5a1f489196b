//! The two percent-encoders every Alibaba Cloud signature is built on (spec §0).
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
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for &b in s.as_bytes() {
        let keep =
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/');
        if keep {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0x0f) as usize] as char);
        }
    }
    out
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
}
