//! Bearer tokens: how a client's `authorization: Bearer <token>` metadata is read, and how
//! the broker recognises a token without keeping it.
//!
//! The broker's configuration holds only `sha256:<hex>` of each token (made by `herald auth
//! hash-token`), so a leaked configuration file grants nothing. A plain hash, not a slow
//! password hash, is right here: tokens are 256-bit random strings, not guessable
//! passwords, and every RPC hashes the token it carries (a slow hash would cost more than
//! the request). The presented token's hash is looked up in a map: what the lookup's timing
//! could reveal is about hashes, from which no token can be derived.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a stored hash starts with: the algorithm, so another can be added later.
pub const HASH_PREFIX: &str = "sha256:";
/// Longest token accepted. Herald's own are 69 characters; other issuers' opaque tokens
/// fit too, while a megabyte of header is refused before it is hashed.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// What `generate` puts in front of its random hex, so a Herald token is recognisable in
/// a secret scanner.
pub const GENERATED_PREFIX: &str = "hrld_";

/// One configured token: the principal it authenticates and its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub principal: String,
    /// `sha256:` and 64 lowercase hex digits.
    pub hash: String,
}

/// Why an `authorization` value is not a usable bearer token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the authorization metadata is not \"Bearer <token>\"")]
    NotBearer,
    #[error("the bearer token is empty")]
    Empty,
    #[error("the bearer token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("the bearer token holds characters outside visible ASCII")]
    BadCharacters,
}

/// The token in an `authorization` metadata value: `Bearer <token>` (scheme in any case,
/// one or more spaces), the token visible ASCII without spaces. Never panics, whatever the
/// bytes.
pub fn parse_authorization(value: &[u8]) -> Result<&str, TokenError> {
    const SCHEME: &[u8] = b"bearer";
    if value.len() <= SCHEME.len()
        || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME)
        || value[SCHEME.len()] != b' '
    {
        return Err(TokenError::NotBearer);
    }
    let token = value[SCHEME.len()..].trim_ascii();
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLong);
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::BadCharacters);
    }
    // Visible ASCII is UTF-8.
    std::str::from_utf8(token).map_err(|_| TokenError::BadCharacters)
}

/// `sha256:<hex>` of a token, as the configuration stores it.
pub fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(HASH_PREFIX.len() + 64);
    out.push_str(HASH_PREFIX);
    out.push_str(&hex(&digest));
    out
}

/// A new token: `hrld_` and 64 hex digits of 256 random bits from the OS.
pub fn generate() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(format!("{GENERATED_PREFIX}{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The configured tokens, by hash.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], String>,
}

impl Tokens {
    /// Checks every entry (a principal, a well-formed hash, no hash twice).
    pub fn new(entries: &[TokenEntry]) -> Result<Tokens, String> {
        let mut by_hash = HashMap::new();
        for entry in entries {
            if entry.principal.trim().is_empty() {
                return Err("a token entry has an empty principal".into());
            }
            let digest = entry
                .hash
                .strip_prefix(HASH_PREFIX)
                .and_then(unhex)
                .ok_or_else(|| {
                    format!(
                        "the token hash of principal {:?} is not \"sha256:\" and 64 hex digits (make one with `herald auth hash-token`)",
                        entry.principal
                    )
                })?;
            if by_hash.insert(digest, entry.principal.clone()).is_some() {
                return Err(format!(
                    "the token hash of principal {:?} is configured twice",
                    entry.principal
                ));
            }
        }
        Ok(Tokens { by_hash })
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The principal `token` authenticates, if it is one of the configured tokens.
    pub fn principal(&self, token: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&digest).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values_parse_and_everything_else_is_refused() {
        assert_eq!(parse_authorization(b"Bearer abc"), Ok("abc"));
        assert_eq!(parse_authorization(b"bearer   abc  "), Ok("abc"));
        assert_eq!(parse_authorization(b"BEARER a.b-c_d~"), Ok("a.b-c_d~"));
        assert_eq!(
            parse_authorization(b"Basic abc"),
            Err(TokenError::NotBearer)
        );
        assert_eq!(parse_authorization(b"Bearer"), Err(TokenError::NotBearer));
        assert_eq!(
            parse_authorization(b"Bearerabc"),
            Err(TokenError::NotBearer)
        );
        assert_eq!(parse_authorization(b"Bearer    "), Err(TokenError::Empty));
        assert_eq!(
            parse_authorization(b"Bearer a b"),
            Err(TokenError::BadCharacters)
        );
        assert_eq!(
            parse_authorization(b"Bearer \xff\xfe"),
            Err(TokenError::BadCharacters)
        );
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(
            parse_authorization(long.as_bytes()),
            Err(TokenError::TooLong)
        );
        assert_eq!(parse_authorization(b""), Err(TokenError::NotBearer));
    }

    #[test]
    fn a_generated_token_is_found_by_its_hash_only() {
        let token = generate().unwrap();
        assert!(
            token.starts_with(GENERATED_PREFIX) && token.len() == 69,
            "{token}"
        );
        assert_ne!(token, generate().unwrap());
        let entry = TokenEntry {
            principal: "orders".into(),
            hash: hash(&token),
        };
        let tokens = Tokens::new(std::slice::from_ref(&entry)).unwrap();
        assert_eq!(tokens.principal(&token), Some("orders"));
        assert_eq!(tokens.principal(&format!("{token}x")), None);
        assert_eq!(tokens.principal(""), None);
        // Upper-case hex is the same hash; a second entry with it is refused.
        let upper = TokenEntry {
            principal: "other".into(),
            hash: format!("sha256:{}", entry.hash[7..].to_uppercase()),
        };
        assert!(Tokens::new(&[entry.clone(), upper]).is_err());
        for bad in ["", "sha256:", "sha256:zz", "md5:00", &token] {
            let e = TokenEntry {
                principal: "p".into(),
                hash: bad.into(),
            };
            assert!(Tokens::new(&[e]).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// The fuzz target `auth_metadata`'s property, on every `cargo test`: any bytes
        /// parse or are refused without a panic, and what parses is a token that parses
        /// back to itself.
        #[test]
        fn any_authorization_bytes_parse_or_are_refused(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), bearer in proptest::prelude::any::<bool>()) {
            let mut value = value;
            if bearer {
                value.splice(0..0, b"Bearer ".iter().copied());
            }
            if let Ok(token) = parse_authorization(&value) {
                proptest::prop_assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()));
                let again = format!("bEaReR {token}");
                proptest::prop_assert_eq!(parse_authorization(again.as_bytes()), Ok(token));
            }
        }
    }

    #[test]
    fn the_hash_is_sha256_in_hex() {
        assert_eq!(
            hash("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
