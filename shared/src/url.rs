//! URL normalization: the one place that decides what "the same URL" means.
//!
//! Parsing follows the WHATWG URL standard (the `url` crate), which already lowercases the scheme and
//! host, converts international domain names to punycode, drops a default port, turns an empty path
//! into `/` and percent-encodes what must be. On top of that, normalization drops the fragment (never
//! sent to a server), upper-cases percent-escapes and decodes escaped unreserved characters, so
//! `%7e` and `~` are one URL. Query order is kept: servers may care about it.

use std::fmt;

/// Why an input line is not a checkable URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The line does not parse as an absolute URL.
    #[error("not a valid URL: {0}")]
    Parse(String),
    /// The scheme is not http or https.
    #[error("unsupported scheme {0:?} (only http and https are checked)")]
    Scheme(String),
    /// The URL has no host.
    #[error("URL has no host")]
    NoHost,
    /// The URL is longer than the stored limit.
    #[error("URL is longer than {MAX_URL_LEN} bytes")]
    TooLong,
}

/// Longest URL accepted, in bytes (after normalization).
pub const MAX_URL_LEN: usize = 8192;

/// A normalized http(s) URL and the host it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NormalizedUrl {
    url: url::Url,
    host: String,
}

impl NormalizedUrl {
    /// Parses and normalizes one URL. Surrounding whitespace is ignored.
    pub fn parse(input: &str) -> Result<Self, UrlError> {
        Self::parse_with(input, false)
    }

    /// Like [`NormalizedUrl::parse`]; with `strip_tracking`, query parameters that only track
    /// campaigns and clicks ([`is_tracking_param`]) are dropped (the order of the others is kept).
    pub fn parse_with(input: &str, strip_tracking: bool) -> Result<Self, UrlError> {
        let input = input.trim();
        let mut url = url::Url::parse(input).map_err(|e| UrlError::Parse(e.to_string()))?;
        match url.scheme() {
            "http" | "https" => {}
            other => return Err(UrlError::Scheme(other.to_string())),
        }
        url.set_fragment(None);
        let path = normalize_escapes(url.path());
        if path != url.path() {
            url.set_path(&path);
        }
        if strip_tracking && url.query().is_some() {
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| !is_tracking_param(k))
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if kept.is_empty() {
                url.set_query(None);
            } else {
                url.query_pairs_mut().clear().extend_pairs(kept);
            }
        }
        if let Some(q) = url.query() {
            let q2 = normalize_escapes(q);
            if q2 != q {
                url.set_query(Some(&q2));
            }
        }
        let host = host_key(&url).ok_or(UrlError::NoHost)?;
        if url.as_str().len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        Ok(Self { url, host })
    }

    /// The normalized URL text.
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// The parsed URL.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The host key: lowercase host (punycode or IP literal) with `:port` when the port is not the
    /// scheme's default. Politeness and leases are partitioned by this key.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl fmt::Display for NormalizedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// `text` with the credentials of every URL in it (`scheme://user:secret@host`) replaced by `***`:
