//! The offline log tools, `herald log check|dump DIR`, run as the real binary: they open
//! read-only (nothing in the directory is created or changed), refuse a directory that is
//! not a partition log, verify every batch, and exit non-zero on damage.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use herald_broker::storage::batch::{self, BatchBuilder, Record};
use herald_broker::storage::{FsyncPolicy, LogConfig, LogWriter};

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

fn herald(args: &[&str]) -> Output {
    Command::new(HERALD)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("herald runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file of a directory, names and bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// A log of 600 records (6 batches of 100) over several segments.
fn write_log(dir: &Path, clean: bool) {
    let config = LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 512,
        fsync: FsyncPolicy::Always,
        ..LogConfig::default()
    };
    let mut writer = LogWriter::open(dir, config).unwrap();
    for first in (0..600u64).step_by(100) {
        let mut builder = BatchBuilder::default();
        for i in first..first + 100 {
            builder.push(&Record {
                timestamp: i as i64,
                key: Some(b"k"),
                value: format!("record {i} {}", "v".repeat(80)).as_bytes(),
                headers: &[],
            });
        }
        let bytes = builder.finish();
        writer
            .append_and_commit(batch::validate(&bytes, usize::MAX).unwrap())
            .unwrap();
    }
    if clean {
        writer.close().unwrap();
    }
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = files(dir)
        .into_keys()
        .filter(|n| n.len() == 24 && n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_directory_that_is_not_a_partition_log_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    let before = files(dir.path());
    let path = dir.path().to_str().unwrap();
    for args in [vec!["log", "check", path], vec!["log", "dump", path]] {
        let out = herald(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stdout)
        );
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("is not a partition log"),
            "{args:?}: {stderr}"
        );
        assert_eq!(files(dir.path()), before, "{args:?} changed the directory");
    }
    let missing = dir.path().join("nothing-here");
    let out = herald(&["log", "check", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!missing.exists(), "check created the directory");
}

#[test]
fn check_and_dump_a_whole_log_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), true);
    let before = files(dir.path());
    let path = dir.path().to_str().unwrap();
    let out = herald(&["log", "check", path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("offsets 0..600, 6 batches"), "{stdout}");
    let out = herald(&["log", "dump", path, "--from", "150", "--limit", "300"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 300);
    assert!(
        lines[0].starts_with("150\t150\tk\trecord 150 "),
        "{}",
        lines[0]
    );
    assert!(lines[299].starts_with("449\t"), "{}", lines[299]);
    assert_eq!(files(dir.path()), before, "the tools changed the directory");
}

#[test]
fn check_finds_a_flipped_bit_in_a_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), true);
    // The second segment: its one batch holds offsets 100..200.
    let first = dir.path().join(&segments(dir.path())[1]);
    let mut bytes = fs::read(&first).unwrap();
    bytes[5000] ^= 0x01;
    fs::write(&first, &bytes).unwrap();
    let path = dir.path().to_str().unwrap();
    let out = herald(&["log", "check", path]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("DAMAGE: ") && stdout.contains(&first.display().to_string()),
        "{stdout}"
    );
    assert!(stdout.contains("CRC mismatch"), "{stdout}");
    // Dump prints what precedes the damage, then fails naming the file.
    let out = herald(&["log", "dump", path, "--limit", "1000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&first.display().to_string()),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).starts_with("0\t0\tk\trecord 0 "));
}

#[test]
fn check_finds_a_short_active_segment_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), true);
    let active = dir.path().join(segments(dir.path()).pop().unwrap());
    let bytes = fs::read(&active).unwrap();
    let used = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    fs::write(&active, &bytes[..used - 100]).unwrap();
    let out = herald(&["log", "check", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&active.display().to_string()), "{stdout}");
}

#[test]
fn check_reports_a_torn_tail_after_an_unclean_stop_without_failing() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), false);
    let active = dir.path().join(segments(dir.path()).pop().unwrap());
    let mut bytes = fs::read(&active).unwrap();
    // The active segment holds one batch; its length is at byte 8 of its header.
    let used = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    // Half a header: a write the crash interrupted.
    bytes[used..used + 20].fill(0x5a);
    fs::write(&active, &bytes).unwrap();
    let out = herald(&["log", "check", dir.path().to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("torn tail") && stdout.contains("offsets 0..600"),
        "{stdout}"
    );
}
