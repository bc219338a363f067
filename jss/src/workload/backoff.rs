//! Exponential backoff with jitter for retries against JSS and Vault.

use std::time::Duration;

use rand_core::RngCore as _;

/// Delays doubling from `start` up to `cap`, each shortened by up to 20 %
/// at random so that many pods retrying together spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(start: Duration, cap: Duration) -> Self {
        Self {
            start,
            cap,
            next: start,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next.min(self.cap);
        self.next = (self.next * 2).min(self.cap);
        jitter(d, 0.2)
    }

    /// After a success: start again from the first delay.
    pub fn reset(&mut self) {
        self.next = self.start;
    }
}

/// `d` shortened by a random fraction of at most `max_fraction`.
pub fn jitter(d: Duration, max_fraction: f64) -> Duration {
    let r = (rand_core::OsRng.next_u32() as f64) / (u32::MAX as f64);
    d.mul_f64(1.0 - max_fraction * r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let d: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        for (got, max) in d.iter().zip([1, 2, 4, 5, 5]) {
            let max = Duration::from_secs(max);
            assert!(
                *got <= max && *got >= max.mul_f64(0.8),
                "{got:?} vs {max:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
