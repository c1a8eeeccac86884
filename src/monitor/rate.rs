//! Per-peer rate limits: one token bucket per (command, peer uid), in the monitor's memory.
//!
//! The limits come from the loaded policy, which is trusted. The uid is the one the
//! monitor recorded from the kernel for the connection, and the command name has already
//! been found in the policy, so a client cannot choose which bucket it draws from.
//!
//! Each bucket is kept as one instant, the generic cell rate algorithm's theoretical
//! arrival time: the time at which the bucket would be full again. A bucket whose time has
//! passed is full, which is what a missing bucket means too, so such buckets are dropped
//! without changing any decision. That keeps the table to the peers that sent requests
//! recently, and [`MAX_BUCKETS`] bounds it even then.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::policy::RateLimit;
use crate::protocol::{BrokerError, ErrorKind};

/// Maximum number of buckets that are not full, far above the number of uids a policy
/// names in practice. Each bucket takes about 150 bytes (an estimate), so the table stays
/// near 2 MiB at most.
pub(super) const MAX_BUCKETS: usize = 16_384;

/// Time between sweeps of full buckets while the table is below [`MAX_BUCKETS`].
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Reason a request may not run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RateLimited {
    /// The peer's bucket for this command is empty.
    Exceeded { retry_after: Duration },
    /// Every one of the [`MAX_BUCKETS`] buckets is in use by other peers, so this peer
    /// gets no bucket until the first of them is full again.
    TableFull { retry_after: Duration },
}

impl RateLimited {
    /// Builds the Busy error sent to the client, naming the command, the limit and the
    /// time after which a retry can succeed, in whole seconds rounded up.
    pub(super) fn to_broker_error(self, command: &str, limit: &RateLimit) -> BrokerError {
        let message = match self {
            RateLimited::Exceeded { retry_after } => format!(
                "command {command:?} allows {} requests per {} s from each peer; \
                 try again in {} s",
                limit.requests,
                limit.per_seconds,
                whole_seconds(retry_after)
            ),
            RateLimited::TableFull { retry_after } => format!(
                "the broker tracks the request rate of too many peers to add one for \
                 command {command:?}; try again in {} s",
                whole_seconds(retry_after)
            ),
        };
        BrokerError::new(ErrorKind::Busy, command, "rate_limit", message)
    }
}

/// Rounds up to whole seconds, at least 1, so that a client that waits that long succeeds.
fn whole_seconds(duration: Duration) -> u64 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    seconds.max(1)
}

/// The token buckets of every (command, peer uid) pair.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    state: Mutex<State>,
    max_buckets: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Theoretical arrival time of each bucket: when it will hold all its tokens again.
    buckets: HashMap<(String, u32), Instant>,
    /// When full buckets are next dropped; `None` before the first request.
    next_sweep: Option<Instant>,
    /// Whether the table was found full and logged, so that the warning is logged once
    /// each time the table fills rather than once per rejected request.
    full_logged: bool,
}

impl Default for RateLimiter {
    fn default() -> RateLimiter {
        RateLimiter::with_capacity(MAX_BUCKETS)
    }
}

impl RateLimiter {
    /// Creates a limiter that tracks at most `max_buckets` buckets that are not full.
    pub(super) fn with_capacity(max_buckets: usize) -> RateLimiter {
        RateLimiter {
            state: Mutex::new(State::default()),
            max_buckets,
        }
    }

