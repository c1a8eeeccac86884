//! CPU time and memory readings: getrusage for the load generator, /proc for the
//! servers, their children and the whole machine.
//!
//! Trusts the kernel's /proc files. A process that exits between listing and reading
//! is skipped, so every reading of another process may come back empty.

use std::fs;
use std::time::Duration;

/// CPU time of the calling process and of its waited-for children.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub own: Duration,
    pub children: Duration,
}

impl Usage {
    pub fn total(&self) -> Duration {
        self.own + self.children
    }
}

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: rusage is plain old data, so all zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a live, writable rusage for the duration of the call, and `who`
    // is one of the RUSAGE_* constants the callers pass.
    let result = unsafe { libc::getrusage(who, &mut usage) };
    if result != 0 {
        return Duration::ZERO;
    }
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

fn timeval(value: libc::timeval) -> Duration {
    Duration::from_secs(value.tv_sec.max(0) as u64)
        + Duration::from_micros(value.tv_usec.max(0) as u64)
}

/// Returns the CPU time of this process (every thread) and of its waited-for children.
pub fn own_usage() -> Usage {
    Usage {
        own: rusage(libc::RUSAGE_SELF),
        children: rusage(libc::RUSAGE_CHILDREN),
    }
}

/// Returns the CPU time of the calling thread alone.
pub fn thread_usage() -> Duration {
    rusage(libc::RUSAGE_THREAD)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

fn ticks_to_duration(ticks: u64) -> Duration {
    let per_second = clock_ticks_per_second();
    Duration::from_secs(ticks / per_second)
        + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second)
}

/// Fields of /proc/PID/stat after the command name, which may itself hold spaces and
/// parentheses; the first returned field is field 3 (state) of proc(5).
fn stat_fields(pid: i32) -> Option<Vec<u64>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    Some(
        rest.split_whitespace()
            .skip(1)
            .map(|field| field.parse::<u64>().unwrap_or(0))
            .collect(),
    )
}

/// Returns utime + stime + cutime + cstime of `pid` from /proc/PID/stat: the CPU time of
/// the process and of the children it has waited for.
pub fn process_cpu(pid: i32) -> Option<Duration> {
    let fields = stat_fields(pid)?;
    // Fields 14 to 17 of proc(5); `fields[0]` is field 4 (ppid).
    let ticks: u64 = fields.get(10..14)?.iter().sum();
    Some(ticks_to_duration(ticks))
}

/// Returns the parent pid of `pid`.
pub fn parent_pid(pid: i32) -> Option<i32> {
    let fields = stat_fields(pid)?;
    Some(*fields.first()? as i32)
}

/// Resident set size now and at its peak, and its anonymous part now, in KiB, from
/// /proc/PID/status. The rest of the RSS is file pages, such as the executable's code,
/// which every process that maps the same file shares.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub anon_kib: u64,
}

pub fn memory(pid: i32) -> Option<Memory> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut memory = Memory::default();
    for line in text.lines() {
        let value = |line: &str| {
            line.split_whitespace()
                .nth(1)
                .and_then(|number| number.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if line.starts_with("VmRSS:") {
            memory.rss_kib = value(line);
        } else if line.starts_with("VmHWM:") {
            memory.hwm_kib = value(line);
        } else if line.starts_with("RssAnon:") {
            memory.anon_kib = value(line);
        }
    }
    Some(memory)
}

/// Lists the pids whose parent is `parent`, by scanning /proc.
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| parent_pid(pid) == Some(parent))
        .collect()
}

/// Returns argv[0] of `pid`, from /proc/PID/cmdline.
pub fn argv0(pid: i32) -> Option<String> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first = bytes.split(|&byte| byte == 0).next()?;
    Some(String::from_utf8_lossy(first).into_owned())
}

/// Busy CPU time of the whole machine (all CPUs, not idle or iowait), from /proc/stat.
pub fn machine_busy() -> Option<Duration> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse::<u64>().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal; guest time is already in user.
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&index| fields.get(index))
        .sum();
    Some(ticks_to_duration(busy))
}

/// Returns the three load averages from /proc/loadavg, as text.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_of_self_is_readable() {
        assert!(process_cpu(std::process::id() as i32).is_some());
    }

    #[test]
    fn parent_pid_of_self_matches_libc() {
        let expected = std::os::unix::process::parent_id() as i32;
        assert_eq!(parent_pid(std::process::id() as i32), Some(expected));
    }

    #[test]
    fn memory_of_self_is_positive() {
        let memory = memory(std::process::id() as i32).unwrap();
        assert!(memory.rss_kib > 0);
        assert!(memory.hwm_kib >= memory.rss_kib);
    }

    #[test]
    fn ticks_convert_to_duration() {
        let per_second = clock_ticks_per_second();
        assert_eq!(ticks_to_duration(per_second * 2), Duration::from_secs(2));
    }
}
