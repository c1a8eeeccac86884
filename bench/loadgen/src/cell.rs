//! One measurement: one system at one concurrency level.
//!
//! `clients` threads call the system in a closed loop. Calls that complete inside the
//! measured window (after the warm-up) give the latency percentiles and the throughput;
//! errors are counted over the whole measurement. CPU time is read before and after:
//! getrusage for the load generator and the processes it waited for, /proc for the
//! server. For the broker a sampler thread reads the memory of the monitor and of its
//! parser children while the load runs. Trusts the system under test to return from
//! every call within the socket timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::procfs;
use crate::systems::System;

/// argv[0] of the broker's parser children.
const PARSER_ARGV0: &str = "secure_socket-parser";
/// Stack of a client thread; a call needs little, and 200 threads should stay small.
const CLIENT_STACK_BYTES: usize = 256 * 1024;
/// Maximum wait for a server's children to exit and be reaped after the load stops.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// How long and how much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub warmup: Duration,
    pub window: Duration,
    pub max_calls: u64,
    pub sample_interval: Duration,
}

/// Latency percentiles and mean of the calls in the window, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Results of one measurement.
#[derive(Debug, Clone)]
pub struct CellResult {
    pub system: &'static str,
    pub clients: usize,
    /// Calls completed inside the measured window.
    pub calls: u64,
    /// Calls completed from the start of the warm-up to the end, for CPU per call.
    pub all_calls: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub window_seconds: f64,
    pub throughput: f64,
    pub latency: Percentiles,
    /// CPU of the load generator and its waited-for children, per call, in µs.
    pub client_cpu_us: f64,
    /// CPU of the server and its waited-for children, per call, in µs.
    pub server_cpu_us: Option<f64>,
    /// Busy CPU of the machine that neither side used, as a share of all CPUs.
    pub other_load: f64,
    /// Largest VmRSS of the monitor sampled during the measurement, in KiB.
    pub monitor_rss_kib: Option<u64>,
    /// Largest RssAnon of the monitor sampled during the measurement, in KiB.
    pub monitor_anon_kib: Option<u64>,
    /// VmHWM of the monitor after the measurement, in KiB.
    pub monitor_hwm_kib: Option<u64>,
    /// Largest VmHWM of a parser child sampled during the measurement, in KiB.
    pub parser_hwm_kib: Option<u64>,
    /// Largest VmRSS of a parser child sampled during the measurement, in KiB.
    pub parser_rss_kib: Option<u64>,
    /// Largest RssAnon of a parser child sampled during the measurement, in KiB.
    pub parser_anon_kib: Option<u64>,
    /// Parser children seen at once, at most.
    pub parser_count: Option<usize>,
}

/// Memory of the monitor and its parser children, the largest values sampled.
#[derive(Debug, Default)]
struct Sampled {
    monitor_rss_kib: u64,
    monitor_anon_kib: u64,
    parser_hwm_kib: u64,
    parser_rss_kib: u64,
    parser_anon_kib: u64,
    parser_count: usize,
    /// CPU the sampler thread used, taken out of the client side.
    cpu: Duration,
}

/// CPU counters at the start of the measurement.
struct Snapshot {
    client: procfs::Usage,
    server: Option<Duration>,
    machine: Option<Duration>,
    wall: Instant,
}

impl Snapshot {
    fn take(server_pid: Option<i32>) -> Snapshot {
        Snapshot {
            client: procfs::own_usage(),
            server: server_pid.and_then(procfs::process_cpu),
            machine: procfs::machine_busy(),
            wall: Instant::now(),
        }
    }
}

