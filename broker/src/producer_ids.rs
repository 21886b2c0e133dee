//! Producer identities for idempotent publishing: what `InitProducer` hands out.
//!
//! An anonymous producer gets a fresh random 64-bit id at epoch 0: it is idempotent for
//! its own life (its retries, reconnects and broker restarts), and a new process is a new
//! producer. A **named** producer (a stable name such as a service's instance name) gets
//! the same id every time with the next epoch: the new instance fences the old one, whose
//! batches are then refused with FAILED_PRECONDITION instead of interleaving with the new
//! instance's. Names, ids and epochs of named producers are kept in
//! `<data_dir>/producers.toml` (checksummed like every metadata file, see `meta_file`), so
//! fencing survives restarts.
//!
//! Fencing is checked twice: here, on every idempotent publish, against the epoch the
//! broker handed out last (a lock-free read of a copy-on-write map), and by each
//! partition's writer against the epochs it has seen (`storage::producers`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use herald_format::batch::ProducerStamp;
use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Limit, Result};
use crate::meta_file;
use crate::topic::validate_name;

/// The file of named producers in the data directory.
pub const PRODUCERS_FILE: &str = "producers.toml";
/// Most named producers a broker keeps: each `InitProducer` with a new name adds one.
pub const MAX_NAMED_PRODUCERS: usize = 100_000;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Named {
    id: u64,
    epoch: u16,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProducersFile {
    #[serde(default)]
    producers: BTreeMap<String, Named>,
}

/// The broker's producer identities.
pub struct ProducerIds {
    dir: PathBuf,
    /// Named producers, or why `producers.toml` was refused (then named producers are
    /// refused too, and the file is left as it is). Touched by `InitProducer` only.
    named: Mutex<std::result::Result<ProducersFile, (PathBuf, String)>>,
    /// Current epoch of every named producer's id: read on every idempotent publish.
    epochs: ArcSwap<HashMap<u64, u16>>,
}

impl ProducerIds {
    /// Loads the named producers of `data_dir`. A damaged file is not fatal: anonymous
    /// producers keep working, named ones are refused naming the file. Blocking.
    pub fn open(data_dir: &Path) -> ProducerIds {
        let path = data_dir.join(PRODUCERS_FILE);
        let named = match std::fs::read(&path) {
            Ok(bytes) => match meta_file::parse::<ProducersFile>(&bytes) {
                Ok(loaded) => {
                    if !loaded.sealed {
                        meta_file::reseal(data_dir, PRODUCERS_FILE, &loaded.body);
                    }
                    Ok(loaded.value)
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e,
                        "the file of named producers is damaged and was not loaded; named producers are refused until it is repaired or removed");
                    Err((path, e.to_string()))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProducersFile::default()),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e,
                    "the file of named producers cannot be read; named producers are refused");
                Err((path, format!("cannot be read: {e}")))
            }
        };
        let epochs = named
            .as_ref()
            .map(|f| f.producers.values().map(|n| (n.id, n.epoch)).collect())
            .unwrap_or_default();
        ProducerIds {
            dir: data_dir.to_owned(),
            named: Mutex::new(named),
            epochs: ArcSwap::from_pointee(epochs),
        }
    }

    /// A producer id and epoch for `name` (see the module doc); `None` for an anonymous
    /// producer. Blocking: a named producer's epoch is durable before it is returned.
    pub fn init(&self, name: Option<&str>) -> Result<(u64, u16)> {
        let Some(name) = name else {
            return Ok((fresh_id()?, 0));
        };
        validate_name("producer", name)?;
        let mut guard = self.named.lock().unwrap_or_else(|e| e.into_inner());
        let file = guard
            .as_mut()
            .map_err(|(path, reason)| BrokerError::ProducersDamaged {
                path: path.clone(),
                reason: reason.clone(),
            })?;
        if !file.producers.contains_key(name) && file.producers.len() >= MAX_NAMED_PRODUCERS {
            return Err(BrokerError::limit(
                Limit::NamedProducers,
                file.producers.len() + 1,
                MAX_NAMED_PRODUCERS,
            ));
        }
        let next = match file.producers.get(name) {
            Some(n) if n.epoch < u16::MAX => Named {
                id: n.id,
                epoch: n.epoch + 1,
            },
            // A new name, or its epochs used up: a new id, which nothing has fenced.
            _ => Named {
                id: fresh_id()?,
                epoch: 0,
            },
        };
        let old = file.producers.insert(name.to_owned(), next);
        let body = toml::to_string(&*file).map_err(|e| {
            BrokerError::io(
                "encoding producers.toml",
                std::io::Error::other(e.to_string()),
            )
        })?;
        if let Err(e) = meta_file::write_sealed_atomic(&self.dir, PRODUCERS_FILE, &body) {
            match old {
                Some(old) => file.producers.insert(name.to_owned(), old),
                None => file.producers.remove(name),
            };
            return Err(e);
        }
        let epochs: HashMap<u64, u16> = file.producers.values().map(|n| (n.id, n.epoch)).collect();
        self.epochs.store(Arc::new(epochs));
        Ok((next.id, next.epoch))
    }

    /// Refuses a batch from an instance of a named producer older than the newest.
    pub fn check(&self, stamp: ProducerStamp) -> Result<()> {
        match self.epochs.load().get(&stamp.producer_id) {
            Some(&current) if stamp.epoch < current => Err(BrokerError::Storage(
                crate::storage::StorageError::ProducerFenced {
                    producer_id: stamp.producer_id,
                    epoch: stamp.epoch,
                    current_epoch: current,
                },
            )),
            _ => Ok(()),
        }
    }
}

