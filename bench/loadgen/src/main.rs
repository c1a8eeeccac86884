//! Load generator of the secure_socket benchmark.
//!
//! Runs the same do-nothing script directly (the baseline), through the broker over a
//! persistent and a fresh varlink connection and through its command-line client, and
//! through doas and s6-sudo when asked, at several concurrency levels. Prints a table
//! with ratios against the baseline of the same run and writes results.json,
//! results.md and latency.svg. bench/run.sh starts it as the unprivileged caller after
//! setting up the servers; it trusts its command line.

mod cell;
mod options;
mod procfs;
mod report;
mod svg;
mod systems;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cell::{CellResult, Plan};
use report::{Machine, Run};
use systems::System;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        println!("{}", options::USAGE);
        return ExitCode::SUCCESS;
    }
    let options = match options::parse(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("loadgen: {message}\n{}", options::USAGE);
            return ExitCode::from(64);
        }
    };
    let plan = Plan {
        warmup: Duration::from_secs_f64(options.warmup),
        window: Duration::from_secs_f64(options.seconds),
        max_calls: options.max_calls,
        sample_interval: Duration::from_millis(options.sample_ms),
    };
    let systems = System::enabled(&options);
    let mut machine = describe_machine();
    println!(
        "loadgen: {} on {} CPUs ({}), kernel {}, uid {}, load average {}, revision {}",
        machine.date_utc,
        machine.cpus,
        machine.cpu_model,
        machine.kernel,
        machine.uid,
        machine.load_before,
        options.revision,
    );

    // Each level runs every system in turn, so that the baseline and the systems compared
    // with it see the same background load as closely as possible.
    let mut cells: Vec<CellResult> = Vec::new();
    for &clients in &options.clients {
        for system in &systems {
            let result = cell::run(system, clients, system.server_pid(&options), &plan);
            print_progress(&result);
            cells.push(result);
        }
    }
    machine.load_after = procfs::load_average();

    let run = Run {
        machine,
        invocation: options.invocation.clone(),
        revision: options.revision.clone(),
        seconds: options.seconds,
        warmup: options.warmup,
        max_calls: options.max_calls,
        cells,
    };
    let markdown = run.markdown();
    println!();
    print!("{markdown}");
    let written = write_file(&options.out.join("results.md"), &markdown)
        .and_then(|()| write_file(&options.out.join("results.json"), &run.json()))
        .and_then(|()| write_file(&options.out.join("latency.svg"), &svg::latency_plot(&run)));
    match written {
        Ok(()) => {
            println!();
            println!(
                "loadgen: wrote results.md, results.json and latency.svg to {}",
                options.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("loadgen: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_progress(result: &CellResult) {
    let server = result
        .server_cpu_us
        .map_or(String::new(), |cpu| format!(" + server {cpu:.0}"));
    println!(
        "{:>18} {:>3} clients: {:>7.0} calls/s, p50 {:.3} ms, p99 {:.3} ms, {} errors, \
         CPU/call client {:.0}{server} µs, other load {:.0} %",
        result.system,
        result.clients,
        result.throughput,
        result.latency.p50 / 1000.0,
        result.latency.p99 / 1000.0,
        result.errors,
        result.client_cpu_us,
        result.other_load * 100.0,
    );
    let _ = std::io::stdout().flush();
}

fn write_file(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents)
        .map_err(|error| format!("failed to write {}: {error}", path.display()))
}

fn describe_machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    Machine {
        cpu_model,
        cpus: std::thread::available_parallelism().map_or(1, |count| count.get()),
        kernel,
        date_utc: utc_now(),
        load_before: procfs::load_average(),
        load_after: String::new(),
        // SAFETY: geteuid has no preconditions and cannot fail.
        uid: unsafe { libc::geteuid() },
    }
}

/// Returns the current time as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let minute_of_day = (seconds % 86_400) / 60;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minute_of_day / 60,
        minute_of_day % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day), by the
/// era-based method Howard Hinnant describes in "chrono-Compatible Low-Level Date
/// Algorithms".
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_from_days_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_819), (2027, 1, 1));
    }
}
