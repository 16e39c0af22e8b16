//! Keys issued elsewhere (issue 21): a team moving from Kong, Tyk, Unkey or
//! its own code imports the keys its customers already hold, so nobody has
//! to change keys on a given day. Such a key is not in this deployment's
//! format ([`crate::key`]), so it has no checksum to refuse garbage with:
//! it is looked up by the SHA-256 of the whole string, as keygate's own keys
//! are, but only where `keys.legacy = true` (a flood of random strings then
//! costs a store read each, bounded by the negative cache and the failed
//! attempt throttle).
//!
//! Imports may also bring only a hash, as Unkey stores its keys: SHA-256 of
//! the key as 64 hex digits or as base64.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

use crate::key::{KeyFormat, KeyHash, ParsedKey, UncheckedKey};

/// Shorter strings are refused: a key of 7 characters is guessable.
pub const MIN_LEGACY_LEN: usize = 8;
/// The longest key accepted from anyone (Stripe's secret keys are 107
/// characters); also the bound on any presented credential
/// (crates/keygate-core/src/credential.rs).
pub const MAX_LEGACY_LEN: usize = 256;

/// What a presented credential is by its shape alone: the one rule the
/// verify path and an import share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// A key of this deployment's format.
    Own(ParsedKey<'a>),
    /// This deployment's shape with a wrong checksum: a key copied wrongly,
    /// never one from another system.
    Mistyped,
    /// Not this deployment's format, but it may be an imported key.
    Legacy(LegacyKey<'a>),
    /// Nothing that can be a key.
    Invalid,
}

impl<'a> Presented<'a> {
    pub fn of(format: &KeyFormat, presented: &'a str) -> Self {
        match Shape::of(format, presented) {
            Shape::Own(unchecked) => unchecked.check().map_or(Self::Mistyped, Self::Own),
            Shape::Legacy(key) => Self::Legacy(key),
            Shape::Invalid => Self::Invalid,
        }
    }
}

/// [`Presented`] before the checksum of a key in this deployment's format
/// is checked: the verify path checks it only when its cache does not hold
/// the key (crates/keygate-engine/src/verifier/mod.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape<'a> {
    /// This deployment's format, its checksum not checked yet.
    Own(UncheckedKey<'a>),
    /// Not this deployment's format, but it may be an imported key.
    Legacy(LegacyKey<'a>),
    /// Nothing that can be a key.
    Invalid,
}

impl<'a> Shape<'a> {
    pub fn of(format: &KeyFormat, presented: &'a str) -> Self {
        match format.parse_unchecked(presented) {
            Ok(unchecked) => Self::Own(unchecked),
            Err(_) => LegacyKey::parse(presented).map_or(Self::Invalid, Self::Legacy),
        }
    }
}

/// A presented string that may be a legacy key: 8 to 256 printable ASCII
/// characters without spaces. Anything else is refused before hashing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LegacyKey<'a>(&'a str);

impl<'a> LegacyKey<'a> {
    pub fn parse(presented: &'a str) -> Option<Self> {
        let fits = (MIN_LEGACY_LEN..=MAX_LEGACY_LEN).contains(&presented.len());
        (fits && presented.bytes().all(|b| b.is_ascii_graphic())).then_some(Self(presented))
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.0)
    }

    /// `sk_li...wxyz`: at most a quarter of the key, and never more than
    /// four characters at either end, so a short key is not half shown.
    pub fn hint(&self) -> String {
        let shown = (self.0.len() / 8).min(4);
        let (start, end) = (&self.0[..shown], &self.0[self.0.len() - shown..]);
        format!("{start}...{end}")
    }
}

impl std::fmt::Debug for LegacyKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LegacyKey(<redacted>)")
    }
}

