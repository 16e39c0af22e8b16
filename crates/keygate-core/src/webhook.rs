//! Webhook signing as the Standard Webhooks specification defines it, and
//! the retry schedule.
//!
//! A receiver checks `webhook-signature` against HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the bytes of the
//! endpoint's secret (`whsec_` + base64), and rejects old timestamps. Any
//! Standard Webhooks library verifies keygate's deliveries.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::secrets::{Keyring, OpenError, StoredSecret};

const SECRET_PREFIX: &str = "whsec_";
/// 24 bytes, as the specification's examples use; more than HMAC-SHA256 needs
/// to resist guessing.
const SECRET_BYTES: usize = 24;

/// An endpoint's signing secret. Shown once when the endpoint is created;
/// `Debug` never prints it and its memory is zeroed when dropped (secrecy).
/// Unlike API keys it cannot be stored as a hash, since signing needs it:
/// it is stored sealed for its endpoint (crates/keygate-core/src/secrets.rs).
#[derive(Clone, Debug)]
pub struct WebhookSecret(SecretSlice<u8>);

/// Compared in constant time, like every secret.
impl PartialEq for WebhookSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.expose_secret().ct_eq(other.0.expose_secret()).into()
    }
}

impl Eq for WebhookSecret {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret is `whsec_` followed by base64")]
pub struct MalformedSecret;

impl WebhookSecret {
    pub fn generate(rng: &mut impl RngCore) -> Self {
        let mut bytes = vec![0; SECRET_BYTES];
        rng.fill_bytes(&mut bytes);
        Self(bytes.into())
    }

    pub fn parse(text: &str) -> Result<Self, MalformedSecret> {
        let encoded = text.strip_prefix(SECRET_PREFIX).ok_or(MalformedSecret)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| MalformedSecret)?;
        if bytes.is_empty() {
            return Err(MalformedSecret);
        }
        Ok(Self(bytes.into()))
    }

    /// The `whsec_...` form: what the endpoint's owner copies.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(self.0.expose_secret()))
    }

    /// What the store keeps: the secret sealed for the endpoint `endpoint_id`.
    pub fn seal(&self, keyring: &Keyring, endpoint_id: &str, rng: &mut impl RngCore) -> StoredSecret {
        keyring.seal(self.0.expose_secret(), endpoint_id, rng)
    }

    /// The secret of the endpoint `endpoint_id`, from what the store keeps.
    /// A plaintext `whsec_...` written by a keygate from before sealing is
    /// read as it is (the next start seals it).
    pub fn open(stored: &StoredSecret, keyring: &Keyring, endpoint_id: &str) -> Result<Self, OpenError> {
        match keyring.open(stored, endpoint_id) {
            Ok(bytes) => Ok(Self(bytes)),
            Err(OpenError::NotSealed) => Self::parse(stored.as_str()).map_err(|_| OpenError::Corrupt),
            Err(other) => Err(other),
        }
    }

    /// The `webhook-signature` header value for one delivery: `v1,` and the
    /// base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
    pub fn sign(&self, message_id: &str, timestamp: i64, body: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.0.expose_secret()) else {
            return String::new();
        };
        mac.update(message_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// How long to wait after the `attempt`-th failed attempt (1-based): `base`
/// doubling each time, never more than `max`. With the defaults (30 s, 1 h)
/// a delivery is tried 30 s, 1, 2, 4, 8, 16, 32 min and then hourly after
/// the first failure, until it is given up 24 h after the event.
pub fn retry_delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    base.saturating_mul(1 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries.
    #[test]
    fn signs_the_specifications_example() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_sealed_secret_opens_for_its_endpoint_and_a_plaintext_one_still_reads() {
        let keyring = Keyring::generate(&mut rand::thread_rng());
        let secret = WebhookSecret::generate(&mut rand::thread_rng());
        let stored = secret.seal(&keyring, "wh_1", &mut rand::thread_rng());
        assert!(!stored.as_str().contains(&secret.expose()));
        assert_eq!(WebhookSecret::open(&stored, &keyring, "wh_1").unwrap(), secret);
        assert_eq!(
            WebhookSecret::open(&stored, &keyring, "wh_2").unwrap_err(),
            OpenError::Corrupt
        );
        let legacy = StoredSecret::new(secret.expose());
        assert_eq!(WebhookSecret::open(&legacy, &keyring, "wh_1").unwrap(), secret);
    }

    #[test]
    fn a_secret_round_trips_and_hides_from_debug() {
        let secret = WebhookSecret::generate(&mut rand::thread_rng());
        let shown = secret.expose();
        assert!(shown.starts_with("whsec_"));
        assert_eq!(WebhookSecret::parse(&shown).unwrap(), secret);
        assert!(!format!("{secret:?}").contains(&shown[6..]));
        assert_eq!(WebhookSecret::parse("whsec_"), Err(MalformedSecret));
        assert_eq!(WebhookSecret::parse("sk_abc"), Err(MalformedSecret));
        assert_eq!(WebhookSecret::parse("whsec_***"), Err(MalformedSecret));
    }

    #[test]
    fn retries_double_up_to_the_cap() {
        let base = Duration::from_secs(30);
        let max = Duration::from_secs(3600);
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n, base, max).as_secs()).collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(retry_delay(u32::MAX, base, max), max);
    }
}
