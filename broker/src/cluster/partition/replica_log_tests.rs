//! A replica's Raft log against a model: random appends (data, blank, membership),
//! syncs, commits, truncations and reopens, clean or as after a crash that lost any
//! unsynced part of the journal (a torn record included) and of the segment log.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership};
use proptest::prelude::*;

use super::journal::{JOURNAL_FILE, RECORD_BYTES};
use super::replica_log::ReplicaLog;
use super::types::{PartBatch, PartTypes};
use crate::cluster::types::{NodeAddr, NodeId};
use crate::storage::batch::{self, BatchBuilder, Record};
use crate::storage::{FsyncPolicy, LogConfig, LogReader, LogWriter};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        fsync: FsyncPolicy::Always,
        ..LogConfig::default()
    }
}

fn batch_of(tag: u32, records: usize, value_len: usize) -> Vec<u8> {
    let mut b = BatchBuilder::default();
    let value = vec![(tag % 251) as u8; value_len];
    for _ in 0..records {
        b.push(&Record {
            timestamp: 1_000 + i64::from(tag),
            key: None,
            value: &value,
            headers: &[],
        });
    }
    b.finish()
}

fn membership(voters: u64) -> Membership<NodeId, NodeAddr> {
    let ids: BTreeSet<NodeId> = (1..=voters).collect();
    let nodes: BTreeMap<NodeId, NodeAddr> =
        ids.iter().map(|id| (*id, NodeAddr::default())).collect();
    Membership::new(vec![ids], nodes)
}

/// Every readable record: (offset, first value byte).
fn readable(r: &LogReader) -> Vec<(u64, u8)> {
    let mut out = Vec::new();
    let mut at = r.start_offset();
    while let Some(chunk) = r.read(at, 1 << 20).unwrap() {
        for b in batch::batches(&chunk.bytes) {
            for rec in b.unwrap().records() {
                let rec = rec.unwrap();
                if rec.offset >= at {
                    out.push((rec.offset, rec.value[0]));
                }
            }
        }
        at = chunk.next_offset;
    }
    out
}

#[derive(Debug, Clone)]
enum Op {
    Data {
        records: usize,
        value_len: usize,
    },
    Blank,
    Member(u64),
    NewTerm,
    Sync,
    Commit(usize),
    Truncate(usize),
    Crash {
        journal: usize,
        torn: bool,
        log: usize,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..4, 1usize..600).prop_map(|(records, value_len)| Op::Data { records, value_len }),
        1 => Just(Op::Blank),
        1 => (1u64..4).prop_map(Op::Member),
        1 => Just(Op::NewTerm),
        3 => Just(Op::Sync),
        2 => any::<usize>().prop_map(Op::Commit),
        2 => any::<usize>().prop_map(Op::Truncate),
        1 => (any::<usize>(), any::<bool>(), any::<usize>()).prop_map(|(journal, torn, log)| Op::Crash { journal, torn, log }),
        1 => Just(Op::Reopen),
    ]
}

/// A model entry: its id, its record count (0 unless data), the tag of its values, and
/// the voters of a membership entry.
#[derive(Debug, Clone)]
struct ModelEntry {
    log_id: LogId<NodeId>,
    count: u64,
    tag: u32,
    voters: Option<u64>,
}

#[derive(Default)]
struct Model {
    entries: Vec<ModelEntry>,
    synced: usize,
    /// Entries committed (a prefix).
    committed: usize,
    published: u64,
}

impl Model {
    fn end_of(&self, n: usize) -> u64 {
        self.entries[..n].iter().map(|e| e.count).sum()
    }
    fn readable(&self) -> Vec<(u64, u8)> {
        let mut out = Vec::new();
        let mut at = 0;
        for e in &self.entries {
            for o in at..at + e.count {
                if o < self.published {
                    out.push((o, (e.tag % 251) as u8));
                }
            }
            at += e.count;
        }
        out
    }
}

