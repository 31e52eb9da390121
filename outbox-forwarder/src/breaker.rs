//! The circuit breaker: stops hammering a sink that keeps failing, probes
//! it now and then, and closes again when a probe succeeds.

use std::time::Duration;

use outbox_core::Timestamp;

/// Circuit breaker settings.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BreakerConfig {
    /// Consecutive failed deliveries that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit first stays open before a probe.
    pub open_for: Duration,
    /// The longest it stays open (the open time doubles after each failed
    /// probe, up to this).
    pub max_open_for: Duration,
    /// A `publish` call slower than this counts as a failure (a sink
    /// lagging this far behind is as good as down).
    pub slow_call: Duration,
}

impl Default for BreakerConfig {
    /// 5 failures, open 1 s doubling to 30 s, 5 s slow-call threshold.
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(30),
            slow_call: Duration::from_secs(5),
        }
    }
}

/// Where the breaker stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BreakerState {
    /// Delivering normally.
    Closed,
    /// Not delivering until `until`.
    Open {
        /// When a probe is next allowed.
        until: Timestamp,
    },
    /// Letting one probe event through.
    HalfOpen,
}

/// What the breaker allows now.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Permit {
    /// A full batch.
    All,
    /// One probe event.
    Probe,
    /// Nothing until the given time.
    Wait(Timestamp),
}

/// The breaker's state machine. Pure: time comes in as arguments.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    cfg: BreakerConfig,
    state: BreakerState,
    failures: u32,
    open_for: Duration,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        CircuitBreaker { cfg, state: BreakerState::Closed, failures: 0, open_for: cfg.open_for }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether the circuit is open (or probing).
    pub fn is_open(&self) -> bool {
        !matches!(self.state, BreakerState::Closed)
    }

    /// What may be delivered at `now`; an open circuit whose time is up
    /// moves to half-open.
    pub fn permit(&mut self, now: Timestamp) -> Permit {
        match self.state {
            BreakerState::Closed => Permit::All,
            BreakerState::HalfOpen => Permit::Probe,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                Permit::Probe
            }
            BreakerState::Open { until } => Permit::Wait(until),
        }
    }

    /// A delivery succeeded: the circuit closes.
    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed;
        self.failures = 0;
        self.open_for = self.cfg.open_for;
    }

    /// A delivery failed (or was too slow) at `now`.
    pub fn on_failure(&mut self, now: Timestamp) {
        match self.state {
            BreakerState::HalfOpen => {
                self.state = BreakerState::Open { until: now.saturating_add(self.open_for) };
                self.open_for = (self.open_for * 2).min(self.cfg.max_open_for);
            }
            BreakerState::Closed => {
                self.failures += 1;
                if self.failures >= self.cfg.failure_threshold.max(1) {
                    self.state = BreakerState::Open { until: now.saturating_add(self.open_for) };
                    self.open_for = (self.open_for * 2).min(self.cfg.max_open_for);
                }
            }
            BreakerState::Open { .. } => {}
        }
    }

    /// The sink is said to be reachable again: probe at once.
    pub fn online(&mut self) {
        if self.is_open() {
            self.state = BreakerState::HalfOpen;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_millis(100),
            max_open_for: Duration::from_millis(300),
            slow_call: Duration::from_secs(1),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_probes_and_closes() {
        let mut b = CircuitBreaker::new(cfg());
        b.on_failure(t(0));
        b.on_failure(t(0));
        b.on_success();
        b.on_failure(t(0));
        b.on_failure(t(0));
        assert_eq!(b.permit(t(0)), Permit::All, "a success resets the count");
        b.on_failure(t(10));
        assert_eq!(b.state(), BreakerState::Open { until: t(110) });
        assert_eq!(b.permit(t(109)), Permit::Wait(t(110)));
        assert_eq!(b.permit(t(110)), Permit::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn failed_probes_double_the_open_time_up_to_the_cap() {
        let mut b = CircuitBreaker::new(cfg());
        for _ in 0..3 {
            b.on_failure(t(0));
        }
        assert_eq!(b.state(), BreakerState::Open { until: t(100) });
        assert_eq!(b.permit(t(100)), Permit::Probe);
        b.on_failure(t(100));
        assert_eq!(b.state(), BreakerState::Open { until: t(300) }, "200 ms after the first failed probe");
        assert_eq!(b.permit(t(300)), Permit::Probe);
        b.on_failure(t(300));
        assert_eq!(b.state(), BreakerState::Open { until: t(600) }, "capped at 300 ms");
        b.online();
        assert_eq!(b.permit(t(301)), Permit::Probe, "online() probes at once");
        b.on_success();
        for _ in 0..3 {
            b.on_failure(t(1000));
        }
        assert_eq!(b.state(), BreakerState::Open { until: t(1100) }, "a success resets the open time");
    }
}
