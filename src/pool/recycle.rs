//! When a pool replaces a member with a fresh VM.

use std::time::{Duration, Instant};

/// When a pool replaces a member with a fresh VM: after a number of requests, at an age, when
/// its Lua memory stays high after a request, after a cancelled or timed-out request.
///
/// A member is always replaced after a panic in a host function, after the isle gave up on a
/// request that would not stop (the hard stop), when its `init` fails and when
/// [`on_return`](crate::IslePoolBuilder::on_return) fails. The policy is checked after each
/// request the member ran; a checked-out member is replaced when it is returned.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mlua_isle::{IslePool, Recycle};
///
/// let pool = IslePool::builder()
///     .size(2)
///     .recycle(
///         Recycle::new()
///             .after_requests(1000)
///             .after_age(Duration::from_secs(600))
///             .memory_high_water(64 << 20),
///     )
///     .spawn(|_| Ok(()))?;
/// assert_eq!(pool.eval::<i64>("1 + 1")?, 2);
/// # Ok::<(), mlua_isle::IsleError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recycle {
    max_requests: Option<u64>,
    max_age: Option<Duration>,
    memory_high_water: Option<usize>,
    after_interrupted: bool,
}

impl Default for Recycle {
    fn default() -> Self {
        Recycle {
            max_requests: None,
            max_age: None,
            memory_high_water: None,
            after_interrupted: true,
        }
    }
}

impl Recycle {
    /// The default policy: no limit on requests, age or memory; a member is replaced after a
    /// cancelled or timed-out request (its state may be half-updated).
    ///
    /// # Examples
    ///
    /// ```
    /// let policy = mlua_isle::Recycle::new();
    /// assert_eq!(policy, mlua_isle::Recycle::default());
    /// ```
    pub fn new() -> Self {
        Recycle::default()
    }

    /// Replaces a member once it has run `requests` requests (at least 1).
    ///
    /// # Examples
    ///
    /// ```
    /// let policy = mlua_isle::Recycle::new().after_requests(100);
    /// # let _ = policy;
    /// ```
    pub fn after_requests(mut self, requests: u64) -> Self {
        self.max_requests = Some(requests.max(1));
        self
    }

    /// Replaces a member once it is `age` old (checked after each request it runs).
    ///
    /// # Examples
    ///
    /// ```
    /// let policy = mlua_isle::Recycle::new().after_age(std::time::Duration::from_secs(60));
    /// # let _ = policy;
    /// ```
    pub fn after_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Replaces a member whose Lua memory exceeds `bytes` after a request.
    ///
    /// # Examples
    ///
    /// ```
    /// let policy = mlua_isle::Recycle::new().memory_high_water(32 << 20);
    /// # let _ = policy;
    /// ```
    pub fn memory_high_water(mut self, bytes: usize) -> Self {
        self.memory_high_water = Some(bytes);
        self
    }

    /// Whether a member is replaced after a request that was cancelled or timed out (default:
    /// `true`). Turn it off when scripts keep no state a cut-short request could corrupt.
    ///
    /// # Examples
    ///
    /// ```
    /// let policy = mlua_isle::Recycle::new().after_interrupted(false);
    /// # let _ = policy;
    /// ```
    pub fn after_interrupted(mut self, replace: bool) -> Self {
        self.after_interrupted = replace;
        self
    }

    /// Why a member that has run `served` requests, was born at `born`, holds `memory` bytes
    /// and just ended a request with `ended` must be replaced, if it must.
    pub(crate) fn verdict(
        &self,
        served: u64,
        born: Instant,
        memory: usize,
        ended: Ended,
    ) -> Option<Cause> {
        match ended {
            Ended::Panicked => return Some(Cause::Panicked),
            Ended::Cancelled | Ended::TimedOut if self.after_interrupted => {
                return Some(Cause::Interrupted)
            }
            _ => {}
        }
        if self.max_requests.is_some_and(|max| served >= max) {
            Some(Cause::Requests)
        } else if self.max_age.is_some_and(|age| born.elapsed() >= age) {
            Some(Cause::Age)
        } else if self.memory_high_water.is_some_and(|high| memory > high) {
            Some(Cause::Memory)
        } else {
            None
        }
    }
}

/// How a request a member ran ended, as far as recycling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Ok,
    Failed,
    Panicked,
    Cancelled,
    TimedOut,
}

/// Why a member was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    Requests,
    Age,
    Memory,
    Interrupted,
    Panicked,
    OnReturn,
    Discarded,
}

impl Cause {
    const ALL: [Cause; 7] = [
        Cause::Requests,
        Cause::Age,
        Cause::Memory,
        Cause::Interrupted,
        Cause::Panicked,
        Cause::OnReturn,
        Cause::Discarded,
    ];

    /// The cause as tracing reports it.
    #[cfg(feature = "tracing")]
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cause::Requests => "requests",
            Cause::Age => "age",
            Cause::Memory => "memory",
            Cause::Interrupted => "interrupted",
            Cause::Panicked => "panicked",
            Cause::OnReturn => "on_return",
            Cause::Discarded => "discarded",
        }
    }

    /// The cause whose discriminant is `index`.
    pub(crate) fn from_index(index: u8) -> Option<Cause> {
        Cause::ALL.get(usize::from(index)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_gives_its_cause() {
        let now = Instant::now();
        let policy = Recycle::new()
            .after_requests(3)
            .memory_high_water(100)
            .after_interrupted(false);
        assert_eq!(policy.verdict(1, now, 10, Ended::Ok), None);
        assert_eq!(policy.verdict(3, now, 10, Ended::Ok), Some(Cause::Requests));
        assert_eq!(
            policy.verdict(1, now, 101, Ended::Failed),
            Some(Cause::Memory)
        );
        assert_eq!(policy.verdict(1, now, 10, Ended::TimedOut), None);
        assert_eq!(
            policy.verdict(1, now, 10, Ended::Panicked),
            Some(Cause::Panicked)
        );
        let aged = Recycle::new().after_age(Duration::ZERO);
        assert_eq!(aged.verdict(1, now, 0, Ended::Ok), Some(Cause::Age));
        assert_eq!(
            Recycle::new().verdict(1, now, 0, Ended::Cancelled),
            Some(Cause::Interrupted)
        );
    }
}