fn check(rl: &ReplicaLog, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(rl.last_log_id(), model.entries.last().map(|e| e.log_id));
    prop_assert_eq!(rl.next_offset(), model.end_of(model.entries.len()));
    prop_assert_eq!(rl.high_watermark(), model.published);
    prop_assert_eq!(readable(&rl.reader()), model.readable());
    let got = rl.read(0, model.entries.len() as u64, usize::MAX).unwrap();
    prop_assert_eq!(got.len(), model.entries.len());
    let mut at = 0;
    for (entry, want) in got.iter().zip(&model.entries) {
        prop_assert_eq!(entry.log_id, want.log_id);
        match &entry.payload {
            EntryPayload::Normal(b) => {
                // Read back stamped with the offset it was stored at.
                prop_assert_eq!(b.offset, Some(at));
                prop_assert_eq!(b.bytes.0[..8].to_vec(), at.to_le_bytes().to_vec());
                let view = batch::BatchView::new(&b.bytes.0).unwrap();
                prop_assert_eq!(u64::from(view.header.record_count), want.count);
            }
            EntryPayload::Blank => prop_assert!(want.count == 0 && want.voters.is_none()),
            EntryPayload::Membership(m) => {
                prop_assert_eq!(m.voter_ids().count() as u64, want.voters.unwrap())
            }
        }
        at += want.count;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn the_raft_log_survives_cuts_and_crashes_as_the_model_says(ops in proptest::collection::vec(op(), 1..50)) {
        let dir = tempfile::tempdir().unwrap();
        let mut rl = Some(ReplicaLog::open(dir.path(), config()).unwrap());
        let mut model = Model::default();
        let (mut term, mut tag) = (1u64, 0u32);
        for op in ops {
            let log = rl.as_mut().unwrap();
            let index = model.entries.len() as u64;
            let log_id = LogId::new(CommittedLeaderId::new(term, 1), index);
            match op {
                Op::Data { records, value_len } => {
                    tag += 1;
                    let bytes = batch_of(tag, records, value_len);
                    // A leader's proposal is unassigned; a follower's copy carries the
                    // offset; both go in.
                    let batch = if tag % 2 == 0 {
                        PartBatch::proposal(bytes)
                    } else {
                        PartBatch::stored(model.end_of(model.entries.len()), bytes)
                    };
                    log.append([Entry::<PartTypes> { log_id, payload: EntryPayload::Normal(batch) }]).unwrap();
                    model.entries.push(ModelEntry { log_id, count: records as u64, tag, voters: None });
                }
                Op::Blank => {
                    log.append([Entry::<PartTypes> { log_id, payload: EntryPayload::Blank }]).unwrap();
                    model.entries.push(ModelEntry { log_id, count: 0, tag: 0, voters: None });
                }
                Op::Member(voters) => {
                    log.append([Entry::<PartTypes> { log_id, payload: EntryPayload::Membership(membership(voters)) }]).unwrap();
                    model.entries.push(ModelEntry { log_id, count: 0, tag: 0, voters: Some(voters) });
                }
                Op::NewTerm => term += 1,
                Op::Sync => {
                    log.sync().unwrap();
                    model.synced = model.entries.len();
                }
                Op::Commit(n) => {
                    // Up to an entry that is synced (a quorum holds it).
                    let choices = model.synced.saturating_sub(model.committed);
                    if choices > 0 {
                        let upto = model.committed + 1 + n % choices;
                        let ids: Vec<_> = model.entries[model.committed..upto].iter().map(|e| e.log_id).collect();
                        log.set_committed(Some(ids[ids.len() - 1]));
                        log.save_state().unwrap();
                        let applied = log.apply(&ids).unwrap();
                        prop_assert_eq!(applied.len(), ids.len());
                        model.committed = upto;
                        model.published = model.end_of(upto);
                    }
                }
                Op::Truncate(n) => {
                    let choices = model.entries.len() - model.committed;
                    if choices > 0 {
                        let from = model.committed + n % choices;
                        log.truncate(from as u64).unwrap();
                        model.entries.truncate(from);
                        model.synced = model.synced.min(from);
                    }
                }
                Op::Crash { journal, torn, log: log_keep } => {
                    drop(rl.take());
                    // The journal keeps its synced records and any part of the rest.
                    let unsynced = model.entries.len() - model.synced;
                    let keep_records = model.synced + journal % (unsynced + 1);
                    let mut keep_bytes = (keep_records * RECORD_BYTES) as u64;
                    if torn && keep_records < model.entries.len() {
                        keep_bytes += (RECORD_BYTES / 2) as u64;
                    }
                    OpenOptions::new().write(true).open(dir.path().join(JOURNAL_FILE)).unwrap().set_len(keep_bytes).unwrap();
                    // The log keeps its synced batches and any whole batches after them.
                    let boundaries: Vec<u64> = (model.synced..=model.entries.len())
                        .map(|n| model.end_of(n))
                        .collect();
                    let log_end = boundaries[log_keep % boundaries.len()];
                    {
                        let mut w = LogWriter::open(dir.path(), config()).unwrap();
                        w.withhold_from(log_end.min(model.end_of(model.synced))).unwrap();
                        w.truncate(log_end).unwrap();
                    }
                    rl = Some(ReplicaLog::open(dir.path(), config()).unwrap());
                    let survivors = (0..=keep_records)
                        .take_while(|&n| model.end_of(n) <= log_end)
                        .last()
                        .unwrap();
                    prop_assert!(survivors >= model.synced);
                    model.entries.truncate(survivors);
                    model.synced = survivors;
                    model.published = model.end_of(model.committed);
                }
                Op::Reopen => {
                    rl.take().unwrap().close().unwrap();
                    rl = Some(ReplicaLog::open(dir.path(), config()).unwrap());
                    model.synced = model.entries.len();
                    model.published = model.end_of(model.committed);
                }
            }
            check(rl.as_ref().unwrap(), &model)?;
        }
    }
}

#[test]
fn a_follower_refuses_a_batch_stamped_for_another_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut rl = ReplicaLog::open(dir.path(), config()).unwrap();
    let id = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
    rl.append([Entry::<PartTypes> {
        log_id: id(0),
        payload: EntryPayload::Normal(PartBatch::proposal(batch_of(1, 3, 10))),
    }])
    .unwrap();
    let error = rl
        .append([Entry::<PartTypes> {
            log_id: id(1),
            payload: EntryPayload::Normal(PartBatch::stored(1, batch_of(2, 1, 10))),
        }])
        .unwrap_err();
    assert!(error.to_string().contains("diverged"), "{error}");
    assert_eq!(rl.next_offset(), 3);
    // A damaged batch is refused too.
    let mut damaged = batch_of(3, 1, 10);
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    assert!(
        rl.append([Entry::<PartTypes> {
            log_id: id(1),
            payload: EntryPayload::Normal(PartBatch::proposal(damaged)),
        }])
        .is_err()
    );
}

#[test]
fn an_open_refuses_a_journal_that_lost_committed_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut rl = ReplicaLog::open(dir.path(), config()).unwrap();
    let id = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
    for i in 0..3 {
        rl.append([Entry::<PartTypes> {
            log_id: id(i),
            payload: EntryPayload::Normal(PartBatch::proposal(batch_of(i as u32, 2, 10))),
        }])
        .unwrap();
    }
    rl.sync().unwrap();
    rl.set_committed(Some(id(2)));
    rl.save_state().unwrap();
    rl.close().unwrap();
    OpenOptions::new()
        .write(true)
        .open(dir.path().join(JOURNAL_FILE))
        .unwrap()
        .set_len(RECORD_BYTES as u64)
        .unwrap();
    let error = ReplicaLog::open(dir.path(), config()).err().unwrap();
    assert!(error.to_string().contains("committed"), "{error}");
}
