//! What the Herald broker and its clients must agree on, byte for byte, in a crate of its
//! own so that a client does not compile the broker to get it.
//!
//! - [`batch`] — the record batch: the storage format and the producer fast path (builder,
//!   validation, zero-copy decoding). Specified byte by byte in its module docs.
//! - [`partition_for_key`] — the partition a record key goes to, as the broker picks it.
//! - [`limits`] — bounds the broker enforces on requests and a client must stay within.
//!
//! Nothing here does I/O or knows gRPC: the crate depends on `bytes`, `crc32c`,
//! `xxhash-rust` and `thiserror` only.

pub mod batch;
pub mod limits;

/// The partition of a key: `xxh64(key, seed 0) % partitions`. Documented in the README
/// (with test vectors) so that every client, in any language, computes the same.
///
/// `partitions` must be at least 1 (a topic has 1..=4096).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (xxhash_rust::xxh64::xxh64(key, 0) % u64::from(partitions)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test vectors for the documented key hash; the README lists the same.
    #[test]
    fn key_hash_vectors() {
        let vectors: [(&[u8], u64, u32, u32); 4] = [
            (b"", 0xef46db3751d8e999, 8, 1),
            (b"a", 0xd24ec4f1a98c6e5b, 8, 3),
            (b"order-1", 0x3baf4120aa43a0ad, 16, 13),
            (b"user:42", 0xdc1fea7da8d2d1c2, 3, 2),
        ];
        for (key, hash, partitions, partition) in vectors {
            assert_eq!(xxhash_rust::xxh64::xxh64(key, 0), hash);
            assert_eq!(partition_for_key(key, partitions), partition);
        }
    }
}
