//! API key format: `{prefix}_{env}_{32 base62 random}{6 base62 CRC32}`.
//!
//! The checksum lets the gateway reject typos and garbage without touching the
//! store, and lets secret scanners recognise leaked keys. Only the SHA-256 of
//! the full key is ever stored; the plaintext lives in [`PlaintextKey`], whose
//! `Debug` prints nothing secret and which has no `Display`.

use std::fmt;

use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of the random part: 32 base62 characters, about 190 bits.
pub const RANDOM_LEN: usize = 32;
/// Length of the checksum: 6 base62 characters hold any `u32` (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
/// Environment reserved for keys of the built-in admin workspace.
pub const ADMIN_ENVIRONMENT: &str = "admin";
/// Longest prefix or environment name; bounds every key's length.
pub const MAX_LABEL_LEN: usize = 16;
/// No valid key is longer; longer input is rejected before any hashing.
pub const MAX_KEY_LEN: usize = 2 * MAX_LABEL_LEN + 2 + RANDOM_LEN + CHECKSUM_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a deployment's key format settings were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyFormatError {
    #[error("key prefix `{0}` must be 1 to 16 characters of a-z and 0-9")]
    BadPrefix(String),
    #[error("environment `{0}` must be 1 to 16 characters of a-z and 0-9")]
    BadEnvironment(String),
    #[error("environment `admin` is reserved for admin keys")]
    ReservedEnvironment,
    #[error("at least one environment is required")]
    NoEnvironments,
    #[error("unknown environment `{0}`")]
    UnknownEnvironment(String),
}

/// Why a presented credential is not a well-formed key of this deployment.
/// Every variant answers `INVALID_API_KEY`; the variant is for logs and metrics.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum MalformedKey {
    #[error("too long")]
    TooLong,
    #[error("wrong shape")]
    Shape,
    #[error("unknown prefix")]
    Prefix,
    #[error("unknown environment")]
    Environment,
    #[error("checksum mismatch")]
    Checksum,
}

/// The validated key settings of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFormat {
    prefix: String,
    environments: Vec<String>,
}

/// `kg` keys in `live` and `test`: the config's default (`[keys]`).
impl Default for KeyFormat {
    fn default() -> Self {
        Self {
            prefix: "kg".to_owned(),
            environments: vec!["live".to_owned(), "test".to_owned()],
        }
    }
}

impl KeyFormat {
    pub fn new(prefix: &str, environments: &[String]) -> Result<Self, KeyFormatError> {
        if !is_label(prefix) {
            return Err(KeyFormatError::BadPrefix(prefix.to_owned()));
        }
        if environments.is_empty() {
            return Err(KeyFormatError::NoEnvironments);
        }
        for env in environments {
            if env == ADMIN_ENVIRONMENT {
                return Err(KeyFormatError::ReservedEnvironment);
            }
            if !is_label(env) {
                return Err(KeyFormatError::BadEnvironment(env.clone()));
            }
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            environments: environments.to_vec(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn environments(&self) -> &[String] {
        &self.environments
    }

    /// The environment new keys get when the caller names none.
    pub fn default_environment(&self) -> &str {
        &self.environments[0]
    }

    pub fn is_known_environment(&self, env: &str) -> bool {
        env == ADMIN_ENVIRONMENT || self.environments.iter().any(|e| e == env)
    }

    /// Generates a new key. Randomness is a parameter so tests can be exact.
    pub fn generate(&self, env: &str, rng: &mut impl RngCore) -> Result<PlaintextKey, KeyFormatError> {
        if !self.is_known_environment(env) {
            return Err(KeyFormatError::UnknownEnvironment(env.to_owned()));
        }
        let mut key = String::with_capacity(self.prefix.len() + env.len() + 2 + RANDOM_LEN + CHECKSUM_LEN);
        key.push_str(&self.prefix);
        key.push('_');
        key.push_str(env);
        key.push('_');
        for _ in 0..RANDOM_LEN {
            key.push(random_base62(rng));
        }
        let checksum = encode_checksum(crc32fast::hash(key.as_bytes()));
        key.extend(checksum.iter().map(|&b| b as char));
        Ok(PlaintextKey(SecretString::from(key)))
    }

    /// A regular expression for every key this deployment issues, admin keys
    /// included, for leak scanners (`keygate keys patterns`). Labels are
    /// lowercase letters and digits, so nothing needs escaping; it is in the
    /// common subset of RE2 (gitleaks, GitHub), Go and PCRE. The checksum
    /// (the last 6 characters, a base62 CRC32 of what precedes them) is
    /// beyond a regex: a scanner that can run code should also check it.
    pub fn detection_regex(&self) -> String {
        let environments: Vec<&str> = self
            .environments
            .iter()
            .map(String::as_str)
            .chain([ADMIN_ENVIRONMENT])
            .collect();
        format!(
            "{}_(?:{})_[0-9A-Za-z]{{{}}}",
            self.prefix,
            environments.join("|"),
            RANDOM_LEN + CHECKSUM_LEN
        )
    }

    /// Checks shape, prefix, environment and checksum without allocating.
    pub fn parse<'a>(&self, presented: &'a str) -> Result<ParsedKey<'a>, MalformedKey> {
        self.parse_unchecked(presented)?.check()
    }

    /// Checks shape, prefix and environment, and leaves the checksum for
    /// [`UncheckedKey::check`]: the verify path looks a key up in its cache
    /// first and checks the sum only when the cache does not hold it
    /// (crates/keygate-engine/src/verifier/mod.rs).
    pub fn parse_unchecked<'a>(&self, presented: &'a str) -> Result<UncheckedKey<'a>, MalformedKey> {
        if presented.len() > MAX_KEY_LEN {
            return Err(MalformedKey::TooLong);
        }
        let (prefix, rest) = split_at_underscore(presented).ok_or(MalformedKey::Shape)?;
        let (env, body) = split_at_underscore(rest).ok_or(MalformedKey::Shape)?;
        if body.len() != RANDOM_LEN + CHECKSUM_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(MalformedKey::Shape);
        }
        if prefix != self.prefix {
            return Err(MalformedKey::Prefix);
        }
        if !self.is_known_environment(env) {
            return Err(MalformedKey::Environment);
        }
        Ok(UncheckedKey(ParsedKey {
            full: presented,
            environment: env,
        }))
    }
}

