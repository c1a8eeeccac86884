//! Measures what it costs a multi-threaded process to start a script and wait for it,
//! by three methods:
//!
//! - `spawn`: std's `Command` without a pre-exec hook. glibc's posix_spawn serves it with
//!   clone(CLONE_VM | CLONE_VFORK), so the child shares the parent's memory until exec.
//! - `fork`: the same with an empty `pre_exec` hook, which makes std fall back to fork.
//!   The kernel copies the parent's page tables, and the child tears the copy down at
//!   exec. The broker starts its scripts and parser children this way.
//! - `fork-setsid`: fork with setsid in the hook, as the broker does for its scripts. On
//!   a kernel with `kernel.sched_autogroup_enabled=1`, each new session is also a new
//!   scheduling group when the process is in the root CPU cgroup.
//!
//! `--idle-threads` adds threads that only sleep, standing in for the monitor's session
//! threads. Prints CPU time per start (this process and its waited-for children, from
//! getrusage), starts per second, and latency percentiles. Trusts its command line.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: spawn_cost SCRIPT [--idle-threads N] [--workers N] [--starts N]

  SCRIPT            program to start; it should exit 0 at once
  --idle-threads N  sleeping threads in the process (default: 8)
  --workers N       threads that start the script concurrently (default: 8)
  --starts N        starts per worker and method (default: 300)";

#[derive(Clone, Copy)]
enum Method {
    Spawn,
    Fork,
    ForkSetsid,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Spawn => "spawn",
            Method::Fork => "fork",
            Method::ForkSetsid => "fork-setsid",
        }
    }
}

fn start_and_wait(script: &str, method: Method) -> Result<(), String> {
    let mut command = Command::new(script);
    command
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match method {
        Method::Spawn => {}
        // SAFETY: the hook runs between fork and exec and does nothing.
        Method::Fork => unsafe {
            command.pre_exec(|| Ok(()));
        },
        // SAFETY: the hook runs between fork and exec and makes one async-signal-safe
        // system call.
        Method::ForkSetsid => unsafe {
            command.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        },
    }
    let status = command
        .status()
        .map_err(|error| format!("failed to start {script}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{script} ended with {status}"))
    }
}

/// CPU time of this process and of its waited-for children.
fn cpu_time() -> Duration {
    let mut total = Duration::ZERO;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: rusage is plain old data, so all zero bytes are a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a live, writable rusage for the duration of the call.
        if unsafe { libc::getrusage(who, &mut usage) } != 0 {
            continue;
        }
        for time in [usage.ru_utime, usage.ru_stime] {
            total += Duration::from_secs(time.tv_sec.max(0) as u64)
                + Duration::from_micros(time.tv_usec.max(0) as u64);
        }
    }
    total
}

fn measure(script: &str, method: Method, workers: usize, starts: usize) -> Result<(), String> {
    let cpu_before = cpu_time();
    let started = Instant::now();
    let mut latencies: Vec<u64> = Vec::with_capacity(workers * starts);

    let results: Vec<Result<Vec<u64>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(move || {
                    let mut own = Vec::with_capacity(starts);
                    for _ in 0..starts {
                        let call = Instant::now();
                        start_and_wait(script, method)?;
                        own.push(call.elapsed().as_micros() as u64);
                    }
                    Ok(own)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err("a worker panicked".to_string()))
            })
            .collect()
    });
    for result in results {
        latencies.extend(result?);
    }

    let wall = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    latencies.sort_unstable();
    let count = latencies.len().max(1);
    let rank = |quantile: f64| {
        let index = (quantile * count as f64).ceil() as usize;
        latencies
            .get(index.clamp(1, count) - 1)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{:>11}: {:>5.0} µs CPU per start, {:>5.0} starts/s, latency p50 {} µs, p99 {} µs, max {} µs",
        method.name(),
        cpu.as_secs_f64() * 1e6 / count as f64,
        count as f64 / wall.as_secs_f64(),
        rank(0.50),
        rank(0.99),
        latencies.last().copied().unwrap_or(0),
    );
    Ok(())
}

fn parse_count(flag: &str, value: Option<&String>) -> Result<usize, String> {
    match value.map(|text| text.parse::<usize>()) {
        Some(Ok(count)) if count > 0 => Ok(count),
        _ => Err(format!("{flag} needs a positive integer")),
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let mut script = None;
    let mut idle_threads = 8;
    let mut workers = 8;
    let mut starts = 300;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--idle-threads" => idle_threads = parse_count(arg, iter.next())?,
            "--workers" => workers = parse_count(arg, iter.next())?,
            "--starts" => starts = parse_count(arg, iter.next())?,
            _ if script.is_none() && !arg.starts_with('-') => script = Some(arg.clone()),
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    let script = script.ok_or("the script is missing")?;

    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..idle_threads {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        println!("{idle_threads} idle threads, {workers} workers, {starts} starts each");
        let mut result = Ok(());
        for method in [Method::Spawn, Method::Fork, Method::ForkSetsid] {
            result = measure(&script, method, workers, starts);
            if result.is_err() {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        result
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("spawn_cost: {message}\n{USAGE}");
            ExitCode::from(64)
        }
    }
}
