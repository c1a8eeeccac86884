//! The cache of parser children that finished a connection and wait for the next
//! connection of the same peer identity.
//!
//! Trusted input: the peer identities the monitor read from the kernel and the
//! monitor's own counts. The cached children are untrusted: a child is taken out of the
//! cache only while it is alive and has sent nothing since its `Ready`, and any doubt
//! kills it. A child is only ever handed a connection whose identity equals the one it
//! served first, so a compromised child never receives another identity's connection.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::pool::ParserChild;
use crate::config::Config;
use crate::policy::Peer;

/// The peer identity a cached child is bound to. Two connections have the same identity
/// when uid, primary gid, supplementary groups and executable path all match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    uid: u32,
    gid: u32,
    /// Sorted and without duplicates, because SO_PEERGROUPS gives no guaranteed order.
    groups: Vec<u32>,
    exe: PathBuf,
}

impl Identity {
    /// Returns the identity of `peer`, or `None` when its executable could not be read:
    /// then the monitor cannot tell two processes of one uid apart, so it never reuses.
    pub fn of(peer: &Peer) -> Option<Identity> {
        let exe = peer.exe.clone()?;
        let mut groups = peer.groups.clone();
        groups.sort_unstable();
        groups.dedup();
        Some(Identity {
            uid: peer.uid,
            gid: peer.gid,
            groups,
            exe,
        })
    }
}

/// A child that took a connection: from the cache, or a fresh one.
pub struct AssignedChild {
    pub child: ParserChild,
    /// Connections the child served before this one.
    pub previous_connections: u32,
    /// Cache generation when the child was taken; a child from an older generation is
    /// never cached again.
    pub generation: u64,
    /// Whether this session's thread started the child because the pool was empty.
    /// The child's parent-death signal (PR_SET_PDEATHSIG) fires when the thread that
    /// started it exits, so such a child dies with the session and is never cached.
    pub started_by_session: bool,
}

impl AssignedChild {
    pub fn is_reused(&self) -> bool {
        self.previous_connections > 0
    }
}

/// Reason a child that sent `Ready` was not cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCached {
    /// Reuse is off: max_connections_per_child or max_cached_children is below 2 or 1.
    Disabled,
    /// The broker is shutting down.
    Stopped,
    /// The policy was reloaded while the child served its connection.
    StaleGeneration,
    /// The child served max_connections_per_child connections.
    ConnectionLimit,
    /// The session's thread started the child, so the child dies with that thread.
    StartedBySession,
    /// The child has sent data or hung up since its Ready.
    ChannelNotQuiet,
    /// The child exited.
    Exited,
}

impl NotCached {
    pub fn reason(self) -> &'static str {
        match self {
            NotCached::Disabled => "reuse is off",
            NotCached::Stopped => "the broker is shutting down",
            NotCached::StaleGeneration => "the policy was reloaded during the connection",
            NotCached::ConnectionLimit => "the child reached max_connections_per_child",
            NotCached::StartedBySession => "the child was started by the session's thread",
            NotCached::ChannelNotQuiet => "the child used its channel after Ready",
            NotCached::Exited => "the child exited",
        }
    }
}

struct CachedChild {
    identity: Identity,
    child: ParserChild,
    /// Connections served, including the last one.
    connections_served: u32,
    idle_since: Instant,
}

struct CacheState {
    /// Least recently used first.
    entries: Vec<CachedChild>,
    generation: u64,
    stopped: bool,
}

/// Idle children by identity, bounded in number and in idle time.
pub struct ChildCache {
    max_connections: u32,
    max_cached: usize,
    idle_limit: Duration,
    state: Mutex<CacheState>,
    changed: Condvar,
}

