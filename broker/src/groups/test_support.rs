//! Builders shared by the driver's unit tests.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::read::RecordRef;
use super::{Clock, MemberItem, Outgoing};
use crate::config::{Config, FsyncSetting};
use crate::group::{AckId, Delivery, Offset, PartitionId};
use crate::registry::Registry;
use crate::storage::{BatchBuilder, Record, batch};

/// A topic registry on `dir` with small (4 MiB) segments, as the driver's tests start it.
pub(super) fn test_registry(dir: &Path, fsync: FsyncSetting) -> Arc<Registry> {
    let config = Config {
        data_dir: dir.to_owned(),
        fsync,
        segment_bytes: 4 << 20,
        ..Config::default()
    };
    Arc::new(Registry::open(config).unwrap())
}

/// A record at `offset`, alone in its batch.
pub(super) fn record(offset: u64) -> RecordRef {
    stored_batch(offset, 1, 10).remove(0)
}

/// A delivery of `offset` in partition 0 with sequence number `delivery`.
pub(super) fn delivery(offset: u64, delivery: u64) -> Delivery {
    Delivery {
        partition: PartitionId(0),
        offset: Offset(offset),
        attempt: 1,
        deadline_ms: 1000,
        ack_id: AckId {
            partition: PartitionId(0),
            offset: Offset(offset),
            delivery,
        },
        key: None,
        size_bytes: 100,
        timestamp_ms: 0,
    }
}

/// A stored batch of `count` records from `base_offset`, `value_bytes` each (the value
/// starts with the record's offset), decoded as `fill` decodes it.
pub(super) fn stored_batch(base_offset: u64, count: u64, value_bytes: usize) -> Vec<RecordRef> {
    let mut builder = BatchBuilder::with_capacity(1024);
    let values: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let mut v = format!("{}:", base_offset + i).into_bytes();
            v.resize(value_bytes.max(v.len()), b'x');
            v
        })
        .collect();
    for (i, value) in values.iter().enumerate() {
        builder.push(&Record {
            timestamp: 1_000 + i as i64,
            key: Some(b"k"),
            value,
            headers: &[("h", b"1")],
        });
    }
    let mut encoded = builder.finish();
    batch::stamp_base_offset(&mut encoded, base_offset);
    // Something before the batch, as in a chunk read from the log.
    let mut chunk = vec![0u8; 7];
    chunk.extend_from_slice(&encoded);
    let chunk = Bytes::from(chunk);
    let view = batch::BatchView::new(&chunk[7..]).unwrap();
    view.records()
        .map(|r| RecordRef::of(&r.unwrap(), &chunk, 7, encoded.len()))
        .collect()
}

/// Offsets of the deliveries `rx` carries until `count` arrived (10 s at most).
pub(super) async fn receive(rx: &mut mpsc::Receiver<MemberItem>, count: usize) -> Vec<u64> {
    let mut offsets = Vec::new();
    while offsets.len() < count {
        let item = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("deliveries within 10 s")
            .expect("stream open");
        match item.expect("no error") {
            Outgoing::Deliveries(d) => {
                offsets.extend(d.singles.iter().map(|s| s.record.offset));
                offsets.extend(
                    d.runs
                        .iter()
                        .flat_map(|r| r.first_offset..r.first_offset + u64::from(r.count)),
                );
            }
            Outgoing::Joined { .. } | Outgoing::Assignment(_) => {}
        }
    }
    offsets
}

/// A clock that moves only when the test says.
#[derive(Debug)]
pub(super) struct ManualClock(AtomicU64);

impl ManualClock {
    pub(super) fn new(now_ms: u64) -> ManualClock {
        ManualClock(AtomicU64::new(now_ms))
    }

    pub(super) fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
