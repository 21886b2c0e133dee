//! A partition group's openraft types: the entry payload is one checked storage batch,
//! the response the offsets it was stored at.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cluster::types::{NodeAddr, NodeId};

openraft::declare_raft_types!(
    /// A partition group's openraft types.
    pub PartTypes:
        D = PartBatch,
        R = PartAppended,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<PartTypes>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// One data entry: a whole storage batch (header and records), CRC-checked before it is
/// proposed and checked again by every replica before it is appended. `offset` is the
/// base offset the entry's records have: none in a leader's fresh proposal (its log
/// stamps the batch at its end), and the stored one in every entry read back from a log,
/// which is what followers receive; a replica refuses an entry whose offset is not its
/// log's end, so every replica stores the same bytes at the same offsets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartBatch {
    pub offset: Option<u64>,
    pub bytes: RawBytes,
}

impl PartBatch {
    /// A batch to propose.
    pub fn proposal(bytes: Vec<u8>) -> PartBatch {
        PartBatch {
            offset: None,
            bytes: RawBytes(bytes),
        }
    }

    /// A batch stored at `offset`.
    pub fn stored(offset: u64, bytes: Vec<u8>) -> PartBatch {
        PartBatch {
            offset: Some(offset),
            bytes: RawBytes(bytes),
        }
    }
}

impl fmt::Debug for PartBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PartBatch({:?}, {} bytes)",
            self.offset,
            self.bytes.0.len()
        )
    }
}

impl fmt::Display for PartBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} bytes", self.bytes.0.len())
    }
}

/// Bytes encoded as one byte string: serde's `Vec<u8>` is a sequence of single bytes,
/// which bincode walks one element at a time.
#[derive(Clone, PartialEq, Eq)]
pub struct RawBytes(pub Vec<u8>);

impl Serialize for RawBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for RawBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawBytes, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<RawBytes, E> {
                Ok(RawBytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<RawBytes, E> {
                Ok(RawBytes(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawBytes, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    bytes.push(b);
                }
                Ok(RawBytes(bytes))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

/// Where an applied data entry's records are: offsets `base_offset..base_offset + count`.
/// Blank and membership entries answer with a count of 0 at the log's end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartAppended {
    pub base_offset: u64,
    pub count: u32,
}