/// State the client threads share.
struct Shared {
    /// Client threads that are ready (a persistent one with its connection open), and
    /// whether every client is ready, so the warm-up starts.
    start: Mutex<(usize, bool)>,
    start_changed: Condvar,
    stop: AtomicBool,
    window_calls: AtomicU64,
    /// Set by the thread that reached max_calls: when the window ended early.
    early_end: Mutex<Option<Instant>>,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// Runs one system at one concurrency level.
pub fn run(system: &System, clients: usize, server_pid: Option<i32>, plan: &Plan) -> CellResult {
    let broker_pid = if system.uses_broker() {
        server_pid
    } else {
        None
    };
    let shared = Shared {
        start: Mutex::new((0, false)),
        start_changed: Condvar::new(),
        stop: AtomicBool::new(false),
        window_calls: AtomicU64::new(0),
        early_end: Mutex::new(None),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    };
    let Driven {
        latencies,
        all_calls,
        sampled,
        window,
        before,
    } = drive(system, clients, server_pid, broker_pid, plan, &shared);

    // The client side is complete once every thread has returned: each waited for its
    // processes. The sampler's own CPU is not part of any call.
    let client_after = procfs::own_usage();
    let wall = before.wall.elapsed();
    let machine_after = procfs::machine_busy();
    if let Some(pid) = server_pid {
        settle(pid);
    }
    let server_after = server_pid.and_then(procfs::process_cpu);

    let calls = latencies.len() as u64;
    let per_call = |cpu: Duration| cpu.as_secs_f64() * 1e6 / all_calls.max(1) as f64;
    let client_cpu = client_after
        .total()
        .saturating_sub(before.client.total())
        .saturating_sub(sampled.cpu);
    let server_cpu = match (before.server, server_after) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let other_load = match (before.machine, machine_after) {
        (Some(before), Some(after)) => {
            let busy = after.saturating_sub(before);
            let ours = client_cpu + server_cpu.unwrap_or_default() + sampled.cpu;
            let cpus = std::thread::available_parallelism().map_or(1, |count| count.get());
            busy.saturating_sub(ours).as_secs_f64() / (wall.as_secs_f64() * cpus as f64)
        }
        _ => 0.0,
    };
    let window_seconds = window.as_secs_f64();
    let first_error = lock(&shared.first_error).clone();
    let monitor_hwm_kib = broker_pid
        .and_then(procfs::memory)
        .map(|memory| memory.hwm_kib);
    let sampled_value = |value: u64| broker_pid.map(|_| value);
    CellResult {
        system: system.name(),
        clients,
        calls,
        all_calls,
        errors: shared.errors.load(Ordering::Relaxed),
        first_error,
        window_seconds,
        throughput: if window_seconds > 0.0 {
            calls as f64 / window_seconds
        } else {
            0.0
        },
        latency: percentiles(latencies),
        client_cpu_us: per_call(client_cpu),
        server_cpu_us: server_cpu.map(per_call),
        other_load,
        monitor_rss_kib: sampled_value(sampled.monitor_rss_kib),
        monitor_anon_kib: sampled_value(sampled.monitor_anon_kib),
        monitor_hwm_kib,
        parser_hwm_kib: sampled_value(sampled.parser_hwm_kib),
        parser_rss_kib: sampled_value(sampled.parser_rss_kib),
        parser_anon_kib: sampled_value(sampled.parser_anon_kib),
        parser_count: broker_pid.map(|_| sampled.parser_count),
    }
}

/// Measurements the client threads and the sampler return.
struct Driven {
    /// Latencies of the calls completed inside the window, in µs.
    latencies: Vec<u32>,
    all_calls: u64,
    sampled: Sampled,
    /// Length of the measured window; shorter than planned after max_calls.
    window: Duration,
    before: Snapshot,
}

/// Starts the client threads and, for the broker, the sampler, releases them together,
/// and stops them when the window ends.
fn drive(
    system: &System,
    clients: usize,
    server_pid: Option<i32>,
    broker_pid: Option<i32>,
    plan: &Plan,
    shared: &Shared,
) -> Driven {
    std::thread::scope(|scope| {
        let mut workers = Vec::with_capacity(clients);
        for _ in 0..clients {
            let spawned = std::thread::Builder::new()
                .stack_size(CLIENT_STACK_BYTES)
                .spawn_scoped(scope, move || client_loop(system, shared, plan));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(error) => {
                    record_error(shared, format!("failed to start a client thread: {error}"));
                    break;
                }
            }
        }
        let mut start = shared
            .start_changed
            .wait_while(lock(&shared.start), |(ready, _)| *ready < workers.len())
            .unwrap_or_else(std::sync::PoisonError::into_inner);

        // Counting starts once every client is ready, so that the threads' start and a
        // persistent client's first call stay out of the CPU per call.
        let before = Snapshot::take(server_pid);
        let sampler = broker_pid.map(|pid| {
            let interval = plan.sample_interval;
            scope.spawn(move || sample_memory(pid, interval, shared))
        });
        start.1 = true;
        shared.start_changed.notify_all();
        drop(start);

        let window_start = Instant::now() + plan.warmup;
        let window_end = window_start + plan.window;
        sleep_until(window_end, &shared.stop);
        shared.stop.store(true, Ordering::Relaxed);
        let mut latencies = Vec::new();
        let mut all_calls = 0u64;
        for worker in workers {
            if let Ok((mut own, count)) = worker.join() {
                latencies.append(&mut own);
                all_calls += count;
            }
        }
        let sampled = sampler
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default();
        let early_end = *lock(&shared.early_end);
        let end = early_end.unwrap_or(window_end).min(window_end);
        Driven {
            latencies,
            all_calls,
            sampled,
            window: end.saturating_duration_since(window_start),
            before,
        }
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn record_error(shared: &Shared, message: String) {
    shared.errors.fetch_add(1, Ordering::Relaxed);
    let mut first = lock(&shared.first_error);
    if first.is_none() {
        *first = Some(message);
    }
}

/// Calls the system until stopped, as one client thread. Returns the latencies of the
/// calls that completed inside the window, in µs, and the number of calls completed in
/// all.
fn client_loop(system: &System, shared: &Shared, plan: &Plan) -> (Vec<u32>, u64) {
    let mut client = system.client();
    let mut latencies = Vec::with_capacity(4096);
    let mut completed = 0u64;
    {
        let mut start = lock(&shared.start);
        start.0 += 1;
        shared.start_changed.notify_all();
        let _started = shared
            .start_changed
            .wait_while(start, |(_, go)| !*go)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    let window_start = Instant::now() + plan.warmup;
    let window_end = window_start + plan.window;
    while !shared.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = client.call();
        let ended = Instant::now();
        completed += 1;
        if let Err(message) = result {
            record_error(shared, message);
            // A failing system must not turn the loop into a busy spin.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        // A call counts where it completes, so that calls slower than the warm-up are
        // not left out of the percentiles.
        if ended < window_start || ended > window_end {
            continue;
        }
        latencies.push(
            ended
                .duration_since(started)
                .as_micros()
                .min(u32::MAX as u128) as u32,
        );
        let counted = shared.window_calls.fetch_add(1, Ordering::Relaxed) + 1;
        if counted >= plan.max_calls {
            let mut early_end = lock(&shared.early_end);
            if early_end.is_none() {
                *early_end = Some(ended);
            }
            shared.stop.store(true, Ordering::Relaxed);
        }
    }
    (latencies, completed)
}

fn sleep_until(deadline: Instant, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Samples the monitor's VmRSS and its parser children's VmRSS and VmHWM until the
/// measurement stops.
fn sample_memory(monitor: i32, interval: Duration, shared: &Shared) -> Sampled {
    let mut sampled = Sampled::default();
    let cpu_before = procfs::thread_usage();
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(memory) = procfs::memory(monitor) {
            sampled.monitor_rss_kib = sampled.monitor_rss_kib.max(memory.rss_kib);
            sampled.monitor_anon_kib = sampled.monitor_anon_kib.max(memory.anon_kib);
        }
        let mut parsers = 0;
        for pid in procfs::children_of(monitor) {
            if procfs::argv0(pid).as_deref() != Some(PARSER_ARGV0) {
                continue;
            }
            if let Some(memory) = procfs::memory(pid) {
                parsers += 1;
                sampled.parser_hwm_kib = sampled.parser_hwm_kib.max(memory.hwm_kib);
                sampled.parser_rss_kib = sampled.parser_rss_kib.max(memory.rss_kib);
                sampled.parser_anon_kib = sampled.parser_anon_kib.max(memory.anon_kib);
            }
        }
        sampled.parser_count = sampled.parser_count.max(parsers);
        std::thread::sleep(interval);
    }
    sampled.cpu = procfs::thread_usage().saturating_sub(cpu_before);
    sampled
}

/// Waits until the server's children stop changing, so that the children the load
/// left behind have exited and been reaped and their CPU time is in the server's
/// counters.
fn settle(pid: i32) {
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut last = usize::MAX;
    let mut stable_reads = 0;
    while Instant::now() < deadline && stable_reads < 3 {
        std::thread::sleep(Duration::from_millis(50));
        let count = procfs::children_of(pid).len();
        if count == last {
            stable_reads += 1;
        } else {
            stable_reads = 0;
            last = count;
        }
    }
}

/// Computes nearest-rank percentiles and the mean of latencies in µs, all zero when there
/// are none.
fn percentiles(mut latencies: Vec<u32>) -> Percentiles {
    if latencies.is_empty() {
        return Percentiles::default();
    }
    latencies.sort_unstable();
    let rank = |quantile: f64| {
        let index = (quantile * latencies.len() as f64).ceil() as usize;
        f64::from(latencies[index.clamp(1, latencies.len()) - 1])
    };
    let sum: u64 = latencies.iter().map(|&latency| u64::from(latency)).sum();
    Percentiles {
        mean: sum as f64 / latencies.len() as f64,
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        max: f64::from(latencies[latencies.len() - 1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let latencies: Vec<u32> = (1..=100).collect();
        let result = percentiles(latencies);
        assert_eq!(result.p50, 50.0);
        assert_eq!(result.p90, 90.0);
        assert_eq!(result.p99, 99.0);
        assert_eq!(result.max, 100.0);
        assert_eq!(result.mean, 50.5);
    }

    #[test]
    fn percentiles_single_value() {
        let result = percentiles(vec![7]);
        assert_eq!(result.p50, 7.0);
        assert_eq!(result.max, 7.0);
    }

    #[test]
    fn percentiles_empty_is_zero() {
        assert_eq!(percentiles(Vec::new()).max, 0.0);
    }
}
