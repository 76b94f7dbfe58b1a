//! Passive ejection (a circuit breaker per peer): `failures` connect failures in a row take a
//! peer out of selection for `cooldown`. After the cool-down the peer is half-open: one
//! success brings it back, one more failure takes it out again.
//!
//! The clock is passed in, so the state machine is tested here without sleeping.

use crate::config;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

pub(crate) struct Ejection {
    /// `None`: passive ejection is off.
    policy: Option<config::Ejection>,
    /// False while the peer has no failure streak and is not ejected: the request path then
    /// takes no lock.
    troubled: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    streak: u32,
    ejected_until: Option<Instant>,
}

impl Ejection {
    pub(crate) fn new(policy: Option<config::Ejection>) -> Ejection {
        Ejection {
            policy,
            troubled: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.troubled.load(Relaxed)
            && self
                .state
                .lock()
                .is_ok_and(|s| s.ejected_until.is_some_and(|until| now < until))
    }

    /// Counts a connect failure. Returns the streak when this failure takes the peer out
    /// (and it was not out already), for the one log line per ejection.
    pub(crate) fn failure(&self, now: Instant) -> Option<u32> {
        let policy = self.policy?;
        let mut s = self.state.lock().ok()?;
        self.troubled.store(true, Relaxed);
        s.streak += 1;
        if s.streak < policy.failures {
            return None;
        }
        let streak = s.streak;
        let was_out = s.ejected_until.is_some_and(|until| now < until);
        s.ejected_until = Some(now + policy.cooldown);
        // Half-open after the cool-down: the next failure alone ejects again.
        s.streak = policy.failures - 1;
        (!was_out).then_some(streak)
    }

    /// A connection was made: the streak ends. Returns whether the peer had been ejected
    /// (it is back in rotation).
    pub(crate) fn success(&self) -> bool {
        if !self.troubled.load(Relaxed) {
            return false;
        }
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        self.troubled.store(false, Relaxed);
        s.streak = 0;
        s.ejected_until.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn three_in_a_row() -> Ejection {
        Ejection::new(Some(config::Ejection {
            failures: 3,
            cooldown: Duration::from_secs(10),
        }))
    }

    #[test]
    fn a_streak_ejects_for_the_cooldown_then_one_failure_ejects_again() {
        let e = three_in_a_row();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(e.failure(t0), None);
        assert_eq!(e.failure(t0), None);
        assert!(!e.is_ejected(t0));
        assert_eq!(e.failure(t0), Some(3), "the third failure ejects");
        assert!(e.is_ejected(t0 + s(9)));
        // A failure reported while out (an attempt already under way) is not a new ejection.
        assert_eq!(e.failure(t0 + s(1)), None);
        assert!(!e.is_ejected(t0 + s(12)), "back after the cool-down");
        // Half-open: one failure takes it out again, one success brings it back for good.
        assert_eq!(e.failure(t0 + s(12)), Some(3));
        assert!(e.is_ejected(t0 + s(13)));
        assert!(e.success(), "it was ejected");
        assert!(!e.is_ejected(t0 + s(13)));
        assert_eq!(e.failure(t0 + s(14)), None, "a new streak starts from zero");
        assert!(!e.success(), "it was not ejected");
    }

    #[test]
    fn success_ends_a_streak() {
        let e = three_in_a_row();
        let t0 = Instant::now();
        e.failure(t0);
        e.failure(t0);
        assert!(!e.success());
        assert_eq!(e.failure(t0), None);
        assert_eq!(e.failure(t0), None);
        assert_eq!(e.failure(t0), Some(3));
    }

    #[test]
    fn off_never_ejects() {
        let e = Ejection::new(None);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(e.failure(t0), None);
        }
        assert!(!e.is_ejected(t0));
    }
}