    /// Takes one token from the bucket of `command` and `uid` at time `now`, which the
    /// caller passes in so that tests can set the clock. A rejected request takes no token.
    pub(super) fn check(
        &self,
        command: &str,
        uid: u32,
        limit: &RateLimit,
        now: Instant,
    ) -> Result<(), RateLimited> {
        let interval = limit.interval();
        // A full bucket lets `requests` run at once: the last of them may start while
        // the arrival time is up to `requests - 1` intervals ahead of now.
        let tolerance = interval * limit.requests.saturating_sub(1);
        let mut state = super::lock(&self.state);

        if state.next_sweep.is_none_or(|next| now >= next) {
            state.sweep(now);
            state.next_sweep = now.checked_add(SWEEP_INTERVAL);
        }
        let key = (command.to_owned(), uid);
        if !state.buckets.contains_key(&key) && state.buckets.len() >= self.max_buckets {
            state.sweep(now);
            if state.buckets.len() >= self.max_buckets {
                let retry_after = state.first_full(now);
                if !state.full_logged {
                    state.full_logged = true;
                    tracing::warn!(
                        buckets = state.buckets.len(),
                        command,
                        peer_uid = uid,
                        retry_after_ms = retry_after.as_millis() as u64,
                        "rate limit table is full, so peers without a bucket get Busy until \
                         one refills"
                    );
                }
                return Err(RateLimited::TableFull { retry_after });
            }
            state.full_logged = false;
        }

        let arrival = state.buckets.get(&key).map_or(now, |&time| time.max(now));
        // Compared as durations from now: subtracting from an Instant can fail shortly
        // after boot.
        let ahead = arrival.saturating_duration_since(now);
        if ahead > tolerance {
            return Err(RateLimited::Exceeded {
                retry_after: ahead - tolerance,
            });
        }
        // The sum stays within a day of now, far from the end of Instant's range. If it
        // ever overflowed, the request would run and the bucket would stay as it was.
        if let Some(next) = arrival.checked_add(interval) {
            state.buckets.insert(key, next);
        }
        Ok(())
    }

    /// Returns the number of buckets that are tracked.
    #[cfg(test)]
    fn bucket_count(&self) -> usize {
        super::lock(&self.state).buckets.len()
    }
}

impl State {
    /// Drops every bucket that is full at `now`.
    fn sweep(&mut self, now: Instant) {
        self.buckets.retain(|_, arrival| *arrival > now);
    }

