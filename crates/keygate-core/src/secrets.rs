//! Secrets keygate must read back (webhook signing secrets), sealed at rest.
//!
//! API keys are stored as hashes, since checking one needs only its hash.
//! A webhook secret signs every delivery, so keygate needs the secret
//! itself: it is stored sealed with XChaCha20-Poly1305 under a key of the
//! deployment's [`Keyring`] (`secrets.key_file` or `KEYGATE_SECRETS_KEY`,
//! docs/decisions.md "Secrets at rest"). A database backup alone then
//! forges nothing.
//!
//! A sealed value is `kgs1.<key id>.<base64url(nonce ‖ ciphertext)>`. The
//! key id says which key opens it, so a keyring can hold the new key and
//! the old one while `keygate secrets rotate` re-seals every value. The
//! nonce is random (24 bytes: no collision to fear), and the caller's
//! `context` (the row's id) is authenticated with the value, so a sealed
//! value copied into another row does not open there.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretSlice};

/// What every sealed value starts with (format version 1).
pub const SEALED_PREFIX: &str = "kgs1.";
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;

/// A secret as the store keeps it: sealed, or plaintext when a keygate
/// from before sealing wrote it (the next start seals those). Only a
/// [`Keyring`] opens it; `Debug` says which key sealed it, nothing more.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSecret(String);

impl StoredSecret {
    /// A value as read from the store.
    pub fn new(stored: String) -> Self {
        Self(stored)
    }

    /// What the store writes.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// False for a plaintext left by a keygate from before sealing.
    pub fn is_sealed(&self) -> bool {
        split_sealed(&self.0).is_some()
    }
}

impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match split_sealed(&self.0) {
            Some((key_id, _)) => write!(f, "StoredSecret(sealed by {key_id})"),
            None => f.write_str("StoredSecret(plaintext)"),
        }
    }
}

/// One key of a keyring: its id (stored with every value it seals) and its
/// 32 bytes, which `Debug` never prints and which are zeroed on drop.
struct SecretsKey {
    id: String,
    key: SecretBox<[u8; KEY_BYTES]>,
}

/// The keys a node seals and opens secrets with. The first seals; every key
/// opens what it sealed.
///
/// Written as text, one key a line: `<id>:<base64 of 32 bytes>` (blank
/// lines and `#` comments are skipped; commas may separate keys on one
/// line, for an environment variable).
pub struct Keyring {
    sealing: SecretsKey,
    /// Older keys, kept to open what they sealed until a rotation re-seals it.
    others: Vec<SecretsKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("no key: a keyring holds one `<id>:<base64 of 32 bytes>` a line, the first sealing new secrets")]
    Empty,
    #[error("key {0} is not `<id>:<base64 of 32 bytes>` (an id is 1 to 32 letters, digits, `-` or `_`)")]
    Malformed(usize),
    #[error("key id `{0}` appears twice")]
    DuplicateId(String),
}

/// Why a stored value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the value is not sealed (it does not start with `{SEALED_PREFIX}`)")]
    NotSealed,
    #[error("the value was sealed with key `{0}`, which this node's keyring does not hold")]
    UnknownKey(String),
    #[error("the value does not open: damaged, or sealed for another row")]
    Corrupt,
}

