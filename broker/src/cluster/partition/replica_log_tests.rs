//! A replica's Raft log against a model: random appends (data, blank, membership),
//! syncs, commits, truncations, purges where retention wants them, and reopens, clean or
//! as after a crash that lost any unsynced part of the journal (a torn record included)
//! and of the segment log.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership};
use proptest::prelude::*;

use super::journal::{JOURNAL_FILE, RECORD_BYTES};
use super::replica_log::{ReplicaLog, SnapshotPointer};
use super::types::{PartBatch, PartTypes};
use crate::cluster::types::{NodeAddr, NodeId};
use crate::storage::batch::{self, BatchBuilder, Record};
use crate::storage::{FsyncPolicy, LogConfig, LogReader, LogWriter};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        fsync: FsyncPolicy::Always,
        // Only a purge applies it (`Op::Purge`): any sealed segment may go.
        retention_bytes: Some(1),
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
    Purge,
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
        2 => Just(Op::Purge),
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
    /// Entries purged (a prefix of the committed ones).
    purged: usize,
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
    // Nothing at or above the purge point is ever deleted; below it, whole segments.
    let start = rl.reader().start_offset();
    prop_assert!(start <= model.end_of(model.purged));
    let want: Vec<(u64, u8)> = model
        .readable()
        .into_iter()
        .filter(|(o, _)| *o >= start)
        .collect();
    prop_assert_eq!(readable(&rl.reader()), want);
    prop_assert!(
        rl.read(0, model.purged as u64, usize::MAX)
            .unwrap()
            .is_empty()
    );
    let got = rl
        .read(model.purged as u64, model.entries.len() as u64, usize::MAX)
        .unwrap();
    prop_assert_eq!(got.len(), model.entries.len() - model.purged);
    let mut at = model.end_of(model.purged);
    for (entry, want) in got.iter().zip(&model.entries[model.purged..]) {
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
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_raft_log_survives_cuts_and_crashes_as_the_model_says(ops in proptest::collection::vec(op(), 1..70)) {
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
                Op::Purge => {
                    if let Some(pointer) = log.retention_pointer(crate::clock::now_ms()) {
                        let upto = pointer.last_log_id.index as usize + 1;
                        prop_assert!(upto <= model.committed && upto > model.purged);
                        prop_assert_eq!(pointer.last_log_id, model.entries[upto - 1].log_id);
                        prop_assert_eq!(pointer.next_offset, model.end_of(upto));
                        log.purge(pointer.last_log_id).unwrap();
                        model.purged = upto;
                    }
                }
                Op::Crash { journal, torn, log: log_keep } => {
                    drop(rl.take());
                    // The journal keeps its synced records and any part of the rest.
                    let unsynced = model.entries.len() - model.synced;
                    let keep_records = model.synced + journal % (unsynced + 1);
                    // The journal file holds the records after the purged ones.
                    let mut keep_bytes = ((keep_records - model.purged) * RECORD_BYTES) as u64;
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

/// A log of `entries` data entries of 2 records (~1 KiB) each, all synced, committed and
/// applied, with retention keeping about 8 KiB (two 4 KiB segments).
fn retained_log(dir: &std::path::Path, entries: u64, term: u64) -> ReplicaLog {
    let config = LogConfig {
        retention_bytes: Some(8192),
        ..config()
    };
    let mut rl = ReplicaLog::open(dir, config).unwrap();
    let id = |i| LogId::new(CommittedLeaderId::new(term, 1), i);
    let ids: Vec<_> = (0..entries).map(id).collect();
    for (i, log_id) in ids.iter().enumerate() {
        let payload = if i % 5 == 4 {
            EntryPayload::Blank
        } else {
            EntryPayload::Normal(PartBatch::proposal(batch_of(i as u32, 2, 500)))
        };
        rl.append([Entry::<PartTypes> {
            log_id: *log_id,
            payload,
        }])
        .unwrap();
    }
    rl.sync().unwrap();
    rl.set_committed(ids.last().copied());
    rl.apply(&ids).unwrap();
    rl
}

fn entry_ids(rl: &ReplicaLog, from: u64, to: u64) -> Vec<(LogId<NodeId>, Option<u64>)> {
    rl.read(from, to, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| {
            let offset = match &e.payload {
                EntryPayload::Normal(b) => b.offset,
                _ => None,
            };
            (e.log_id, offset)
        })
        .collect()
}

#[test]
fn retention_purges_whole_segments_below_its_snapshot_and_a_reopen_starts_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut rl = retained_log(dir.path(), 40, 1);
    let before = readable(&rl.reader());
    let last = rl.last_log_id();
    assert_eq!(rl.start_offset(), 0);
    let pointer = rl.retention_pointer(crate::clock::now_ms()).unwrap();
    assert!(pointer.next_offset > 0);
    // The pointer ends an entry exactly where a segment starts.
    let record = rl.record(pointer.last_log_id.index).unwrap();
    assert_eq!(record.end_offset(), pointer.next_offset);

    rl.purge(pointer.last_log_id).unwrap();
    assert_eq!(rl.start_offset(), pointer.next_offset);
    assert_eq!(rl.reader().start_offset(), pointer.next_offset);
    assert_eq!(rl.snapshot(), Some(&pointer));
    assert_eq!(rl.state().last_purged, Some(pointer.last_log_id));
    assert_eq!(rl.last_log_id(), last);
    let kept: Vec<_> = before
        .iter()
        .copied()
        .filter(|(o, _)| *o >= pointer.next_offset)
        .collect();
    assert_eq!(readable(&rl.reader()), kept);
    // Nothing more to delete until the log grows.
    assert_eq!(rl.retention_pointer(crate::clock::now_ms()), None);
    let next = pointer.last_log_id.index + 1;
    let entries = entry_ids(&rl, next, 40);
    assert_eq!(entries.len() as u64, 40 - next);
    assert!(rl.read(0, next, usize::MAX).unwrap().is_empty());

    // A reopen recovers the same start, snapshot, entries and records, and goes on.
    rl.close().unwrap();
    let mut rl = ReplicaLog::open(dir.path(), config()).unwrap();
    assert_eq!(rl.start_offset(), pointer.next_offset);
    assert_eq!(rl.snapshot(), Some(&pointer));
    assert_eq!(rl.state().last_purged, Some(pointer.last_log_id));
    assert_eq!(rl.last_log_id(), last);
    assert_eq!(entry_ids(&rl, next, 40), entries);
    assert_eq!(readable(&rl.reader()), kept);
    let id = LogId::new(CommittedLeaderId::new(1, 1), 40);
    rl.append([Entry::<PartTypes> {
        log_id: id,
        payload: EntryPayload::Normal(PartBatch::proposal(batch_of(99, 1, 10))),
    }])
    .unwrap();
    rl.sync().unwrap();
    rl.apply(&[id]).unwrap();
    assert_eq!(readable(&rl.reader()).last().unwrap().1, 99);
}

#[test]
fn a_crash_between_the_snapshot_pointer_and_the_journal_rewrite_opens_at_the_pointer() {
    let dir = tempfile::tempdir().unwrap();
    let mut rl = retained_log(dir.path(), 40, 1);
    let pointer = rl.retention_pointer(crate::clock::now_ms()).unwrap();
    let journal = std::fs::read(dir.path().join(JOURNAL_FILE)).unwrap();
    let kept: Vec<_> = readable(&rl.reader())
        .into_iter()
        .filter(|(o, _)| *o >= pointer.next_offset)
        .collect();
    rl.purge(pointer.last_log_id).unwrap();
    rl.close().unwrap();
    // As if the purge stopped after writing the pointer: the whole old journal is back.
    std::fs::write(dir.path().join(JOURNAL_FILE), &journal).unwrap();
    let rl = ReplicaLog::open(dir.path(), config()).unwrap();
    assert_eq!(rl.snapshot(), Some(&pointer));
    assert!(rl.record(pointer.last_log_id.index).is_none());
    assert!(rl.record(pointer.last_log_id.index + 1).is_some());
    assert_eq!(readable(&rl.reader()), kept);
    // The file was rewritten without the forgotten records.
    let len = std::fs::metadata(dir.path().join(JOURNAL_FILE))
        .unwrap()
        .len();
    assert_eq!(len, (39 - pointer.last_log_id.index) * RECORD_BYTES as u64);
}

/// A leader's log of 40 entries (term 2) purged where retention wants it to start, with
/// its directory and the snapshot pointer it purged to: what the install tests install.
fn purged_leader() -> (tempfile::TempDir, ReplicaLog, SnapshotPointer) {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = retained_log(dir.path(), 40, 2);
    let pointer = leader.retention_pointer(crate::clock::now_ms()).unwrap();
    leader.purge(pointer.last_log_id).unwrap();
    (dir, leader, pointer)
}

#[test]
fn installing_a_snapshot_discards_a_lagging_log_and_goes_on_at_its_offset() {
    let (_leader_dir, leader, pointer) = purged_leader();
    let next = pointer.last_log_id.index + 1;

    // A follower that holds only the first entries (of an older term, so they diverge
    // from the leader's), and one that lost its directory.
    let lagging = tempfile::tempdir().unwrap();
    drop(retained_log(lagging.path(), 3, 1));
    let empty = tempfile::tempdir().unwrap();
    for dir in [lagging.path(), empty.path()] {
        let mut rl = ReplicaLog::open(dir, config()).unwrap();
        rl.install(pointer.clone()).unwrap();
        assert_eq!(rl.next_offset(), pointer.next_offset);
        assert_eq!(rl.start_offset(), pointer.next_offset);
        assert_eq!(rl.high_watermark(), pointer.next_offset);
        assert_eq!(rl.last_log_id(), Some(pointer.last_log_id));
        assert_eq!(rl.state().last_purged, Some(pointer.last_log_id));
        assert_eq!(
            rl.membership_at(Some(pointer.last_log_id.index)),
            pointer.membership
        );
        assert!(readable(&rl.reader()).is_empty());
        // The rest comes by replication, stamped with the leader's offsets.
        let entries = leader.read(next, 40, usize::MAX).unwrap();
        let ids: Vec<_> = entries.iter().map(|e| e.log_id).collect();
        rl.append(entries).unwrap();
        rl.sync().unwrap();
        rl.set_committed(ids.last().copied());
        rl.apply(&ids).unwrap();
        assert_eq!(readable(&rl.reader()), readable(&leader.reader()));
        assert_eq!(entry_ids(&rl, next, 40), entry_ids(&leader, next, 40));
        rl.close().unwrap();
        let rl = ReplicaLog::open(dir, config()).unwrap();
        assert_eq!(rl.start_offset(), pointer.next_offset);
        assert_eq!(readable(&rl.reader()), readable(&leader.reader()));
        assert_eq!(entry_ids(&rl, next, 40), entry_ids(&leader, next, 40));
    }
}

#[test]
fn a_crash_during_an_install_starts_the_log_again_at_the_pointer_on_open() {
    let (_leader_dir, _leader, pointer) = purged_leader();
    let dir = tempfile::tempdir().unwrap();
    retained_log(dir.path(), 3, 1).close().unwrap();
    // The install wrote its pointer, then stopped.
    crate::cluster::state_machine::write_checked(
        dir.path(),
        super::replica_log::SNAPSHOT_FILE,
        &pointer,
    )
    .unwrap();
    let rl = ReplicaLog::open(dir.path(), config()).unwrap();
    assert_eq!(rl.start_offset(), pointer.next_offset);
    assert_eq!(rl.next_offset(), pointer.next_offset);
    assert_eq!(rl.last_log_id(), Some(pointer.last_log_id));
    assert!(rl.record(2).is_none());
}

#[test]
fn installing_a_snapshot_whose_entry_the_log_holds_keeps_the_entries_after_it() {
    let (_leader_dir, leader, pointer) = purged_leader();
    let next = pointer.last_log_id.index + 1;

    // A follower that holds every entry the leader appended (the same bytes at the same
    // offsets) but applied none of them.
    let dir = tempfile::tempdir().unwrap();
    let full_dir = tempfile::tempdir().unwrap();
    let full = retained_log(full_dir.path(), 40, 2);
    let mut rl = ReplicaLog::open(dir.path(), config()).unwrap();
    rl.append(full.read(0, 40, usize::MAX).unwrap()).unwrap();
    rl.sync().unwrap();
    assert_eq!(rl.high_watermark(), 0);
    rl.install(pointer.clone()).unwrap();
    // Readers see up to the pointer's offset, the segments below it are gone, and the
    // entries after it stay, unapplied.
    assert_eq!(rl.high_watermark(), pointer.next_offset);
    assert_eq!(rl.start_offset(), pointer.next_offset);
    assert_eq!(rl.last_log_id(), full.last_log_id());
    assert_eq!(entry_ids(&rl, next, 40), entry_ids(&leader, next, 40));
    let ids: Vec<_> = (next..40).map(|i| rl.record(i).unwrap().log_id).collect();
    rl.set_committed(ids.last().copied());
    rl.apply(&ids).unwrap();
    assert_eq!(readable(&rl.reader()), readable(&leader.reader()));
    // A later purge up to the same pointer, as openraft sends after an install, is a
    // no-op.
    rl.purge(pointer.last_log_id).unwrap();
    assert_eq!(readable(&rl.reader()), readable(&leader.reader()));
}
