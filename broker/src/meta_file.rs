//! Checksummed metadata files: the on-disk form of `topic.toml` and `group.toml`.
//!
//! A sealed file is a first line `# herald-checksum crc32c=xxxxxxxx` (8 lowercase hex
//! digits: the CRC-32C of every byte after that line) followed by the TOML body. The line
//! is a TOML comment, so the file stays valid TOML that a person can read; damage that
//! still parses (a cut after the last key, a flipped bit in a digit) no longer loads as a
//! different value, it fails the checksum and the file is refused like an unparseable one.
//!
//! A file **without** the line is accepted, so that files written by an earlier Herald
//! load, and so that an operator can edit a file by hand: after a hand edit, delete the
//! checksum line. Such a file must parse strictly (the callers' types refuse unknown keys
//! and need every required key) and end with a newline (a file cut short usually does
//! not: TOML writers end every line with one). It is then sealed in place (written to a
//! temporary file, synced and renamed) by [`reseal`] once the caller has loaded it. A
//! first line that is a comment is always read as a checksum line, so a damaged checksum
//! line never passes for a file without one: comments of a hand edit go lower down.
//!
//! This module knows nothing of what the files mean: callers name the file in their
//! errors and decide when a load succeeded.

use std::path::Path;

use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::error::{BrokerError, Result};

/// What a sealed file's first line starts with; 8 lowercase hex digits and `\n` follow.
pub const CHECKSUM_PREFIX: &str = "# herald-checksum crc32c=";
/// The word of [`CHECKSUM_PREFIX`] that marks a checksum line whose `#` was damaged.
const CHECKSUM_WORD: &[u8] = b"herald-checksum";
/// Hex digits of the checksum.
const CHECKSUM_DIGITS: usize = 8;
/// Characters of a damaged checksum line repeated in an error: enough to recognise it,
/// not a whole file of random bytes on one line.
const SHOWN_LINE_CHARS: usize = 80;

/// Why a metadata file's bytes were refused. The messages say what is wrong; the caller
/// adds which file.
#[derive(Debug, Error)]
pub enum MetaFileError {
    #[error(
        "its first line {line} is not a checksum line (`{CHECKSUM_PREFIX}` and {CHECKSUM_DIGITS} lowercase hex digits); the file is damaged"
    )]
    MalformedChecksumLine { line: String },
    #[error(
        "checksum mismatch: the checksum line says crc32c={stored:08x}, the contents have crc32c={computed:08x}; the file is damaged (after a hand edit, delete the checksum line)"
    )]
    Mismatch { stored: u32, computed: u32 },
    #[error("it is not UTF-8 text")]
    NotUtf8,
    #[error(
        "it has no checksum line and does not end with a newline: it looks cut short (if it was edited by hand, end it with a newline)"
    )]
    UnsealedWithoutNewline,
    #[error("cannot parse it: {0}")]
    Parse(#[source] toml::de::Error),
}

/// A metadata file that passed its checks.
#[derive(Debug)]
pub struct Loaded<T> {
    pub value: T,
    /// The TOML body (the file without its checksum line).
    pub body: String,
    /// Whether the file had its checksum line; one without is to be [`reseal`]ed.
    pub sealed: bool,
}

/// The file's bytes for `body`: the checksum line, then `body`.
pub fn seal(body: &str) -> String {
    let crc = crc32c::crc32c(body.as_bytes());
    format!("{CHECKSUM_PREFIX}{crc:08x}\n{body}")
}

/// Checks a metadata file's bytes and parses its body as `T` (see the module's doc for
/// what is accepted).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<Loaded<T>, MetaFileError> {
    let first_line = &bytes[..memchr::memchr(b'\n', bytes).unwrap_or(bytes.len())];
    let (body, sealed) = if bytes.first() == Some(&b'#') {
        let stored = checksum_in(first_line)
            .filter(|_| first_line.len() < bytes.len())
            .ok_or_else(|| malformed(first_line))?;
        // After the line's newline (checked just above); an empty body is checked like
        // any other.
        let body = &bytes[first_line.len() + 1..];
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(MetaFileError::Mismatch { stored, computed });
        }
        (body, true)
    } else {
        // A checksum line whose `#` was damaged: refused here, whatever `T` would make of
        // it, so no single flipped bit of a sealed file passes for a file without the line.
        if memchr::memmem::find(first_line, CHECKSUM_WORD).is_some() {
            return Err(malformed(first_line));
        }
        if bytes.last() != Some(&b'\n') {
            return Err(MetaFileError::UnsealedWithoutNewline);
        }
        (bytes, false)
    };
    let body = std::str::from_utf8(body).map_err(|_| MetaFileError::NotUtf8)?;
    let value = toml::from_str(body).map_err(MetaFileError::Parse)?;
    Ok(Loaded {
        value,
        body: body.to_owned(),
        sealed,
    })
}

