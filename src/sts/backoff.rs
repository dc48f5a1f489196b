//! Back-off after STS failures: how long a cache key's failure is answered
//! again without a call, and how long the whole client keeps away from STS
//! after a throttling answer.
//!
//! Both grow exponentially from `initial` to `max` with consecutive failures,
//! are jittered (so that keys and replicas do not come back in lock-step) and
//! start over after a success.

use std::sync::Mutex;
use std::time::Duration;

use rand::Rng as _;
use tokio::time::Instant;

use super::StsError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failure (a zero turns back-off off).
    pub initial: Duration,
    /// Longest wait, however many failures in a row.
    pub max: Duration,
}

impl Backoff {
    /// `failure_backoff` .. `failure_backoff_max` of `[sts]`, for the cache and the client.
    pub fn from_config(cfg: &crate::config::StsConfig) -> Backoff {
        Backoff {
            initial: cfg.failure_backoff,
            max: cfg.failure_backoff_max,
        }
    }

    /// No back-off: every miss calls STS.
    pub const OFF: Backoff = Backoff {
        initial: Duration::ZERO,
        max: Duration::ZERO,
    };

    pub fn is_off(&self) -> bool {
        self.initial.is_zero()
    }

    /// The upper bound of the wait after the `streak`-th failure in a row
    /// (1 = the first): `initial`, doubled per failure, at most `max`.
    pub fn ceiling(&self, streak: u32) -> Duration {
        let doublings = streak.saturating_sub(1).min(20);
        self.initial
            .saturating_mul(1 << doublings)
            .min(self.max.max(self.initial))
    }

    /// The wait after the `streak`-th failure in a row: between half the
    /// [`ceiling`](Self::ceiling) and all of it.
    pub fn delay(&self, streak: u32) -> Duration {
        let cap = self.ceiling(streak).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(cap / 2..=cap))
    }
}

/// The client-wide "not before" instant: after a throttling answer no attempt,
/// for any key or caller, goes to STS until it has passed.
pub(crate) struct Gate {
    backoff: Backoff,
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    not_before: Option<Instant>,
    /// Throttling answers in a row.
    streak: u32,
    /// The throttling answer that closed the gate, given to callers turned away.
    cause: Option<StsError>,
}

impl Gate {
    pub(crate) fn new(backoff: Backoff) -> Self {
        Gate {
            backoff,
            state: Mutex::new(GateState::default()),
        }
    }

    /// While closed: how long it stays closed, and why.
    pub(crate) fn closed(&self, now: Instant) -> Option<(Duration, StsError)> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let not_before = s.not_before.filter(|t| *t > now)?;
        Some((not_before - now, s.cause.clone()?))
    }

    /// STS throttled an attempt: closes the gate for the next back-off step.
    /// Answers to attempts made before it closed do not grow the wait again.
    pub(crate) fn throttled(&self, now: Instant, cause: &StsError) {
        if self.backoff.is_off() {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.not_before.is_some_and(|t| t > now) {
            return;
        }
        s.streak = s.streak.saturating_add(1);
        s.not_before = Some(now + self.backoff.delay(s.streak));
        s.cause = Some(cause.clone().into_cause());
    }

    /// STS answered: the client may call freely again.
    pub(crate) fn answered(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.streak != 0 || s.not_before.is_some() {
            *s = GateState::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };

    #[test]
    fn grows_from_initial_to_max_with_jitter() {
        assert_eq!(B.ceiling(1), Duration::from_secs(1));
        assert_eq!(B.ceiling(2), Duration::from_secs(2));
        assert_eq!(B.ceiling(5), Duration::from_secs(16));
        assert_eq!(B.ceiling(6), Duration::from_secs(30));
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(30));
        for streak in 1..10 {
            for _ in 0..50 {
                let d = B.delay(streak);
                assert!(
                    d <= B.ceiling(streak) && d * 2 >= B.ceiling(streak),
                    "{streak}: {d:?}"
                );
            }
        }
        assert_eq!(Backoff::OFF.delay(3), Duration::ZERO);
    }

    fn throttling() -> StsError {
        StsError::Api {
            status: 400,
            code: "Throttling.User".into(),
            message: String::new(),
            request_id: None,
        }
    }

    #[test]
    fn gate_closes_on_throttling_grows_and_opens_on_an_answer() {
        let gate = Gate::new(B);
        let t0 = Instant::now();
        assert!(gate.closed(t0).is_none());
        gate.throttled(t0, &throttling());
        let (wait, cause) = gate.closed(t0).unwrap();
        assert!(
            wait >= Duration::from_millis(500) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(cause.sts_code(), Some("Throttling.User"));
        // More throttling answers to attempts already under way do not push it further.
        gate.throttled(t0 + Duration::from_millis(100), &throttling());
        assert_eq!(gate.closed(t0).unwrap().0, wait);
        // Once open, the next throttling answer closes it for longer.
        let t1 = t0 + wait;
        assert!(gate.closed(t1).is_none());
        gate.throttled(t1, &throttling());
        let (wait2, _) = gate.closed(t1).unwrap();
        assert!(
            wait2 >= Duration::from_secs(1) && wait2 <= Duration::from_secs(2),
            "{wait2:?}"
        );
        gate.answered();
        assert!(gate.closed(t1).is_none());
        gate.throttled(t1, &throttling());
        assert!(
            gate.closed(t1).unwrap().0 <= Duration::from_secs(1),
            "started over"
        );
    }

    #[test]
    fn gate_off_never_closes() {
        let gate = Gate::new(Backoff::OFF);
        gate.throttled(Instant::now(), &throttling());
        assert!(gate.closed(Instant::now()).is_none());
    }
}
