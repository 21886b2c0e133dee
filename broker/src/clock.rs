//! The wall clock in milliseconds since the Unix epoch, the unit record timestamps,
//! retention and group deadlines use. One function, so every layer (storage included) reads
//! time the same way and no module has to import a higher one just to learn the time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 if the system clock is set before 1970.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
