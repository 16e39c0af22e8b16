//! One canonical form of a request path. The gateway computes it once per
//! request and uses it for everything: route matching, scope checks, the
//! access log, metrics and forwarding. The upstream therefore receives exactly
//! the path that was authorised, and cannot read it as another resource:
//! `/pub/../admin`, `/pub/%2e%2e/admin`, `//admin`, `/./admin` and `/%61dmin`
//! all become `/admin` (and match the admin route) before anything looks at
//! them, and what an upstream could still read differently is refused.
//!
//! The rules follow RFC 3986 and Envoy's `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action` (docs/decisions.md, "Canonical paths"):
//! - percent-encoded unreserved characters are decoded (section 6.2.2.2), the
//!   other escapes kept with upper-case hex (section 6.2.2.1), and raw bytes
//!   above ASCII encoded;
//! - dot segments are removed (section 5.2.4); one that climbs above the
//!   root is refused, and so is a dot segment with parameters (`..;x`), which
//!   servlet containers read as `..`;
//! - repeated slashes are merged, unless the deployment turns that off;
//! - an encoded slash or backslash, and a raw backslash, are refused by
//!   default: upstreams disagree on whether they separate segments;
//! - control characters and invalid UTF-8, once decoded, are refused.
//!
//! Pure: a path in, a path or a reason out.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// What to do with `%2F`, `%5C` and a raw `\` in a path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// Refuse the request (`INVALID_PATH`): the safe default, since an
    /// upstream that decodes `%2F` would see segments keygate did not match.
    #[default]
    Reject,
    /// Forward them as they are (`%2F`, `%5C` in upper case), for upstreams
    /// that treat them as ordinary characters (object keys with slashes).
    Keep,
}

/// How a deployment wants paths canonicalised (`server.merge_slashes`,
/// `server.escaped_slashes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathRules {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Why a path was refused; the client sees `INVALID_PATH`, the log this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPath {
    #[error("the path does not start with `/`")]
    NotAbsolute,
    #[error("a `%` is not followed by two hexadecimal digits")]
    MalformedEscape,
    #[error("an encoded slash or a backslash (server.escaped_slashes = \"reject\")")]
    EscapedSlash,
    #[error("a `..` segment climbs above the root")]
    AboveRoot,
    #[error("a dot segment carries parameters (`.;` or `..;`)")]
    DotSegmentWithParameters,
    #[error("a NUL or control character")]
    ControlCharacter,
    #[error("the decoded path is not UTF-8")]
    NotUtf8,
}

/// The canonical form of `raw` (the path of a request target, no query), or
/// why it is refused. A path that is already canonical, as nearly every
/// client's is, is returned as it is, without allocating.
pub fn canonicalize(raw: &str, rules: PathRules) -> Result<Cow<'_, str>, InvalidPath> {
    if !raw.starts_with('/') {
        return Err(InvalidPath::NotAbsolute);
    }
    if is_canonical(raw, rules) {
        return Ok(Cow::Borrowed(raw));
    }
    let escaped = normalize_escapes(raw, rules.escaped_slashes)?;
    remove_dot_segments(&escaped, rules.merge_slashes).map(Cow::Owned)
}

/// The fast path: plain ASCII with no escape, no backslash, no dot segment
/// and (when merging) no empty segment but a trailing one.
fn is_canonical(raw: &str, rules: PathRules) -> bool {
    let plain = raw.bytes().all(|b| b.is_ascii_graphic() && b != b'%' && b != b'\\');
    if !plain {
        return false;
    }
    let mut segments = raw[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if is_dot_segment(segment)
            || has_dot_parameters(segment)
            || (rules.merge_slashes && segment.is_empty() && !last)
        {
            return false;
        }
    }
    true
}

fn is_dot_segment(segment: &str) -> bool {
    segment == "." || segment == ".."
}

/// `.;x` and `..;x`: Tomcat and other servlet containers drop `;` parameters
/// from each segment before resolving dot segments.
fn has_dot_parameters(segment: &str) -> bool {
    segment.starts_with(".;") || segment.starts_with("..;")
}

/// RFC 3986 section 2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0x0f)]));
}

/// Decodes unreserved escapes, upper-cases the others, encodes raw non-ASCII
/// bytes, and refuses what an upstream could read as a separator or a control.
/// The result is plain ASCII.
fn normalize_escapes(raw: &str, escaped_slashes: EscapedSlashes) -> Result<String, InvalidPath> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    // Every byte as an upstream would see it once decoded, to check UTF-8.
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let value = match (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) {
                    (Some(high), Some(low)) => (high << 4) | low,
                    _ => return Err(InvalidPath::MalformedEscape),
                };
                if is_control(value) {
                    return Err(InvalidPath::ControlCharacter);
                }
                if is_unreserved(value) {
                    out.push(char::from(value));
                } else if matches!(value, b'/' | b'\\') && escaped_slashes == EscapedSlashes::Reject {
                    return Err(InvalidPath::EscapedSlash);
                } else {
                    push_escaped(&mut out, value);
                }
                decoded.push(value);
                i += 3;
            }
            b'\\' if escaped_slashes == EscapedSlashes::Reject => return Err(InvalidPath::EscapedSlash),
            b'\\' => {
                push_escaped(&mut out, b);
                decoded.push(b);
                i += 1;
            }
            _ if is_control(b) => return Err(InvalidPath::ControlCharacter),
            _ if !b.is_ascii() => {
                push_escaped(&mut out, b);
                decoded.push(b);
                i += 1;
            }
            _ => {
                out.push(char::from(b));
                decoded.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).map_err(|_| InvalidPath::NotUtf8)?;
    Ok(out)
}