/// for whatever leaves the check itself — API answers, listings, logs, spans and error messages.
pub fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the path, query or fragment, or wherever the URL itself ends.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>' | '`') || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// `text` safe to print to a terminal: control characters (ANSI escape sequences, carriage returns,
/// backspaces, bidirectional overrides) are shown as escapes (`\u{1b}`) instead of acting on it.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let hostile = |c: char| {
        c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hostile) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars().map(|c| if hostile(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect(),
    )
}

/// Query parameters that identify a campaign or a click, not a resource.
pub fn is_tracking_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("utm_")
        || matches!(
            n.as_str(),
            "gclid"
                | "dclid"
                | "gbraid"
                | "wbraid"
                | "fbclid"
                | "msclkid"
                | "yclid"
                | "igshid"
                | "mc_cid"
                | "mc_eid"
                | "_ga"
                | "_gl"
        )
}

/// The host key of any parsed URL (see [`NormalizedUrl::host`]); `None` when it has no host.
pub fn host_key(url: &url::Url) -> Option<String> {
    let host = url.host_str()?;
    if host.is_empty() {
        return None;
    }
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// Upper-cases percent-escapes and decodes those of unreserved characters (RFC 3986 §6.2.2). A `%`
/// that starts no escape is written `%25`: left bare, it could start one with a decoded character
/// (`%%61` would become `%a`), and normalizing twice would give another URL.
fn normalize_escapes(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let (h, l) = (b[i + 1], b[i + 2]);
            if let (Some(hv), Some(lv)) = (hex(h), hex(l)) {
                let c = hv * 16 + lv;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c as char);
                } else {
                    out.push('%');
                    out.push(h.to_ascii_uppercase() as char);
                    out.push(l.to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
        }
        if b[i] == b'%' {
            out.push_str("%25");
            i += 1;
            continue;
        }
        // Push the whole UTF-8 character starting here (the url crate escapes non-ASCII, but be safe).
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        NormalizedUrl::parse(s).unwrap().as_str().to_string()
    }

    #[test]
    fn lowercases_scheme_and_host_and_drops_default_port_and_fragment() {
        assert_eq!(n("HTTP://Example.COM:80/a#frag"), "http://example.com/a");
        assert_eq!(n("https://example.com:443"), "https://example.com/");
        assert_eq!(n("  https://example.com:8443/x?b=2&a=1  "), "https://example.com:8443/x?b=2&a=1");
    }

    #[test]
    fn idna_hosts_become_punycode() {
        assert_eq!(n("https://Bücher.example/"), "https://xn--bcher-kva.example/");
    }

    #[test]
    fn percent_escapes_are_normalized() {
        assert_eq!(n("http://a.example/%7euser/%2f?q=%7e%2a"), "http://a.example/~user/%2F?q=~%2A");
        // A bare `%` cannot pair with a decoded character into a new escape.
        assert_eq!(n("http://A?%%610"), "http://a/?%25a0");
        assert_eq!(n(&n("http://A?%%610")), n("http://A?%%610"));
        assert_eq!(n("http://a.example/100%"), "http://a.example/100%25");
    }

    #[test]
    fn tracking_parameters_are_stripped_on_request_only() {
        let u = "https://a.example/p?utm_source=x&id=7&gclid=abc&UTM_Medium=y&b=2";
        assert_eq!(NormalizedUrl::parse_with(u, true).unwrap().as_str(), "https://a.example/p?id=7&b=2");
        assert_eq!(
            NormalizedUrl::parse_with("https://a.example/?utm_source=x", true).unwrap().as_str(),
            "https://a.example/"
        );
        assert_eq!(NormalizedUrl::parse(u).unwrap().as_str(), u);
    }

    #[test]
    fn host_key_keeps_explicit_ports() {
        let u = NormalizedUrl::parse("http://127.0.0.2:8080/x").unwrap();
        assert_eq!(u.host(), "127.0.0.2:8080");
        let u = NormalizedUrl::parse("http://[::1]/").unwrap();
        assert_eq!(u.host(), "[::1]");
    }

    #[test]
    fn rejects_what_cannot_be_checked() {
        assert!(matches!(NormalizedUrl::parse("ftp://x.example/"), Err(UrlError::Scheme(_))));
        assert!(matches!(NormalizedUrl::parse("not a url"), Err(UrlError::Parse(_))));
        assert!(matches!(NormalizedUrl::parse("mailto:a@b.example"), Err(UrlError::Scheme(_))));
        assert!(matches!(NormalizedUrl::parse("http://"), Err(UrlError::Parse(_))));
    }

    #[test]
    fn credentials_are_redacted_wherever_a_url_appears() {
        assert_eq!(redact("https://user:secret@a.example/x?q=1"), "https://***@a.example/x?q=1");
        assert_eq!(redact("http://token@a.example"), "http://***@a.example");
        assert_eq!(redact("http://a.example/p@q"), "http://a.example/p@q", "an @ in the path is no credential");
        assert_eq!(
            redact("error sending request for url (http://u:p@b.example/): refused; then ftp://x:y@c.example"),
            "error sending request for url (http://***@b.example/): refused; then ftp://***@c.example"
        );
        assert_eq!(redact("no url here @ all"), "no url here @ all");
        assert_eq!(redact("http://a:b@c"), "http://***@c");
    }

    #[test]
    fn control_characters_are_escaped_for_terminals() {
        assert_eq!(printable("http://a.example/\u{1b}[31mred"), "http://a.example/\\u{1b}[31mred");
        assert_eq!(printable("a\rb\u{8}c\u{202e}d"), "a\\u{d}b\\u{8}c\\u{202e}d");
        assert_eq!(printable("plain ünïcode"), "plain ünïcode");
    }
}
