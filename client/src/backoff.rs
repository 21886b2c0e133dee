//! Waits between retries and reconnects: exponential from a first delay to a cap, each
//! with random jitter (up to as much again), so clients that failed together (a broker
//! restart) do not all come back in the same instant.

use std::time::Duration;

use backon::BackoffBuilder;

/// The waits, in order: `first`, about twice that, and so on up to `max`, each plus a
/// random part of itself; never ends.
pub(crate) fn delays(first: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max.max(first))
        .with_jitter()
        .without_max_times()
        .build()
}

/// The wait before retry number `attempt` (0 for the first).
pub(crate) fn nth(first: Duration, max: Duration, attempt: u32) -> Duration {
    delays(first, max).nth(attempt as usize).unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_to_the_cap_with_jitter() {
        let (first, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let waits: Vec<Duration> = delays(first, max).take(12).collect();
        for (i, wait) in waits.iter().enumerate() {
            let base = first.saturating_mul(1 << i.min(16)).min(max);
            // Jitter adds up to the base again, never takes anything off.
            assert!(
                *wait >= base && *wait <= base * 2,
                "wait {i}: {wait:?}, base {base:?}"
            );
        }
        // Two sequences differ: the jitter is random.
        let again: Vec<Duration> = delays(first, max).take(12).collect();
        assert_ne!(waits, again);
        assert!(nth(first, max, 40) <= max * 2);
    }
}