/// RFC 3986 section 5.2.4 on an absolute path whose escapes are normalised,
/// refusing a `..` above the root instead of dropping it (a client that sends
/// one is probing), and merging empty segments when asked.
fn remove_dot_segments(path: &str, merge_slashes: bool) -> Result<String, InvalidPath> {
    let mut out = String::with_capacity(path.len());
    // A final `.`, `..` or (merged) empty segment leaves the path ending in `/`.
    let mut ends_in_slash = false;
    for segment in path[1..].split('/') {
        if has_dot_parameters(segment) {
            return Err(InvalidPath::DotSegmentWithParameters);
        }
        ends_in_slash = match segment {
            "." => true,
            ".." => {
                let parent = out.rfind('/').ok_or(InvalidPath::AboveRoot)?;
                out.truncate(parent);
                true
            }
            "" if merge_slashes => true,
            _ => {
                out.push('/');
                out.push_str(segment);
                false
            }
        };
    }
    if ends_in_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canonical(raw: &str) -> Result<String, InvalidPath> {
        canonicalize(raw, PathRules::default()).map(Cow::into_owned)
    }

    fn keeping(raw: &str) -> Result<String, InvalidPath> {
        let rules = PathRules {
            escaped_slashes: EscapedSlashes::Keep,
            ..PathRules::default()
        };
        canonicalize(raw, rules).map(Cow::into_owned)
    }

    #[test]
    fn the_red_team_variants_all_become_the_admin_path() {
        for raw in [
            "/ng/public/../admin/secret",
            "/ng/public/%2e%2e/admin/secret",
            "/ng/public/%2E%2E/admin/secret",
            "/ng//admin/secret",
            "/ng/./admin/secret",
            "/ng/%61dmin/secret",
            "/ng/pub/../admin/secret",
            "/ng/pub/.%2e/admin/secret",
            "/ng/pub/./../admin//secret",
        ] {
            assert_eq!(canonical(raw).as_deref(), Ok("/ng/admin/secret"), "{raw}");
        }
    }

    #[test]
    fn encoded_slashes_and_backslashes_are_refused_by_default() {
        for raw in [
            "/ng/pub/..%2fadmin/secret",
            "/ng/pub/..%2Fadmin/secret",
            "/wsgi/admin%2fsecret",
            "/ng/pub/..%5cadmin",
            "/ng/pub/..\\admin",
        ] {
            assert_eq!(canonical(raw), Err(InvalidPath::EscapedSlash), "{raw}");
        }
    }

    #[test]
    fn keep_forwards_escaped_slashes_upper_cased() {
        assert_eq!(keeping("/files/a%2fb%5cc").as_deref(), Ok("/files/a%2Fb%5Cc"));
        assert_eq!(keeping("/files/a\\b").as_deref(), Ok("/files/a%5Cb"));
        // `..%2f` is one segment named `..%2F`, not a dot segment.
        assert_eq!(keeping("/pub/..%2fadmin").as_deref(), Ok("/pub/..%2Fadmin"));
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for raw in ["/..", "/../admin", "/a/../../admin", "/%2e%2e/admin", "/a/./../.."] {
            assert_eq!(canonical(raw), Err(InvalidPath::AboveRoot), "{raw}");
        }
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for raw in ["/pub/..;/admin", "/pub/.;x/admin", "/pub/%2e%2e;jsessionid=1/admin"] {
            assert_eq!(canonical(raw), Err(InvalidPath::DotSegmentWithParameters), "{raw}");
        }
        assert_eq!(canonical("/pub/a..;b").as_deref(), Ok("/pub/a..;b"));
    }

    #[test]
    fn controls_bad_escapes_and_bad_utf8_are_refused() {
        assert_eq!(canonical("/a%00b"), Err(InvalidPath::ControlCharacter));
        assert_eq!(canonical("/a%0d%0aSet-Cookie:x"), Err(InvalidPath::ControlCharacter));
        assert_eq!(canonical("/a%7f"), Err(InvalidPath::ControlCharacter));
        assert_eq!(canonical("/a%zz"), Err(InvalidPath::MalformedEscape));
        assert_eq!(canonical("/a%4"), Err(InvalidPath::MalformedEscape));
        assert_eq!(canonical("/a%ff"), Err(InvalidPath::NotUtf8));
        assert_eq!(canonical("/a%c3"), Err(InvalidPath::NotUtf8));
        assert_eq!(canonical("*"), Err(InvalidPath::NotAbsolute));
        assert_eq!(canonical(""), Err(InvalidPath::NotAbsolute));
    }

    #[test]
    fn other_escapes_are_kept_with_upper_case_hex() {
        assert_eq!(canonical("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(canonical("/caf\u{e9}").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(canonical("/a%20b%3fc%25").as_deref(), Ok("/a%20b%3Fc%25"));
        // A decoded `%25` stays one level deep: `%252e` is not a dot.
        assert_eq!(
            canonical("/pub/%252e%252e/admin").as_deref(),
            Ok("/pub/%252e%252e/admin")
        );
    }

    #[test]
    fn trailing_slashes_and_the_root_survive() {
        for (raw, expected) in [
            ("/", "/"),
            ("//", "/"),
            ("/a/", "/a/"),
            ("/a//", "/a/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/.", "/"),
        ] {
            assert_eq!(canonical(raw).as_deref(), Ok(expected), "{raw}");
        }
    }

    #[test]
    fn slashes_are_kept_when_merging_is_off() {
        let rules = PathRules {
            merge_slashes: false,
            ..PathRules::default()
        };
        let kept = |raw| canonicalize(raw, rules).map(Cow::into_owned);
        assert_eq!(kept("/a//b").as_deref(), Ok("/a//b"));
        assert_eq!(kept("/a//..").as_deref(), Ok("/a/"));
        assert_eq!(kept("/a/./b/").as_deref(), Ok("/a/b/"));
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        let raw = "/v1/items/42";
        assert!(matches!(canonicalize(raw, PathRules::default()), Ok(Cow::Borrowed(_))));
        assert!(matches!(
            canonicalize("/a/", PathRules::default()),
            Ok(Cow::Borrowed(_))
        ));
    }

    /// Routes as a deployment would configure them: longest prefix wins.
    const ROUTES: [&str; 4] = ["/ng", "/ng/admin", "/ng/pub", "/ng/caf%C3%A9"];

    fn route_of(path: &str) -> Option<&'static str> {
        ROUTES
            .into_iter()
            .filter(|route| {
                path.strip_prefix(route)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .max_by_key(|route| route.len())
    }

    /// What the most eager upstream serves: every escape decoded (`%2F` and
    /// `%5C` included), `\` read as `/`, dot segments resolved, slashes merged.
    /// Decoded bytes that are not unreserved are re-encoded so the result can
    /// be compared with route paths.
    fn eager_upstream_view(path: &str) -> String {
        let bytes = path.as_bytes();
        let mut decoded = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                decoded.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
        let mut text = String::new();
        for b in decoded {
            match b {
                b'\\' | b'/' => text.push('/'),
                b if is_unreserved(b) => text.push(char::from(b)),
                b => push_escaped(&mut text, b),
            }
        }
        remove_dot_segments(&text, true).unwrap_or_else(|_| "<above root>".into())
    }

    /// Segments that path attacks are made of: names written in other ways,
    /// dot segments in disguise, escapes, parameters.
    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "admin",
            "%61dmin",
            "%61%64min",
            "adm%69n",
            "ADMIN",
            "pub",
            "%70ub",
            "public",
            "secret",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2e%2e",
            ".%2e",
            "%2E.",
            "..;",
            ".;x",
            "a;b",
            "caf%c3%a9",
            "caf\u{e9}",
            "%00",
            "%0a",
            "%25",
            "%252e%252e",
            "~",
            "%7e",
            "%zz",
            "%",
            "",
        ])
    }

    fn separator() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["/", "/", "/", "//", "/./", "%2f", "%2F", "%5c", "\\"])
    }

    fn raw_path() -> impl Strategy<Value = String> {
        prop::collection::vec((separator(), segment()), 0..6).prop_map(|parts| {
            let mut path = String::from("/ng");
            for (separator, segment) in parts {
                path.push_str(separator);
                path.push_str(segment);
            }
            path
        })
    }

    proptest! {
        #[test]
        fn canonicalising_twice_changes_nothing(raw in raw_path(), keep in any::<bool>(), merge in any::<bool>()) {
            let rules = PathRules {
                merge_slashes: merge,
                escaped_slashes: if keep { EscapedSlashes::Keep } else { EscapedSlashes::Reject },
            };
            if let Ok(once) = canonicalize(&raw, rules) {
                let twice = canonicalize(&once, rules);
                prop_assert_eq!(twice.as_deref(), Ok(&*once), "{}", raw);
            }
        }

        /// The route keygate matches on the canonical path is the route of the
        /// path even an eager upstream serves for it, under the default rules.
        #[test]
        fn the_matched_route_is_the_route_the_upstream_serves(raw in raw_path()) {
            if let Ok(path) = canonicalize(&raw, PathRules::default()) {
                let served = eager_upstream_view(&path);
                prop_assert_eq!(route_of(&path), route_of(&served), "{} -> {} served as {}", raw, path, served);
            }
        }
    }
}