impl Keyring {
    /// Reads a keyring's text (see [`Keyring`]).
    pub fn parse(text: &str) -> Result<Self, KeyringError> {
        let mut keys: Vec<SecretsKey> = Vec::new();
        let entries = text
            .lines()
            .map(|line| line.split('#').next().unwrap_or_default())
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty());
        for (index, entry) in entries.enumerate() {
            let key = parse_key(entry).ok_or(KeyringError::Malformed(index + 1))?;
            if keys.iter().any(|k| k.id == key.id) {
                return Err(KeyringError::DuplicateId(key.id));
            }
            keys.push(key);
        }
        let mut keys = keys.into_iter();
        let sealing = keys.next().ok_or(KeyringError::Empty)?;
        Ok(Self {
            sealing,
            others: keys.collect(),
        })
    }

    /// A new key's line, `<id>:<base64>`, to put first in a keyring. The id
    /// is random too, so two generated keys never share one.
    pub fn generate_key(rng: &mut impl RngCore) -> String {
        let key = Self::generate(rng).sealing;
        format!("{}:{}", key.id, STANDARD.encode(key.key.expose_secret()))
    }

    /// A keyring of one new key, for a store that keeps nothing (SQLite in
    /// memory) and for tests.
    pub fn generate(rng: &mut impl RngCore) -> Self {
        let mut id = [0u8; 4];
        rng.fill_bytes(&mut id);
        let mut key = Box::new([0u8; KEY_BYTES]);
        rng.fill_bytes(key.as_mut());
        Self {
            sealing: SecretsKey {
                id: format!("k{}", hex::encode(id)),
                key: SecretBox::new(key),
            },
            others: Vec::new(),
        }
    }

    /// The id of the key that seals.
    pub fn sealing_key_id(&self) -> &str {
        self.sealing.id.as_str()
    }

    /// Seals `plaintext` for the row `context` under the first key.
    pub fn seal(&self, plaintext: &[u8], context: &str, rng: &mut impl RngCore) -> StoredSecret {
        let key = &self.sealing;
        let mut nonce = [0u8; NONCE_BYTES];
        rng.fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new(key.key.expose_secret().into());
        let payload = Payload {
            msg: plaintext,
            aad: context.as_bytes(),
        };
        // Encryption fails only for messages over 256 GiB.
        let sealed = cipher.encrypt(XNonce::from_slice(&nonce), payload).unwrap_or_default();
        let mut body = Vec::with_capacity(NONCE_BYTES + sealed.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&sealed);
        StoredSecret(format!("{SEALED_PREFIX}{}.{}", key.id, URL_SAFE_NO_PAD.encode(body)))
    }

    /// Opens a value sealed for the row `context` by any key of the ring.
    pub fn open(&self, stored: &StoredSecret, context: &str) -> Result<SecretSlice<u8>, OpenError> {
        let (key_id, body) = split_sealed(&stored.0).ok_or(OpenError::NotSealed)?;
        let key = self
            .keys()
            .find(|k| k.id == key_id)
            .ok_or_else(|| OpenError::UnknownKey(key_id.to_owned()))?;
        let body = URL_SAFE_NO_PAD.decode(body).map_err(|_| OpenError::Corrupt)?;
        if body.len() < NONCE_BYTES {
            return Err(OpenError::Corrupt);
        }
        let (nonce, ciphertext) = body.split_at(NONCE_BYTES);
        let cipher = XChaCha20Poly1305::new(key.key.expose_secret().into());
        let payload = Payload {
            msg: ciphertext,
            aad: context.as_bytes(),
        };
        cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map(SecretSlice::from)
            .map_err(|_| OpenError::Corrupt)
    }

    /// True when `stored` is sealed under the key that seals now: nothing
    /// for a rotation to do.
    pub fn is_current(&self, stored: &StoredSecret) -> bool {
        split_sealed(&stored.0).is_some_and(|(key_id, _)| key_id == self.sealing_key_id())
    }

    fn keys(&self) -> impl Iterator<Item = &SecretsKey> {
        std::iter::once(&self.sealing).chain(&self.others)
    }
}

fn split_sealed(stored: &str) -> Option<(&str, &str)> {
    stored.strip_prefix(SEALED_PREFIX)?.split_once('.')
}