impl ChildCache {
    pub fn new(config: &Config) -> ChildCache {
        ChildCache {
            max_connections: config.max_connections_per_child,
            max_cached: if config.reuses_children() {
                config.max_cached_children
            } else {
                0
            },
            idle_limit: config.cached_child_idle,
            state: Mutex::new(CacheState {
                entries: Vec::new(),
                generation: 0,
                stopped: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CacheState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Returns the current generation. A reload or a shutdown starts a new one.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Number of cached children.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Takes the most recently cached child of `identity`, if one is alive and quiet.
    /// Children found dead or noisy on the way are killed and reaped.
    ///
    /// NOTE: a child that dies after this check but before it reads the Assign takes the
    /// connection with it, and the client sees it closed. A pool child has the same gap.
    pub fn take(&self, identity: &Identity) -> Option<AssignedChild> {
        loop {
            let (entry, generation) = {
                let mut state = self.lock();
                let index = state
                    .entries
                    .iter()
                    .rposition(|entry| &entry.identity == identity)?;
                (state.entries.remove(index), state.generation)
            };
            let mut child = entry.child;
            match check_idle(&mut child) {
                Ok(()) => {
                    return Some(AssignedChild {
                        child,
                        previous_connections: entry.connections_served,
                        generation,
                        started_by_session: false,
                    });
                }
                Err(reason) => discard(child, reason.reason()),
            }
        }
    }

    /// Caches a child that sent `Ready` after its connection ended cleanly, or returns
    /// it with the reason it may not serve again. When the cache is full the least
    /// recently used child is killed to make room.
    pub fn put(
        &self,
        identity: Identity,
        assigned: AssignedChild,
    ) -> Result<(), (ParserChild, NotCached)> {
        let AssignedChild {
            mut child,
            previous_connections,
            generation,
            started_by_session,
        } = assigned;
        let connections_served = previous_connections.saturating_add(1);
        if generation != self.generation() {
            return Err((child, NotCached::StaleGeneration));
        }
        if connections_served >= self.max_connections {
            return Err((child, NotCached::ConnectionLimit));
        }
        if started_by_session {
            return Err((child, NotCached::StartedBySession));
        }
        if let Err(reason) = check_idle(&mut child) {
            return Err((child, reason));
        }
        let evicted = {
            let mut state = self.lock();
            if state.stopped {
                return Err((child, NotCached::Stopped));
            }
            // Checked under the lock that invalidate() takes after it starts a new
            // generation, so a child of the old generation is either refused here or
            // cleared there.
            if generation != state.generation {
                return Err((child, NotCached::StaleGeneration));
            }
            if self.max_cached == 0 {
                return Err((child, NotCached::Disabled));
            }
            let evicted = if state.entries.len() >= self.max_cached {
                Some(state.entries.remove(0))
            } else {
                None
            };
            state.entries.push(CachedChild {
                identity,
                child,
                connections_served,
                idle_since: Instant::now(),
            });
            evicted
        };
        self.changed.notify_all();
        if let Some(entry) = evicted {
            discard(entry.child, "max_cached_children reached");
        }
        Ok(())
    }

    /// Kills and reaps every cached child and starts a new generation, so that no child
    /// serving a connection now is cached afterwards. Returns how many were killed.
    pub fn invalidate(&self) -> usize {
        let entries = {
            let mut state = self.lock();
            state.generation += 1;
            std::mem::take(&mut state.entries)
        };
        let count = entries.len();
        for entry in entries {
            discard(entry.child, "cache invalidated");
        }
        count
    }

    /// Refuses further children and kills the cached ones; ends [`ChildCache::run_reaper`].
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
        self.invalidate();
    }

    /// Kills children idle for longer than cached_child_idle, and children that exited
    /// or used their channel while cached, until [`ChildCache::stop`]. Runs on its own
    /// thread.
    pub fn run_reaper(&self) {
        // A quarter of the idle limit keeps the overshoot small, and the bounds keep the
        // thread from spinning or from sleeping through a short limit.
        let tick = (self.idle_limit / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        loop {
            let expired = {
                let state = self.lock();
                if state.stopped {
                    return;
                }
                let (mut state, _) = self
                    .changed
                    .wait_timeout(state, tick)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if state.stopped {
                    return;
                }
                let now = Instant::now();
                let mut expired = Vec::new();
                let mut index = 0;
                while index < state.entries.len() {
                    let entry = &mut state.entries[index];
                    let idle_for = now.saturating_duration_since(entry.idle_since);
                    let verdict = if idle_for >= self.idle_limit {
                        Err("idle for longer than cached_child_idle_ms")
                    } else {
                        check_idle(&mut entry.child).map_err(NotCached::reason)
                    };
                    match verdict {
                        Ok(()) => index += 1,
                        Err(reason) => expired.push((state.entries.remove(index), reason)),
                    }
                }
                expired
            };
            for (entry, reason) in expired {
                discard(entry.child, reason);
            }
        }
    }
}

/// Checks that a child between connections is alive and has sent nothing, and has not
/// hung up, since its `Ready`.
fn check_idle(child: &mut ParserChild) -> Result<(), NotCached> {
    if !child.is_alive() {
        return Err(NotCached::Exited);
    }
    let mut fds = [PollFd::new(child.channel.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => Ok(()),
        _ => Err(NotCached::ChannelNotQuiet),
    }
}

/// Kills and reaps a child that leaves the cache without a connection.
fn discard(mut child: ParserChild, reason: &str) {
    let child_pid = child.process.id();
    let _ = child.process.kill();
    let _ = child.process.wait();
    tracing::debug!(child_pid, reason, "cached parser child killed");
}
