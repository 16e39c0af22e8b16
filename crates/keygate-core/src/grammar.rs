//! The grammars of values clients write, as regular expressions: the
//! admin API's OpenAPI document states them (crates/keygate-server/src/http/grammar.rs),
//! and a webhook URL is checked against its own (crates/keygate-engine/src/webhooks.rs).
//!
//! The patterns use only what ECMA-262 (JSON Schema), Python (schemathesis)
//! and the `regex` crate read alike: classes, groups, alternation, counts.

/// A scope: `invoices:read`, `invoices:*` or `*`; at most 128 characters.
pub const SCOPE: &str = r"^(\*|[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)*(:\*)?)$";

/// A role name from the config's `[roles]` (crates/keygate-core/src/role.rs).
pub const ROLE: &str = "^[A-Za-z0-9_.-]{1,64}$";

/// A rate-limit resource: `default`, `uploads`, `search-v2`.
pub const RESOURCE: &str = "^[a-z0-9_-]{1,64}$";

/// A duration of at least a second in whole units: `90s`, `15m`, `24h`, `90d`.
pub const POSITIVE_DURATION: &str = "^[1-9][0-9]{0,5}[smhd]$";

/// How long a change waits for its receipt (`?wait=`): `0`, 1 to 9999
/// milliseconds, or 1 to 10 seconds (crates/keygate-core/src/duration.rs, `parse_wait`).
pub const WAIT: &str = "^(0|[1-9][0-9]{0,3}ms|[1-9]s|10s)$";

/// A duration that may be nothing: `0`, or one of [`POSITIVE_DURATION`].
pub const DURATION: &str = "^(0|[1-9][0-9]{0,5}[smhd])$";

const IPV4: &str = r"((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";

const H16: &str = "[0-9A-Fa-f]{1,4}";

/// Every textual form of RFC 4291 section 2.2: full, `::`-compressed, and
/// with an embedded IPv4 address.
fn ipv6() -> String {
    let ipv4 = IPV4;
    [
        format!("({H16}:){{7}}{H16}"),
        format!("({H16}:){{1,7}}:"),
        format!("({H16}:){{1,6}}:{H16}"),
        format!("({H16}:){{1,5}}(:{H16}){{1,2}}"),
        format!("({H16}:){{1,4}}(:{H16}){{1,3}}"),
        format!("({H16}:){{1,3}}(:{H16}){{1,4}}"),
        format!("({H16}:){{1,2}}(:{H16}){{1,5}}"),
        format!("{H16}:(:{H16}){{1,6}}"),
        format!(":((:{H16}){{1,7}}|:)"),
        format!("({H16}:){{6}}{ipv4}"),
        format!("::(ffff(:0{{1,4}})?:)?{ipv4}"),
        format!("({H16}:){{1,4}}:{ipv4}"),
    ]
    .join("|")
}

/// An IP address, IPv4 or IPv6.
pub fn ip_address() -> String {
    format!("^({IPV4}|{})$", ipv6())
}

/// An allowlist entry: an address, or a CIDR block of either family.
pub fn ip_or_cidr() -> String {
    let v4_prefix = "(3[0-2]|[12][0-9]|[0-9])";
    let v6_prefix = "(12[0-8]|1[01][0-9]|[1-9]?[0-9])";
    format!("^({IPV4}(/{v4_prefix})?|({})(/{v6_prefix})?)$", ipv6())
}

/// A webhook URL: `http` or `https`, then a host (a name, an IPv4 address
/// or a bracketed IPv6 address), an optional port up to 65535, and then
/// anything but NUL (path, query). The last label of a name starts with a letter
/// (one of digits only reads as an IPv4 address, and fails as one); no
/// label has `--`, so `xn--` names (which must be valid punycode) are out;
/// no user or password, which would be stored and shown in plain text.
/// Spaces around it are ignored, as the server trims them.
pub fn webhook_url() -> String {
    let label = "[A-Za-z0-9]+(-[A-Za-z0-9]+)*";
    let last_label = "[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*";
    let port = "0*([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
    format!(
        r"^\s*[Hh][Tt][Tt][Pp]([Ss])?://({IPV4}|\[({})\]|({label}\.)*{last_label})(:({port})?)?([/?#][^\x00]*)?\s*$",
        ipv6()
    )
}

/// Any text without NUL: what every other string the admin API takes must
/// be (PostgreSQL cannot store NUL; crates/keygate-server/src/http/extract.rs).
pub const NO_NUL: &str = r"^[^\x00]*$";

/// A name (workspaces, keys): not only spaces, no control characters.
pub const NAME: &str = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$";