/// A random non-zero id: ids of anonymous producers must not repeat across restarts, and
/// 64 random bits make a collision among even millions of producers negligible.
fn fresh_id() -> Result<u64> {
    loop {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| {
            BrokerError::io(
                "drawing a producer id",
                std::io::Error::other(e.to_string()),
            )
        })?;
        let id = u64::from_le_bytes(bytes);
        if id != 0 {
            return Ok(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(id: u64, epoch: u16) -> ProducerStamp {
        ProducerStamp {
            producer_id: id,
            epoch,
            base_sequence: 0,
        }
    }

    #[test]
    fn named_producers_fence_older_instances_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::open(dir.path());
        let (a, a0) = ids.init(None).unwrap();
        let (b, _) = ids.init(None).unwrap();
        assert_ne!(a, b);
        assert_eq!(a0, 0);
        let (n, e0) = ids.init(Some("orders-1")).unwrap();
        let (n2, e1) = ids.init(Some("orders-1")).unwrap();
        assert_eq!((n2, e0 + 1), (n, e1));
        assert!(ids.check(stamp(n, e0)).is_err());
        assert!(ids.check(stamp(n, e1)).is_ok());
        assert!(ids.check(stamp(a, 0)).is_ok());
        drop(ids);
        let ids = ProducerIds::open(dir.path());
        assert!(
            ids.check(stamp(n, e0)).is_err(),
            "fencing survives a restart"
        );
        assert_eq!(ids.init(Some("orders-1")).unwrap(), (n, e1 + 1));
        assert!(ids.init(Some("bad/name")).is_err());
    }

    #[test]
    fn a_damaged_file_refuses_named_producers_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::open(dir.path());
        ids.init(Some("svc")).unwrap();
        drop(ids);
        let path = dir.path().join(PRODUCERS_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let ids = ProducerIds::open(dir.path());
        let err = ids.init(Some("svc")).unwrap_err();
        assert!(matches!(err, BrokerError::ProducersDamaged { .. }), "{err}");
        assert!(ids.init(None).is_ok(), "anonymous producers still work");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the damaged file is kept"
        );
    }
}