/// An imported key's SHA-256: 64 hex digits (either case), or the 32 bytes
/// in base64 (standard or URL-safe alphabet, with or without padding).
pub fn parse_imported_hash(text: &str) -> Result<KeyHash, &'static str> {
    let text = text.trim();
    let mut bytes = [0u8; 32];
    if text.len() == 64 && hex::decode_to_slice(text, &mut bytes).is_ok() {
        return Ok(KeyHash::from_bytes(bytes));
    }
    let decoded = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok());
    match decoded.map(<[u8; 32]>::try_from) {
        Some(Ok(bytes)) => Ok(KeyHash::from_bytes(bytes)),
        _ => Err("must be a SHA-256: 64 hex digits, or 32 bytes in base64"),
    }
}

/// How a hash-only import is shown in lists: the start of its hash, since
/// nothing of the key itself is known.
pub fn hash_hint(hash: &KeyHash) -> String {
    format!("sha256:{}...", &hash.to_hex()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_legacy_key_is_printable_ascii_of_bounded_length() {
        assert!(LegacyKey::parse("sk_live_51H8xYz").is_some());
        assert!(LegacyKey::parse(&"a".repeat(MAX_LEGACY_LEN)).is_some());
        for bad in ["short12", "with space in it", "tab\there12", "ünicode-key-1234", ""] {
            assert!(LegacyKey::parse(bad).is_none(), "{bad}");
        }
        assert!(LegacyKey::parse(&"a".repeat(MAX_LEGACY_LEN + 1)).is_none());
    }

    #[test]
    fn a_legacy_hint_shows_little_of_a_short_key() {
        assert_eq!(LegacyKey::parse("abcdefghij").unwrap().hint(), "a...j");
        assert_eq!(
            LegacyKey::parse("sk_live_51H8xYzAbCdEfGhIjKlMnOpQ").unwrap().hint(),
            "sk_l...nOpQ"
        );
        assert_eq!(LegacyKey::parse("key12345").unwrap().hint(), "k...5");
    }

    #[test]
    fn the_hash_of_a_legacy_key_is_the_hash_of_the_whole_string() {
        assert_eq!(
            LegacyKey::parse("sk_live_abc").unwrap().hash(),
            KeyHash::of("sk_live_abc")
        );
    }

    #[test]
    fn debug_never_prints_a_legacy_key() {
        assert!(!format!("{:?}", LegacyKey::parse("sk_live_secret").unwrap()).contains("secret"));
    }

    #[test]
    fn a_credential_is_told_apart_by_its_shape() {
        let format = KeyFormat::default();
        let own = format.generate("live", &mut rand::thread_rng()).unwrap();
        let own = own.expose();
        assert!(matches!(Presented::of(&format, own), Presented::Own(_)));
        let last = if own.ends_with('A') { "B" } else { "A" };
        let mistyped = format!("{}{last}", &own[..own.len() - 1]);
        assert_eq!(Presented::of(&format, &mistyped), Presented::Mistyped);
        assert!(matches!(
            Presented::of(&format, "sk_live_51HxAbCdEf"),
            Presented::Legacy(_)
        ));
        assert_eq!(Presented::of(&format, "short"), Presented::Invalid);
    }

    #[test]
    fn malformed_hashes_are_refused() {
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63), "AAAA", &"A".repeat(42)] {
            assert!(parse_imported_hash(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn every_encoding_of_a_hash_reads_back(bytes in any::<[u8; 32]>()) {
            let hash = KeyHash::from_bytes(bytes);
            let encodings = [
                hex::encode(bytes),
                hex::encode_upper(bytes),
                STANDARD.encode(bytes),
                STANDARD_NO_PAD.encode(bytes),
                URL_SAFE.encode(bytes),
                URL_SAFE_NO_PAD.encode(bytes),
            ];
            for text in encodings {
                prop_assert_eq!(parse_imported_hash(&text), Ok(hash), "{}", text);
            }
        }

        #[test]
        fn what_a_legacy_key_accepts_is_printable_and_bounded(text in "\\PC{0,300}") {
            if LegacyKey::parse(&text).is_some() {
                prop_assert!((MIN_LEGACY_LEN..=MAX_LEGACY_LEN).contains(&text.len()));
                prop_assert!(text.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            }
        }
    }
}
