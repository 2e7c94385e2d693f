//! API keys. A key is 32 random bytes shown once as `kiln_<hex>`; the ledger keeps only its
//! SHA-256. A fast hash is right here (unlike for passwords) because the key has 256 bits of
//! entropy: there is nothing to brute-force, and every request must look it up cheaply.

use rand::RngCore;
use sha2::{Digest, Sha256};

pub const KEY_PREFIX: &str = "kiln_";

/// An API key's id (never its secret): how jobs, limits, idempotency keys and webhook secrets
/// name the key that owns them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl KeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A freshly minted key: the plaintext (to show once) and what the ledger stores.
pub struct MintedKey {
    pub plaintext: String,
    pub hash: String,
    /// The first characters of the key, kept to let people tell keys apart in listings.
    pub display_prefix: String,
}

pub fn mint() -> MintedKey {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let plaintext = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    MintedKey {
        hash: hash(&plaintext),
        display_prefix: plaintext[..KEY_PREFIX.len() + 6].to_owned(),
        plaintext,
    }
}

pub fn hash(plaintext: &str) -> String {
    hex::encode(Sha256::digest(plaintext.as_bytes()))
}

/// Cheap syntactic check, so malformed keys are refused before touching the ledger.
pub fn looks_like_key(candidate: &str) -> bool {
    candidate.len() == KEY_PREFIX.len() + 64
        && candidate.starts_with(KEY_PREFIX)
        && candidate[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_are_well_formed_and_distinct() {
        let a = mint();
        let b = mint();
        assert!(looks_like_key(&a.plaintext));
        assert_ne!(a.plaintext, b.plaintext);
        assert_eq!(a.hash, hash(&a.plaintext));
        assert!(!a.hash.contains(&a.plaintext[KEY_PREFIX.len()..]));
        assert!(a.plaintext.starts_with(&a.display_prefix));
    }

    #[test]
    fn malformed_keys_are_recognised() {
        assert!(!looks_like_key(""));
        assert!(!looks_like_key("kiln_xyz"));
        assert!(!looks_like_key(&format!("kiln_{}", "G".repeat(64))));
        assert!(!looks_like_key(&format!("nope_{}", "a".repeat(64))));
    }
}