fn parse_key(entry: &str) -> Option<SecretsKey> {
    let (id, encoded) = entry.split_once(':')?;
    let id_ok = (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !id_ok {
        return None;
    }
    let mut bytes = STANDARD.decode(encoded.trim()).ok()?;
    let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().ok()?;
    bytes.fill(0);
    Some(SecretsKey {
        id: id.to_owned(),
        key: SecretBox::new(Box::new(key)),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    fn keyring(lines: &[String]) -> Keyring {
        Keyring::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_for_its_row_only() {
        let ring = keyring(&[Keyring::generate_key(&mut rng())]);
        let sealed = ring.seal(b"whsec_abc", "wh_1", &mut rng());
        assert!(sealed
            .as_str()
            .starts_with(&format!("{SEALED_PREFIX}{}.", ring.sealing_key_id())));
        assert!(!sealed.as_str().contains("whsec_"));
        assert_eq!(
            format!("{sealed:?}"),
            format!("StoredSecret(sealed by {})", ring.sealing_key_id())
        );
        assert_eq!(ring.open(&sealed, "wh_1").unwrap().expose_secret(), b"whsec_abc");
        assert_eq!(ring.open(&sealed, "wh_2").unwrap_err(), OpenError::Corrupt);
    }

    #[test]
    fn an_old_key_opens_what_it_sealed_and_the_new_key_seals() {
        let mut rng = rng();
        let old_line = Keyring::generate_key(&mut rng);
        let old = keyring(std::slice::from_ref(&old_line));
        let sealed = old.seal(b"secret", "wh_1", &mut rng);
        let rotated = keyring(&[Keyring::generate_key(&mut rng), old_line]);
        assert!(!rotated.is_current(&sealed));
        assert_eq!(rotated.open(&sealed, "wh_1").unwrap().expose_secret(), b"secret");
        let resealed = rotated.seal(b"secret", "wh_1", &mut rng);
        assert!(rotated.is_current(&resealed));
        let only_new = keyring(&[Keyring::generate_key(&mut rng)]);
        assert!(matches!(only_new.open(&sealed, "wh_1"), Err(OpenError::UnknownKey(_))));
    }

    #[test]
    fn plaintext_and_damage_are_told_apart() {
        let ring = keyring(&[Keyring::generate_key(&mut rng())]);
        let plaintext = StoredSecret::new("whsec_abc".into());
        assert_eq!(ring.open(&plaintext, "wh_1").unwrap_err(), OpenError::NotSealed);
        assert!(!plaintext.is_sealed());
        assert_eq!(format!("{plaintext:?}"), "StoredSecret(plaintext)");
        let damaged = StoredSecret::new(format!("{}A", ring.seal(b"x", "wh_1", &mut rng()).as_str()));
        assert_eq!(ring.open(&damaged, "wh_1").unwrap_err(), OpenError::Corrupt);
    }

    #[test]
    fn keyring_text_is_checked() {
        assert_eq!(Keyring::parse("# nothing\n\n").unwrap_err(), KeyringError::Empty);
        assert_eq!(Keyring::parse("k1:c2hvcnQ=").unwrap_err(), KeyringError::Malformed(1));
        let line = Keyring::generate_key(&mut rng());
        assert_eq!(
            Keyring::parse(&format!("{line}, {line}")).unwrap_err(),
            KeyringError::DuplicateId(line.split(':').next().unwrap().to_owned())
        );
        let two = Keyring::parse(&format!(
            "{line}\n{} # old\n",
            Keyring::generate_key(&mut rand::thread_rng())
        ))
        .unwrap();
        assert_eq!(two.sealing_key_id(), line.split(':').next().unwrap());
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let line = Keyring::generate_key(&mut rng());
        let shown = format!("{:?}", keyring(std::slice::from_ref(&line)));
        assert!(shown.contains(line.split(':').next().unwrap()));
        assert!(!shown.contains(line.split(':').nth(1).unwrap()));
    }

    proptest! {
        #[test]
        fn whatever_is_sealed_opens_unchanged(plaintext in proptest::collection::vec(any::<u8>(), 0..200), context in ".{0,40}") {
            let ring = keyring(&[Keyring::generate_key(&mut rng())]);
            let sealed = ring.seal(&plaintext, &context, &mut rand::thread_rng());
            let opened = ring.open(&sealed, &context).unwrap();
            prop_assert_eq!(opened.expose_secret(), plaintext.as_slice());
        }
    }
}