/// A presented credential of this deployment's shape whose checksum is not
/// checked yet. Its hash finds a cached key: only keys whose checksum held
/// are ever looked up in the store, so a hash the cache holds is one of a
/// key that passed [`Self::check`] (a typo of it has another hash).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UncheckedKey<'a>(ParsedKey<'a>);

impl<'a> UncheckedKey<'a> {
    pub fn hash(&self) -> KeyHash {
        self.0.hash()
    }

    /// The checksum: the last 6 characters are a base62 CRC32 of the rest.
    pub fn check(self) -> Result<ParsedKey<'a>, MalformedKey> {
        let presented = self.0.full;
        let signed_len = presented.len() - CHECKSUM_LEN;
        let expected = encode_checksum(crc32fast::hash(&presented.as_bytes()[..signed_len]));
        if expected != presented.as_bytes()[signed_len..] {
            return Err(MalformedKey::Checksum);
        }
        Ok(self.0)
    }
}

impl fmt::Debug for UncheckedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UncheckedKey(env={}, <redacted>)", self.0.environment)
    }
}

/// `s.split_once('_')` by bytes: a `char` pattern searches with `memchr`
/// and then compares each match with `memcmp`, which cost a cached verify
/// more than the search itself (BENCHMARKS.md, "Fewer clock reads and one
/// plan read per decision"). `_` is ASCII, so both sides are whole `str`s.
fn split_at_underscore(s: &str) -> Option<(&str, &str)> {
    let at = s.bytes().position(|b| b == b'_')?;
    Some((s.get(..at)?, s.get(at + 1..)?))
}

fn is_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_LABEL_LEN && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn random_base62(rng: &mut impl RngCore) -> char {
    // Rejection sampling keeps every character uniformly likely: 248 = 4 * 62.
    loop {
        let byte = (rng.next_u32() & 0xff) as u8;
        if byte < 248 {
            return BASE62[(byte % 62) as usize] as char;
        }
    }
}

fn encode_checksum(mut value: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

/// A newly generated key: exists only in the response that creates it.
/// `Debug` shows no part of it and its memory is zeroed when dropped
/// (secrecy).
#[derive(Clone, Debug)]
pub struct PlaintextKey(SecretString);

/// Compared in constant time, like every secret.
impl PartialEq for PlaintextKey {
    fn eq(&self, other: &Self) -> bool {
        self.expose().as_bytes().ct_eq(other.expose().as_bytes()).into()
    }
}

impl Eq for PlaintextKey {}

impl PlaintextKey {
    /// The only way to read the secret; every call site is a place it can leak.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.expose())
    }

    /// `kg_live_AbCd...wxyz`: enough for a person to recognise a key.
    pub fn hint(&self) -> String {
        hint_of(self.expose())
    }
}

/// A presented credential that passed the format and checksum checks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    full: &'a str,
    environment: &'a str,
}

impl<'a> ParsedKey<'a> {
    pub fn environment(&self) -> &'a str {
        self.environment
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.full)
    }

    /// `kg_live_AbCd...wxyz`: how a scanner's report names a found key.
    pub fn hint(&self) -> String {
        hint_of(self.full)
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParsedKey(env={}, <redacted>)", self.environment)
    }
}

fn hint_of(key: &str) -> String {
    let body_start = key.len() - RANDOM_LEN - CHECKSUM_LEN;
    let random = &key[body_start..body_start + RANDOM_LEN];
    format!("{}{}...{}", &key[..body_start], &random[..4], &random[RANDOM_LEN - 4..])
}

