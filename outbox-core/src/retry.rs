//! Retry math: exponential backoff with full jitter and a cap, and the
//! retry horizon that inbox retention is derived from.

use std::collections::BTreeMap;
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
    /// 100 ms base, 60 s cap.
    fn default() -> Self {
        Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(60) }
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

/// When to give up on an event that keeps failing with a transient error.
/// The default gives up never: both limits are opt-in.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RetryLimits {
    /// Counted attempts (the first included) after which the event is
    /// dead-lettered. Attempts made while the circuit breaker is open or
    /// the platform is offline are not counted.
    pub max_attempts: Option<u32>,
    /// Age (since commit) after which a failing event is dead-lettered.
    pub max_age: Option<Duration>,
}

impl RetryLimits {
    /// No limit: retry until delivered (the default).
    pub const NEVER: RetryLimits = RetryLimits { max_attempts: None, max_age: None };

    /// Gives up after `n` counted attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Gives up on events older than `age`.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Why an event with `attempts` counted attempts, `age` old, is given
    /// up on, or `None` if it may be retried.
    pub fn exceeded(&self, attempts: u32, age: Duration) -> Option<GiveUp> {
        if let Some(max) = self.max_attempts
            && attempts >= max
        {
            return Some(GiveUp::Attempts(max));
        }
        if let Some(max) = self.max_age
            && age >= max
        {
            return Some(GiveUp::Age(max));
        }
        None
    }

    /// How long an event can keep being retried after its first attempt
    /// under these limits (`None`: without bound).
    fn horizon(&self, backoff: &Backoff, lease: Duration) -> Option<Duration> {
        let by_attempts = self.max_attempts.map(|n| {
            let n = n.max(1);
            let waits = (1..n).fold(Duration::ZERO, |acc, f| acc.saturating_add(backoff.ceiling(f)));
            waits.saturating_add(lease.saturating_mul(n))
        });
        let by_age = self.max_age.map(|a| a.saturating_add(backoff.cap).saturating_add(lease));
        match (by_attempts, by_age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Which opt-in limit an event reached.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GiveUp {
    /// `max_attempts` counted attempts were made.
    Attempts(u32),
    /// The event is older than `max_age`.
    Age(Duration),
}

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GiveUp::Attempts(n) => write!(f, "gave up after {n} attempts"),
            GiveUp::Age(a) => write!(f, "gave up: older than {a:?}"),
        }
    }
}

/// How failed deliveries are retried, and when (if ever) an event is
/// given up on.
///
/// The default retries transient failures (`Retriable`, `RetryAfter`)
/// until delivered, with full-jitter backoff from 100 ms capped at 60 s;
/// only `NonRetriable` dead-letters. Limits are opt-in, for all events or
/// per event type:
///
/// ```
/// use std::time::Duration;
/// use outbox_core::retry::{RetryLimits, RetryPolicy};
///
/// let policy = RetryPolicy::default()
///     .cap(Duration::from_secs(30))
///     // A typing indicator is worthless after a minute...
///     .for_type("TYPING", RetryLimits::default().max_age(Duration::from_secs(60)))
///     // ...an order is retried until delivered (the default).
///     ;
/// assert_eq!(policy.limits_for("TYPING").max_age, Some(Duration::from_secs(60)));
/// assert_eq!(policy.limits_for("ORDER_PLACED"), RetryLimits::NEVER);
/// ```
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct RetryPolicy {
    /// The delays between attempts.
    pub backoff: Backoff,
    /// The limits of every event type without its own.
    pub limits: RetryLimits,
    /// Limits of particular event types.
    pub per_type: BTreeMap<String, RetryLimits>,
}

impl RetryPolicy {
    /// Retries until delivered with `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        RetryPolicy { backoff, ..RetryPolicy::default() }
    }

    /// Sets the backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the longest delay between attempts.
    pub fn cap(mut self, cap: Duration) -> Self {
        self.backoff.cap = cap;
        self
    }

    /// Opt-in: dead-letter an event after `n` counted attempts (for event
    /// types without their own limits).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.limits.max_attempts = Some(n);
        self
    }

    /// Opt-in: dead-letter a failing event older than `age` (for event
    /// types without their own limits).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.limits.max_age = Some(age);
        self
    }

    /// Limits for events of `event_type` ([`RetryLimits::NEVER`]: retried
    /// until delivered, whatever the default limits say).
    pub fn for_type(mut self, event_type: impl Into<String>, limits: RetryLimits) -> Self {
        self.per_type.insert(event_type.into(), limits);
        self
    }

    /// The limits that apply to `event_type`.
    pub fn limits_for(&self, event_type: &str) -> RetryLimits {
        self.per_type.get(event_type).copied().unwrap_or(self.limits)
    }

    /// Whether an event of `event_type` that has made `attempts` counted
    /// attempts and is `age` old is given up on, and why.
    pub fn gives_up(&self, event_type: &str, attempts: u32, age: Duration) -> Option<GiveUp> {
        self.limits_for(event_type).exceeded(attempts, age)
    }

    /// The longest an event can stay undelivered-but-retrying after its
    /// first attempt: for an attempt limit, every backoff ceiling plus one
    /// `lease` per attempt (an attempt may hold its lease to the end before
    /// failing); for an age limit, the age plus the cap and a lease. `None`
    /// when some events are retried without bound (the default).
    ///
    /// A consumer must keep its inbox marks at least this long after
    /// processing; a redelivery later than this cannot come from retries.
    pub fn horizon(&self, lease: Duration) -> Option<Duration> {
        let mut worst = self.limits.horizon(&self.backoff, lease)?;
        for limits in self.per_type.values() {
            worst = worst.max(limits.horizon(&self.backoff, lease)?);
        }
        Some(worst)
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
        let p = RetryPolicy::new(Backoff { base: ms(100), cap: ms(300) }).max_attempts(4);
        // waits after failures 1..=3: 100 + 200 + 300; leases: 4 x 50
        assert_eq!(p.horizon(ms(50)), Some(ms(600 + 200)));
        assert_eq!(p.gives_up("T", 3, ms(0)), None);
        assert_eq!(p.gives_up("T", 4, ms(0)), Some(GiveUp::Attempts(4)));
    }

    #[test]
    fn the_default_never_gives_up_and_has_no_horizon() {
        let p = RetryPolicy::default();
        assert_eq!(p.gives_up("T", u32::MAX, Duration::MAX), None);
        assert_eq!(p.horizon(ms(50)), None);
        assert_eq!(p.backoff.cap, Duration::from_secs(60));
    }

    #[test]
    fn per_type_limits_override_the_default() {
        let p = RetryPolicy::default()
            .max_attempts(3)
            .for_type("FOREVER", RetryLimits::NEVER)
            .for_type("SHORT", RetryLimits::default().max_age(ms(1_000)));
        assert_eq!(p.gives_up("OTHER", 3, ms(0)), Some(GiveUp::Attempts(3)));
        assert_eq!(p.gives_up("FOREVER", 1_000, Duration::MAX), None);
        assert_eq!(p.gives_up("SHORT", 1_000, ms(999)), None);
        assert_eq!(p.gives_up("SHORT", 1, ms(1_000)), Some(GiveUp::Age(ms(1_000))));
        assert_eq!(p.horizon(ms(10)), None, "FOREVER is unbounded");
        let bounded = RetryPolicy::default()
            .max_attempts(1)
            .for_type("SHORT", RetryLimits::default().max_age(ms(1_000)));
        assert_eq!(bounded.horizon(ms(10)), Some(ms(1_000) + Duration::from_secs(60) + ms(10)));
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