    /// Returns the time until the first bucket is full again.
    fn first_full(&self, now: Instant) -> Duration {
        self.buckets
            .values()
            .min()
            .map_or(Duration::ZERO, |arrival| {
                arrival.saturating_duration_since(now)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, per_seconds: u32) -> RateLimit {
        RateLimit {
            requests,
            per_seconds,
        }
    }

    fn seconds(value: f64) -> Duration {
        Duration::from_secs_f64(value)
    }

    #[test]
    fn burst_then_rejected() {
        let limiter = RateLimiter::default();
        let limit = limit(3, 60);
        let start = Instant::now();
        for request in 0..3 {
            assert_eq!(
                limiter.check("backup", 33, &limit, start),
                Ok(()),
                "request {request}"
            );
        }
        assert_eq!(
            limiter.check("backup", 33, &limit, start),
            Err(RateLimited::Exceeded {
                retry_after: Duration::from_secs(20)
            })
        );
    }

    #[test]
    fn token_returns_after_interval() {
        let limiter = RateLimiter::default();
        let limit = limit(2, 10);
        let start = Instant::now();
        assert!(limiter.check("backup", 33, &limit, start).is_ok());
        assert!(limiter.check("backup", 33, &limit, start).is_ok());

        let early = start + seconds(4.999);
        assert_eq!(
            limiter.check("backup", 33, &limit, early),
            Err(RateLimited::Exceeded {
                retry_after: Duration::from_millis(1)
            })
        );
        let on_time = start + Duration::from_secs(5);
        assert_eq!(limiter.check("backup", 33, &limit, on_time), Ok(()));
        assert!(limiter.check("backup", 33, &limit, on_time).is_err());
    }

    #[test]
    fn rejected_request_takes_no_token() {
        let limiter = RateLimiter::default();
        let limit = limit(1, 10);
        let start = Instant::now();
        assert!(limiter.check("backup", 33, &limit, start).is_ok());
        for offset in 1..10 {
            let now = start + Duration::from_secs(offset);
            assert!(limiter.check("backup", 33, &limit, now).is_err());
        }
        let refilled = start + Duration::from_secs(10);
        assert_eq!(limiter.check("backup", 33, &limit, refilled), Ok(()));
    }

    #[test]
    fn long_run_average_holds() {
        let limiter = RateLimiter::default();
        let limit = limit(10, 60);
        let start = Instant::now();
        // One attempt every 100 ms for ten minutes: a full bucket of 10, then one token
        // every 6 s.
        let accepted = (0..=6000)
            .filter(|step| {
                let now = start + Duration::from_millis(step * 100);
                limiter.check("backup", 33, &limit, now).is_ok()
            })
            .count();
        assert_eq!(accepted, 10 + 100);
    }

    #[test]
    fn buckets_are_per_peer_and_command() {
        let limiter = RateLimiter::default();
        let limit = limit(1, 60);
        let now = Instant::now();
        assert!(limiter.check("backup", 33, &limit, now).is_ok());
        assert!(limiter.check("backup", 33, &limit, now).is_err());
        assert_eq!(limiter.check("backup", 34, &limit, now), Ok(()));
        assert_eq!(limiter.check("restore", 33, &limit, now), Ok(()));
    }

    #[test]
    fn full_buckets_are_swept() {
        let limiter = RateLimiter::default();
        let limit = limit(1, 1);
        let start = Instant::now();
        for uid in 0..100 {
            assert!(limiter.check("backup", uid, &limit, start).is_ok());
        }
        assert_eq!(limiter.bucket_count(), 100);

        let later = start + SWEEP_INTERVAL;
        assert!(limiter.check("backup", 1000, &limit, later).is_ok());
        assert_eq!(limiter.bucket_count(), 1);
    }

    #[test]
    fn full_table_rejects_new_peer() {
        let limiter = RateLimiter::with_capacity(2);
        let limit = limit(1, 10);
        let start = Instant::now();
        assert!(limiter.check("backup", 1, &limit, start).is_ok());
        assert!(
            limiter
                .check("backup", 2, &limit, start + seconds(3.0))
                .is_ok()
        );

        let now = start + seconds(4.0);
        assert_eq!(
            limiter.check("backup", 3, &limit, now),
            Err(RateLimited::TableFull {
                retry_after: Duration::from_secs(6)
            })
        );
        // A peer that has a bucket keeps being served from it.
        assert!(matches!(
            limiter.check("backup", 1, &limit, now),
            Err(RateLimited::Exceeded { .. })
        ));
        // Once the first bucket is full again, it is dropped and the new peer gets one.
        let refilled = start + seconds(10.0);
        assert_eq!(limiter.check("backup", 3, &limit, refilled), Ok(()));
        assert_eq!(limiter.bucket_count(), 2);
    }

    #[test]
    fn stricter_limit_applies_to_existing_bucket() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        assert!(limiter.check("backup", 33, &limit(10, 10), start).is_ok());
        // A reload lowers the limit to 1 per 100 s. The bucket keeps its arrival time of
        // start + 1 s, and from then on each token takes 100 s.
        let strict = limit(1, 100);
        assert_eq!(
            limiter.check("backup", 33, &strict, start),
            Err(RateLimited::Exceeded {
                retry_after: Duration::from_secs(1)
            })
        );
        let after_wait = start + Duration::from_secs(1);
        assert_eq!(limiter.check("backup", 33, &strict, after_wait), Ok(()));
        assert_eq!(
            limiter.check("backup", 33, &strict, after_wait),
            Err(RateLimited::Exceeded {
                retry_after: Duration::from_secs(100)
            })
        );
    }

    #[test]
    fn busy_error_names_command_and_retry() {
        let limit = limit(10, 60);
        let exceeded = RateLimited::Exceeded {
            retry_after: seconds(5.2),
        };
        let error = exceeded.to_broker_error("backup", &limit);
        assert_eq!(error.kind, ErrorKind::Busy);
        assert_eq!(error.field, "backup");
        assert_eq!(error.rule, "rate_limit");
        assert_eq!(
            error.message,
            "command \"backup\" allows 10 requests per 60 s from each peer; try again in 6 s"
        );

        let full = RateLimited::TableFull {
            retry_after: Duration::ZERO,
        };
        let error = full.to_broker_error("backup", &limit);
        assert_eq!(error.rule, "rate_limit");
        assert!(
            error.message.ends_with("try again in 1 s"),
            "{}",
            error.message
        );
    }

    #[test]
    fn whole_seconds_rounds_up() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(6)), 6);
        assert_eq!(whole_seconds(Duration::from_millis(6001)), 7);
    }
}