/// SHA-256 of a full key: the only form of a key that is stored, cached or logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// 64 lowercase hex digits, as [`KeyHash::to_hex`] writes them.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn format() -> KeyFormat {
        KeyFormat::new("kg", &["live".into(), "test".into()]).unwrap()
    }

    #[test]
    fn generated_key_has_the_documented_shape() {
        let key = format().generate("live", &mut StdRng::seed_from_u64(7)).unwrap();
        let s = key.expose();
        assert!(s.starts_with("kg_live_"));
        assert_eq!(s.len(), "kg_live_".len() + 38);
        assert!(s["kg_live_".len()..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(format().parse(s).unwrap().environment(), "live");
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let key = format().generate("test", &mut StdRng::seed_from_u64(1)).unwrap();
        let parsed = format().parse(key.expose()).unwrap();
        for printed in [format!("{key:?}"), format!("{parsed:?}")] {
            assert!(!printed.contains(&key.expose()[8..]), "{printed}");
        }
    }

    #[test]
    fn hint_keeps_first_and_last_four_of_the_random_part() {
        let key = format().generate("live", &mut StdRng::seed_from_u64(3)).unwrap();
        let random = &key.expose()[8..40];
        assert_eq!(key.hint(), format!("kg_live_{}...{}", &random[..4], &random[28..]));
        assert_eq!(format().parse(key.expose()).unwrap().hint(), key.hint());
    }

    #[test]
    fn a_hash_reads_back_from_its_hex_only() {
        let hash = KeyHash::of("kg_live_x");
        assert_eq!(KeyHash::from_hex(&hash.to_hex()), Some(hash));
        for bad in [&hash.to_hex()[..63], &hash.to_hex().to_uppercase(), &"g".repeat(64), ""] {
            assert_eq!(KeyHash::from_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn rejects_foreign_and_malformed_input() {
        let f = format();
        let good = f.generate("live", &mut StdRng::seed_from_u64(9)).unwrap();
        let other = KeyFormat::new("evon", &["live".into()]).unwrap();
        assert_eq!(other.parse(good.expose()), Err(MalformedKey::Prefix));
        assert_eq!(f.parse(""), Err(MalformedKey::Shape));
        assert_eq!(f.parse("kg_live_short"), Err(MalformedKey::Shape));
        assert_eq!(f.parse(&"x".repeat(8192)), Err(MalformedKey::TooLong));
        let staging = good.expose().replacen("live", "prod", 1);
        assert_eq!(f.parse(&staging), Err(MalformedKey::Environment));
        let admin = f.generate(ADMIN_ENVIRONMENT, &mut StdRng::seed_from_u64(2)).unwrap();
        assert!(f.parse(admin.expose()).is_ok());
    }

    #[test]
    fn config_validation_names_the_problem() {
        assert_eq!(
            KeyFormat::new("KG", &["live".into()]),
            Err(KeyFormatError::BadPrefix("KG".into()))
        );
        assert_eq!(KeyFormat::new("kg", &[]), Err(KeyFormatError::NoEnvironments));
        assert_eq!(
            KeyFormat::new("kg", &["admin".into()]),
            Err(KeyFormatError::ReservedEnvironment)
        );
        assert_eq!(
            KeyFormat::new("kg", &["a_b".into()]),
            Err(KeyFormatError::BadEnvironment("a_b".into()))
        );
    }

    proptest! {
        #[test]
        fn a_key_splits_at_its_first_underscore_as_str_does(s in "[a-zé_]{0,12}") {
            prop_assert_eq!(split_at_underscore(&s), s.split_once('_'));
        }

        #[test]
        fn parse_is_parse_unchecked_then_check(s in "(kg|xx)_(live|test|nope)_[0-9A-Za-z]{36,40}", garbage in ".{0,60}") {
            let f = format();
            for presented in [s.as_str(), garbage.as_str()] {
                let in_two_steps = f.parse_unchecked(presented).and_then(UncheckedKey::check);
                prop_assert_eq!(f.parse(presented), in_two_steps);
            }
        }

        #[test]
        fn format_then_parse_round_trips(seed in any::<u64>(), env_index in 0usize..3) {
            let f = KeyFormat::new("evon", &["dev".into(), "staging".into(), "prod".into()]).unwrap();
            let env = f.environments()[env_index].clone();
            let key = f.generate(&env, &mut StdRng::seed_from_u64(seed)).unwrap();
            let parsed = f.parse(key.expose()).unwrap();
            prop_assert_eq!(parsed.environment(), env.as_str());
            prop_assert_eq!(parsed.hash(), key.hash());
        }

        #[test]
        fn any_single_changed_character_is_rejected(
            seed in any::<u64>(),
            position in 0usize..46,
            replacement in proptest::sample::select(BASE62.to_vec()),
        ) {
            let f = format();
            let key = f.generate("live", &mut StdRng::seed_from_u64(seed)).unwrap();
            let mut bytes = key.expose().as_bytes().to_vec();
            let position = position % bytes.len();
            prop_assume!(bytes[position] != replacement);
            bytes[position] = replacement;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(f.parse(&changed).is_err());
        }
    }
}