/// The checksum a well-formed checksum line (without its `\n`) holds. Only the exact form
/// `seal` writes is accepted (lowercase digits, nothing after them, a newline after the
/// line), so a flipped bit anywhere in the line is refused or changes the value.
fn checksum_in(bytes_to_newline: &[u8]) -> Option<u32> {
    let digits = bytes_to_newline.strip_prefix(CHECKSUM_PREFIX.as_bytes())?;
    let well_formed = digits.len() == CHECKSUM_DIGITS
        && digits
            .iter()
            .all(|d| d.is_ascii_digit() || (b'a'..=b'f').contains(d));
    if !well_formed {
        return None;
    }
    let digits = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(digits, 16).ok()
}

fn malformed(first_line: &[u8]) -> MetaFileError {
    let line = String::from_utf8_lossy(first_line);
    let line = match line.char_indices().nth(SHOWN_LINE_CHARS) {
        None => format!("{line:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &line[..cut], first_line.len()),
    };
    MetaFileError::MalformedChecksumLine { line }
}

/// Writes `body` sealed as `dir/name`, replacing the file atomically: a temporary file,
/// synced, renamed over it, the directory synced. A crash leaves the old file or the new
/// one, never a mix. Blocking.
pub fn write_sealed_atomic(dir: &Path, name: &str, body: &str) -> Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)
        .map_err(|e| BrokerError::io(format!("creating {}", tmp.display()), e))?;
    file.write_all(seal(body).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| BrokerError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, dir.join(name))
        .map_err(|e| BrokerError::io(format!("renaming {}", tmp.display()), e))?;
    crate::storage::sync_dir(dir)?;
    Ok(())
}

