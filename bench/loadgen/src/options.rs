//! Command-line options of the load generator.
//!
//! Trusts its command line, which bench/run.sh writes; every value is still checked,
//! and an invalid one stops the program before any measurement.

use std::path::PathBuf;

pub const USAGE: &str = "\
usage: loadgen --script PATH --out DIR [options]

  --script PATH        the script every system runs (the baseline spawns it directly)
  --socket PATH        broker socket; enables the three broker systems
  --command NAME       policy command that runs the script (default: bench-exit-zero)
  --broker-pid PID     broker pid, for its CPU time and memory (from /proc)
  --cli PATH           secure_socket binary; enables the `secure_socket call` system
  --doas PATH          doas binary; enables the doas system
  --s6-sudo PATH       s6-sudo binary (default: s6-sudo, found through PATH)
  --s6-socket PATH     s6-sudod socket; enables the s6-sudo system
  --s6-pid PID         s6-ipcserver pid, for its CPU time
  --clients LIST       comma-separated concurrency levels (default: 1,8,32,200)
  --systems LIST       comma-separated systems to run, of baseline, broker-persistent,
                       broker-fresh, broker-cli, doas, s6-sudo (default: every enabled one)
  --seconds S          measured seconds per system and level (default: 3)
  --warmup S           unmeasured seconds before each measurement (default: 0.5)
  --max-calls N        stop a measurement after N measured calls (default: 100000)
  --sample-ms MS       interval of the memory sampler, in ms (default: 250)
  --invocation TEXT    the command that started the run, recorded in the results
  --revision TEXT      the source revision of the broker, recorded in the results
  --out DIR            directory for results.json, results.md and latency.svg";

/// Everything the load generator was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub script: PathBuf,
    pub socket: Option<PathBuf>,
    pub command: String,
    pub broker_pid: Option<i32>,
    pub cli: Option<PathBuf>,
    pub doas: Option<PathBuf>,
    pub s6_sudo: PathBuf,
    pub s6_socket: Option<PathBuf>,
    pub s6_pid: Option<i32>,
    pub clients: Vec<usize>,
    /// Names of the systems to run; empty runs every enabled system.
    pub systems: Vec<String>,
    pub seconds: f64,
    pub warmup: f64,
    pub max_calls: u64,
    pub sample_ms: u64,
    pub invocation: String,
    pub revision: String,
    pub out: PathBuf,
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut script = None;
    let mut out = None;
    let mut options = Options {
        script: PathBuf::new(),
        socket: None,
        command: "bench-exit-zero".to_string(),
        broker_pid: None,
        cli: None,
        doas: None,
        s6_sudo: PathBuf::from("s6-sudo"),
        s6_socket: None,
        s6_pid: None,
        clients: vec![1, 8, 32, 200],
        systems: Vec::new(),
        seconds: 3.0,
        warmup: 0.5,
        max_calls: 100_000,
        sample_ms: 250,
        invocation: String::new(),
        revision: String::new(),
        out: PathBuf::new(),
    };
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        let mut value = || {
            iter.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--script" => script = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--socket" => options.socket = Some(PathBuf::from(value()?)),
            "--command" => options.command = value()?,
            "--broker-pid" => options.broker_pid = Some(parse_pid(flag, &value()?)?),
            "--cli" => options.cli = Some(PathBuf::from(value()?)),
            "--doas" => options.doas = Some(PathBuf::from(value()?)),
            "--s6-sudo" => options.s6_sudo = PathBuf::from(value()?),
            "--s6-socket" => options.s6_socket = Some(PathBuf::from(value()?)),
            "--s6-pid" => options.s6_pid = Some(parse_pid(flag, &value()?)?),
            "--clients" => options.clients = parse_clients(&value()?)?,
            "--systems" => options.systems = parse_systems(&value()?)?,
            "--seconds" => options.seconds = parse_seconds(flag, &value()?)?,
            "--warmup" => options.warmup = parse_seconds(flag, &value()?)?,
            "--max-calls" => options.max_calls = parse_count(flag, &value()?)?,
            "--sample-ms" => options.sample_ms = parse_count(flag, &value()?)?,
            "--invocation" => options.invocation = value()?,
            "--revision" => options.revision = value()?,
            _ => return Err(format!("unknown option {flag:?}")),
        }
    }
    options.script = script.ok_or("--script is required")?;
    options.out = out.ok_or("--out is required")?;
    if options.cli.is_some() && options.socket.is_none() {
        return Err("--cli needs --socket".to_string());
    }
    Ok(options)
}

fn parse_pid(flag: &str, text: &str) -> Result<i32, String> {
    match text.parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(format!("invalid {flag} {text:?}: expected a process id")),
    }
}

fn parse_count(flag: &str, text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(format!(
            "invalid {flag} {text:?}: expected a positive integer"
        )),
    }
}

fn parse_seconds(flag: &str, text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if (0.0..=3600.0).contains(&seconds) => Ok(seconds),
        _ => Err(format!(
            "invalid {flag} {text:?}: expected seconds from 0 to 3600"
        )),
    }
}

/// Names --systems accepts, as the results name the systems.
pub const SYSTEM_NAMES: [&str; 6] = [
    "baseline",
    "broker-persistent",
    "broker-fresh",
    "broker-cli",
    "doas",
    "s6-sudo",
];

fn parse_systems(text: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for item in text.split(',') {
        let name = item.trim();
        if !SYSTEM_NAMES.contains(&name) {
            return Err(format!(
                "invalid --systems entry {name:?}: expected one of {}",
                SYSTEM_NAMES.join(", ")
            ));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

fn parse_clients(text: &str) -> Result<Vec<usize>, String> {
    let mut levels = Vec::new();
    for item in text.split(',') {
        match item.trim().parse::<usize>() {
            Ok(level) if (1..=1000).contains(&level) => levels.push(level),
            _ => {
                return Err(format!(
                    "invalid --clients entry {item:?}: expected an integer from 1 to 1000"
                ));
            }
        }
    }
    Ok(levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn parse_minimal_uses_defaults() {
        let options = parse(&strings(&["--script", "/s", "--out", "/o"])).unwrap();
        assert_eq!(options.clients, vec![1, 8, 32, 200]);
        assert!(options.socket.is_none());
        assert_eq!(options.command, "bench-exit-zero");
    }

    #[test]
    fn parse_clients_list() {
        let options = parse(&strings(&[
            "--script",
            "/s",
            "--out",
            "/o",
            "--clients",
            "2, 4",
        ]))
        .unwrap();
        assert_eq!(options.clients, vec![2, 4]);
    }

    #[test]
    fn parse_rejects_zero_clients() {
        let error = parse(&strings(&[
            "--script",
            "/s",
            "--out",
            "/o",
            "--clients",
            "0",
        ]));
        assert!(error.is_err());
    }

    #[test]
    fn parse_rejects_cli_without_socket() {
        let error = parse(&strings(&["--script", "/s", "--out", "/o", "--cli", "/b"]));
        assert!(error.is_err());
    }

    #[test]
    fn parse_rejects_unknown_system() {
        let error = parse(&strings(&[
            "--script",
            "/s",
            "--out",
            "/o",
            "--systems",
            "sudo",
        ]));
        assert!(error.is_err());
    }

    #[test]
    fn parse_requires_script() {
        assert!(parse(&strings(&["--out", "/o"])).is_err());
    }
}
