//! Webhook signing secrets at rest. The ledger never holds a secret in clear: each is sealed
//! with AES-256-GCM under a key from configuration (`secrets_key`; on the embedded default a key
//! generated once into the data directory) and a fresh random nonce, and stored as
//! `sealed:v1:<base64(nonce ‖ ciphertext ‖ tag)>`. Whoever reads the database file, a backup or
//! a replica learns nothing that signs a webhook. Sealing sits outside the ledger, at the few
//! places that make or use a secret, so the ledger only ever stores opaque text. A secret
//! stored in clear by an older Kiln (`whsec_…`) is still read, so an upgrade breaks nothing.

use crate::WebhookSecret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::Sha256;
use std::sync::Arc;

const PREFIX: &str = "sealed:v1:";

/// Seals and opens webhook secrets with one key.
#[derive(Clone)]
pub struct SecretSeal {
    key: Arc<LessSafeKey>,
}

impl std::fmt::Debug for SecretSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretSeal(<redacted>)")
    }
}

impl SecretSeal {
    /// A seal from 32 key bytes.
    pub fn new(key: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("AES-256 takes a 32-byte key");
        SecretSeal {
            key: Arc::new(LessSafeKey::new(unbound)),
        }
    }

    /// A seal whose key is derived from other key material (HMAC-SHA256 under a fixed label),
    /// so a deployment that already shares one secret between its processes need not share two.
    pub fn derive(material: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(material).expect("HMAC takes any key");
        mac.update(b"kiln webhook secrets at rest v1");
        SecretSeal::new(&mac.finalize().into_bytes().into())
    }

    /// The stored form of `secret`.
    pub fn seal(&self, secret: &WebhookSecret) -> String {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut sealed = secret.expose().into_bytes();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(PREFIX.as_bytes()),
                &mut sealed,
            )
            .expect("a short secret always seals");
        let mut stored = nonce_bytes.to_vec();
        stored.extend_from_slice(&sealed);
        format!("{PREFIX}{}", STANDARD.encode(stored))
    }

    /// The secret behind a stored form; `None` when it was sealed under another key or is not a
    /// secret at all. A clear `whsec_…` from before sealing is read as it is.
    pub fn open(&self, stored: &str) -> Option<WebhookSecret> {
        let Some(encoded) = stored.strip_prefix(PREFIX) else {
            return WebhookSecret::parse(stored);
        };
        let raw = STANDARD.decode(encoded).ok()?;
        if raw.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let mut sealed = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let clear = self
            .key
            .open_in_place(nonce, Aad::from(PREFIX.as_bytes()), &mut sealed)
            .ok()?;
        WebhookSecret::parse(std::str::from_utf8(clear).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_with_its_key_only_and_shows_nothing() {
        let seal = SecretSeal::new(&[7; 32]);
        let secret = WebhookSecret::generate();
        let stored = seal.seal(&secret);
        assert!(stored.starts_with(PREFIX));
        assert!(!stored.contains("whsec_"));
        assert_ne!(stored, seal.seal(&secret), "each seal has its own nonce");
        assert_eq!(seal.open(&stored), Some(secret.clone()));
        assert_eq!(SecretSeal::new(&[8; 32]).open(&stored), None);
        assert_eq!(SecretSeal::derive(b"x").open(&stored), None);
        // Tampering is detected, not decrypted into another secret.
        let mut tampered = stored.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(seal.open(std::str::from_utf8(&tampered).unwrap()), None);
        // What an older Kiln stored in clear still reads.
        assert_eq!(seal.open(&secret.expose()), Some(secret));
        assert_eq!(seal.open("sealed:v1:"), None);
    }
}