/// Seals `dir/name`, a file without a checksum line that the caller loaded (an earlier
/// Herald's, or one edited by hand), with its body as it was. A failure is logged, not
/// returned: the file is whole and loads again next time, only still without its check.
/// Blocking.
pub fn reseal(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    match write_sealed_atomic(dir, name, body) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), "a metadata file had no checksum line (written by an earlier Herald, or edited by hand); loaded and sealed")
        }
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "a metadata file without a checksum line was loaded but could not be sealed; it stays unchecked until the next start")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// Shaped like the real files: required keys, unknown keys refused, a table.
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Meta {
        name: String,
        partitions: u32,
        created_ms: i64,
        #[serde(default)]
        settings: Settings,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    }

    const BODY: &str = "name = \"orders\"\npartitions = 4\ncreated_ms = 1700000000123\n\n[settings]\nretention_ms = 604800000\nretention_bytes = 1073741824\n";

    fn want() -> Meta {
        Meta {
            name: "orders".into(),
            partitions: 4,
            created_ms: 1_700_000_000_123,
            settings: Settings {
                retention_ms: Some(604_800_000),
                retention_bytes: Some(1 << 30),
            },
        }
    }

    #[test]
    fn a_sealed_file_round_trips() {
        let sealed = seal(BODY);
        let (first, rest) = sealed.split_once('\n').unwrap();
        assert_eq!(first.len(), CHECKSUM_PREFIX.len() + CHECKSUM_DIGITS);
        assert_eq!(rest, BODY);
        // Still TOML: the checksum line is a comment.
        assert_eq!(toml::from_str::<Meta>(&sealed).unwrap(), want());
        let loaded = parse::<Meta>(sealed.as_bytes()).unwrap();
        assert_eq!(loaded.value, want());
        assert_eq!(loaded.body, BODY);
        assert!(loaded.sealed);
    }

    #[test]
    fn every_single_bit_flip_of_a_sealed_file_is_refused() {
        let sealed = seal(BODY).into_bytes();
        for bit in 0..sealed.len() * 8 {
            let mut damaged = sealed.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            if let Ok(loaded) = parse::<Meta>(&damaged) {
                panic!(
                    "bit {bit} flipped, loaded {:?} from {:?}",
                    loaded.value,
                    String::from_utf8_lossy(&damaged)
                );
            }
        }
    }

    #[test]
    fn every_truncation_of_a_sealed_file_is_refused() {
        let sealed = seal(BODY).into_bytes();
        for len in 0..sealed.len() {
            assert!(
                parse::<Meta>(&sealed[..len]).is_err(),
                "cut to {len} bytes: loaded"
            );
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let sealed = seal(BODY);
        let digit = sealed.find("= 4").unwrap() + 2;
        let mut damaged = sealed.clone().into_bytes();
        damaged[digit] = b'5';
        let error = parse::<Meta>(&damaged).unwrap_err().to_string();
        let stored = format!("crc32c={:08x}", crc32c::crc32c(BODY.as_bytes()));
        let computed = format!(
            "crc32c={:08x}",
            crc32c::crc32c(&damaged[sealed.find('\n').unwrap() + 1..])
        );
        assert!(error.contains("checksum mismatch"), "{error}");
        assert!(
            error.contains(&stored) && error.contains(&computed),
            "{error}"
        );
        assert!(error.contains("delete the checksum line"), "{error}");

        for line in [
            "# herald-checksum crc32c=1234567",
            "# herald-checksum crc32c=123456789",
            "# herald-checksum crc32c=ABCDEF01",
            "# herald-checksum crc32=12345678",
            "# a comment of a hand edit",
        ] {
            let text = format!("{line}\n{BODY}");
            let error = parse::<Meta>(text.as_bytes()).unwrap_err().to_string();
            assert!(error.contains("is not a checksum line"), "{line}: {error}");
            assert!(error.contains(line), "{line}: {error}");
        }
        let error = parse::<Meta>(b"# herald-checksum crc32c=12345678")
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not a checksum line"), "{error}");
        let error = parse::<Meta>(format!("{BODY}oops = 1\n").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("cannot parse it: "), "{error}");
    }

    #[test]
    fn a_file_without_the_line_that_parses_and_ends_with_a_newline_is_accepted_unsealed() {
        let loaded = parse::<Meta>(BODY.as_bytes()).unwrap();
        assert_eq!(loaded.value, want());
        assert_eq!(loaded.body, BODY);
        assert!(!loaded.sealed);
        // Sealing it keeps the body as it was.
        let resealed = seal(&loaded.body);
        let again = parse::<Meta>(resealed.as_bytes()).unwrap();
        assert!(again.sealed);
        assert_eq!(again.value, want());
    }

    #[test]
    fn a_file_without_the_line_cut_short_is_refused() {
        // Cut after the last key's value: still parses, but has lost its newline (and
        // here a digit: 107374 instead of 1073741824).
        for cut in [BODY.len() - 1, BODY.len() - 5] {
            let error = parse::<Meta>(&BODY.as_bytes()[..cut])
                .unwrap_err()
                .to_string();
            assert!(error.contains("does not end with a newline"), "{error}");
        }
        // Every cut that is not at a line's end is refused.
        for cut in 0..BODY.len() {
            let bytes = &BODY.as_bytes()[..cut];
            if bytes.last() != Some(&b'\n') {
                assert!(parse::<Meta>(bytes).is_err(), "cut to {cut} bytes: loaded");
            }
        }
        // A damaged `#` of a checksum line does not turn the file into an unsealed one.
        let mut damaged = seal(BODY).into_bytes();
        damaged[0] = b'c';
        let error = parse::<Meta>(&damaged).unwrap_err().to_string();
        assert!(error.contains("is not a checksum line"), "{error}");
    }

    #[test]
    fn write_sealed_atomic_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("topic.toml"), BODY).unwrap();
        write_sealed_atomic(dir.path(), "topic.toml", BODY).unwrap();
        let bytes = std::fs::read(dir.path().join("topic.toml")).unwrap();
        assert_eq!(bytes, seal(BODY).into_bytes());
        assert!(!dir.path().join("topic.toml.tmp").exists());
        reseal(dir.path(), "other.toml", BODY);
        let loaded = parse::<Meta>(&std::fs::read(dir.path().join("other.toml")).unwrap());
        assert!(loaded.unwrap().sealed);
    }
}
