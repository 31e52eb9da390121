//! Retry math: exponential backoff with full jitter and a cap, and the
//! retry horizon that inbox retention is derived from.

use std::time::Duration;

/// How long a claimed event stays leased by default (the forwarder's
/// `lease`), and so how long a crashed forwarder's batch waits at most.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How long delivered events are kept by default (the forwarder's
/// `retention`): 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Exponential backoff with "full jitter": the delay before attempt `n + 1`
/// is uniform in `[0, min(cap, base * 2^(n-1))]`.
///
/// Full jitter spreads retries of many failing events over the whole window
/// so they do not hit a recovering sink together.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Backoff {
    /// The ceiling after the first failure.
    pub base: Duration,
    /// The largest ceiling.
    pub cap: Duration,
}

impl Default for Backoff {
    /// 100 ms base, 30 s cap.
    fn default() -> Self {
        Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// The largest delay after `failures` failed attempts (`failures >= 1`;
    /// 0 is treated as 1): `min(cap, base * 2^(failures-1))`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let shift = failures.max(1) - 1;
        let factor = 1u32.checked_shl(shift.min(31)).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).unwrap_or(Duration::MAX).min(self.cap)
    }

    /// The delay after `failures` failures, with `unit` a uniform random
    /// number in `[0, 1)` (values outside are clamped).
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
        self.ceiling(failures).mul_f64(unit)
    }
}

/// When to give up on an event.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RetryPolicy {
    /// The delays between attempts.
    pub backoff: Backoff,
    /// Attempts (the first included) before an event is dead-lettered.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// [`Backoff::default`], 10 attempts.
    fn default() -> Self {
        RetryPolicy { backoff: Backoff::default(), max_attempts: 10 }
    }
}

impl RetryPolicy {
    /// Whether an event that has made `attempts` attempts may have another.
    pub fn may_retry(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }

    /// The longest an event can stay undelivered-but-retrying after its
    /// first attempt: every backoff ceiling plus one `lease` per attempt
    /// (an attempt may hold its lease to the end before failing).
    ///
    /// A consumer must keep its inbox marks at least this long after
    /// processing; a redelivery later than this cannot come from retries.
    pub fn horizon(&self, lease: Duration) -> Duration {
        let n = self.max_attempts.max(1);
        let waits = (1..n).fold(Duration::ZERO, |acc, f| acc.saturating_add(self.backoff.ceiling(f)));
        waits.saturating_add(lease.saturating_mul(n))
    }
}

/// A small, seedable pseudo-random generator (SplitMix64) for jitter, so a
/// forwarder's retry schedule is reproducible in tests.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff { base: ms(100), cap: ms(1_000) };
        let c: Vec<_> = (1..=6).map(|n| b.ceiling(n)).collect();
        assert_eq!(c, vec![ms(100), ms(200), ms(400), ms(800), ms(1_000), ms(1_000)]);
        assert_eq!(b.ceiling(0), ms(100));
        assert_eq!(b.ceiling(u32::MAX), ms(1_000), "huge attempt counts do not overflow");
    }

    #[test]
    fn full_jitter_stays_within_ceiling_and_spreads() {
        let b = Backoff::default();
        let mut rng = SplitMix64::new(7);
        let delays: Vec<_> = (0..1_000).map(|_| b.delay(4, rng.next_unit())).collect();
        assert!(delays.iter().all(|d| *d <= b.ceiling(4)));
        let below_half = delays.iter().filter(|d| **d < b.ceiling(4) / 2).count();
        assert!((350..650).contains(&below_half), "uniform spread, got {below_half}/1000 below half");
        assert_eq!(b.delay(3, 0.0), Duration::ZERO);
        assert_eq!(b.delay(3, f64::NAN), Duration::ZERO);
        assert_eq!(b.delay(3, 7.0), b.ceiling(3));
    }

    #[test]
    fn horizon_sums_ceilings_and_leases() {
        let p = RetryPolicy { backoff: Backoff { base: ms(100), cap: ms(300) }, max_attempts: 4 };
        // waits after failures 1..=3: 100 + 200 + 300; leases: 4 x 50
        assert_eq!(p.horizon(ms(50)), ms(600 + 200));
        assert!(p.may_retry(3));
        assert!(!p.may_retry(4));
    }

    #[test]
    fn splitmix_is_deterministic() {
        let a: Vec<_> = (0..5)
            .map({
                let mut r = SplitMix64::new(1);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<_> = (0..5)
            .map({
                let mut r = SplitMix64::new(1);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        let mut r = SplitMix64::new(2);
        assert!((0..1000).all(|_| (0.0..1.0).contains(&r.next_unit())));
    }
}
