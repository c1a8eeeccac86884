//! Black-box tests of the confinement the broker claims: the identity and descriptors of
//! the parser child that serves a connection, the monitor's capabilities, what a script
//! inherits, the privacy of the audit queue, and the landlock status that children report.
//! Everything is read from outside, through /proc, `ss` and the broker's log.
//!
//! Run as root: `cargo test --release --test confinement -- --test-threads=2`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::mqueue::{MQ_OFlag, MqAttr, mq_close, mq_open, mq_unlink};
use nix::sys::stat::Mode;
use serde_json::json;

use common::{
    Broker, CLIENT_TIMEOUT, DAEMON, Fixture, User, WWW_DATA, child_pids, command_as, error_name,
    parameters, spawn, status_field, wait_for,
};

/// The default unprivileged user of parser children.
const NOBODY: User = User {
    name: "nobody",
    uid: 65534,
    gid: 65534,
};

/// Debian's interpreter: www-data cannot enter /root, where pyenv's interpreters live.
const PYTHON: &str = "/usr/bin/python3";

/// Resource limits that the `probe` command sets: policy key, the row of
/// /proc/PID/limits that shows it, and the value (seconds, bytes or a count).
const PROBE_RLIMITS: &[(&str, &str, u64)] = &[
    ("cpu_seconds", "Max cpu time", 17),
    ("open_files", "Max open files", 77),
    ("processes", "Max processes", 55),
    ("file_size", "Max file size", 1_048_576),
    ("address_space", "Max address space", 1_073_741_824),
];

/// Variables set in the broker's own environment that must never reach a script.
const BROKER_ENVIRONMENT: &[(&str, &str)] = &[
    ("LD_PRELOAD", "/lib/x86_64-linux-gnu/libm.so.6"),
    ("LD_LIBRARY_PATH", "/nonexistent/secure_socket-test/lib"),
    ("PATH", "/nonexistent/secure_socket-test/bin:/usr/bin:/bin"),
    ("IFS", ":"),
    ("BASH_ENV", "/nonexistent/secure_socket-test/bash_env"),
    ("ENV", "/nonexistent/secure_socket-test/env"),
    ("PYTHONPATH", "/nonexistent/secure_socket-test/python"),
];

/// Descriptor at which the broker inherits [`INHERITED_FILE`] from the test, without
/// close-on-exec, as a parent that leaks descriptors would leave it.
const INHERITED_FD: i32 = 100;

/// File under the fixture that the broker inherits at [`INHERITED_FD`].
const INHERITED_FILE: &str = "inherited-by-broker";

/// The PATH of every script, fixed by the policy contract.
const SCRIPT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a parser child gets to receive a new connection or report its status.
const CHILD_TIMEOUT: Duration = Duration::from_secs(10);

/// Reports the script's pid, /proc/$$/stat, environment, descriptors and limits, each
/// section after a `--- NAME` line. `ls` and `cat` read the shell's entries under /proc,
/// so the descriptors they open themselves do not show.
const PROBE_SCRIPT: &str = "#!/bin/sh
echo \"pid $$\"
echo '--- stat'
cat /proc/$$/stat
echo '--- environment'
env
echo '--- descriptors'
ls -l /proc/$$/fd
echo '--- limits'
cat /proc/$$/limits
";

static QUEUE_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Returns a queue name prefix that no other test or broker uses.
fn unique_mq_name(kind: &str) -> String {
    let number = QUEUE_COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("/ss_{kind}_{}_{number}", std::process::id())
}

/// Builds the policy: `hello` for root, and `probe` with every rlimit of [`PROBE_RLIMITS`].
fn policy_text() -> String {
    let mut text = String::from(
        r#"
[command.hello]
description = "Print a greeting"
script = "@FIXTURE@/scripts/hello"
run_as = "root"
allow_users = ["root"]
capture_output = true

[command.probe]
description = "Report the environment, descriptors, session and limits of the script"
script = "@FIXTURE@/scripts/probe"
run_as = "root"
allow_users = ["root"]
capture_output = true

[command.probe.rlimits]
"#,
    );
    for (key, _, value) in PROBE_RLIMITS {
        text.push_str(&format!("{key} = {value}\n"));
    }
    text
}

fn policy_fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.write_policy("commands", &policy_text());
    fixture.write_script("hello", "#!/bin/sh\necho hello\n");
    fixture.write_script("probe", PROBE_SCRIPT);
    fixture
}

/// Returns the target of each open descriptor of `pid`, by descriptor number. Returns an
/// empty map when the process is gone.
fn descriptor_links(pid: i32) -> BTreeMap<i32, String> {
    let mut links = BTreeMap::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return links;
    };
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        // The descriptor may be closed between read_dir and read_link.
        if let Ok(target) = fs::read_link(entry.path()) {
            links.insert(fd, target.to_string_lossy().into_owned());
        }
    }
    links
}

/// Returns N from a descriptor link of the form `socket:[N]`.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Returns the inode of the socket connected to the unix socket with inode `inode`, as
/// `ss` from iproute2 reads it from the kernel (sock_diag). None when `ss` does not list
/// `inode` (yet).
fn unix_peer_inode(inode: u64) -> Option<u64> {
    let output = Command::new("ss")
        .args(["--unix", "--all", "--numeric", "--no-header"])
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "failed to run ss, which these tests use to find the peer of a unix socket \
                 (apt-get install iproute2): {error}"
            )
        });
    assert!(
        output.status.success(),
        "ss failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let inode = inode.to_string();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            // Netid, State, Recv-Q, Send-Q, local address, local inode, peer address, peer
            // inode. The addresses of the sockets these tests look at contain no spaces.
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(5) != Some(&inode.as_str()) {
                return None;
            }
            fields.get(7)?.parse().ok()
        })
}

/// Returns the pid of the broker's child that has the other end of `client` open, and that
/// end's inode. Panics when no child has it open within [`CHILD_TIMEOUT`].
fn serving_child(broker: &Broker, client: &UnixStream) -> (i32, u64) {
    let client_inode = nix::sys::stat::fstat(client).unwrap().st_ino;
    let broker_command_line = command_line(broker.pid());
    let mut found = None;
    let assigned = wait_for(CHILD_TIMEOUT, || {
        let Some(peer) = unix_peer_inode(client_inode) else {
            return false;
        };
        let link = format!("socket:[{peer}]");
        // A child between fork and exec still has the broker's command line and a copy of
        // every descriptor of the broker, the connection included, so it is left out.
        found = child_pids(broker.pid())
            .into_iter()
            .filter(|&pid| command_line(pid) != broker_command_line)
            .find(|&pid| descriptor_links(pid).values().any(|target| *target == link))
            .map(|pid| (pid, peer));
        found.is_some()
    });
    assert!(
        assigned,
        "no child of broker pid {} holds the other end of client socket {client_inode}\n{}",
        broker.pid(),
        broker.diagnostics()
    );
    found.unwrap()
}

/// Returns the raw /proc/PID/cmdline of `pid`, empty when the process is gone.
fn command_line(pid: i32) -> Vec<u8> {
    fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
}

/// Returns the whitespace-separated values of one /proc/PID/status line.
fn status_values(pid: i32, key: &str) -> Vec<String> {
    status_field(pid, key)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Starts a broker with `params`, connects without sending anything, and checks the
/// credentials and sandbox state of the child that serves the connection.
fn assert_serving_child_identity(user: User, params: &[(&str, &str)]) {
    let fixture = policy_fixture();
    let mut params = params.to_vec();
    params.push(("request_timeout_ms", "60000"));
    let broker = Broker::start(&fixture, &params);
    let client = UnixStream::connect(broker.socket_path()).unwrap();

    let (pid, _) = serving_child(&broker, &client);

    let uid = user.uid.to_string();
    let gid = user.gid.to_string();
    assert_eq!(
        status_values(pid, "Uid"),
        [uid.as_str(); 4],
        "real, effective, saved and filesystem uid of parser child {pid}\n{}",
        broker.diagnostics()
    );
    assert_eq!(
        status_values(pid, "Gid"),
        [gid.as_str(); 4],
        "real, effective, saved and filesystem gid of parser child {pid}"
    );
    assert_eq!(
        status_values(pid, "Groups"),
        [gid.as_str()],
        "supplementary groups of parser child {pid} should be only {}'s primary group",
        user.name
    );
    assert_eq!(
        status_field(pid, "NoNewPrivs").as_deref(),
        Some("1"),
        "parser child {pid}"
    );
    assert_eq!(
        status_field(pid, "Seccomp").as_deref(),
        Some("2"),
        "parser child {pid} should run under a seccomp filter"
    );
    assert_eq!(
        status_field(pid, "CapEff").as_deref(),
        Some("0000000000000000"),
        "parser child {pid}"
    );
    assert_eq!(
        status_field(pid, "CapPrm").as_deref(),
        Some("0000000000000000"),
        "parser child {pid}"
    );
}

#[test]
fn parser_child_runs_as_nobody_by_default() {
    assert_serving_child_identity(NOBODY, &[]);
}

#[test]
fn parser_child_runs_as_configured_daemon() {
    assert_serving_child_identity(DAEMON, &[("unprivileged_user", DAEMON.name)]);
}

#[test]
fn parser_child_holds_only_client_channel_and_queue() {
    let fixture = policy_fixture();
    let mq_name = unique_mq_name("child");
    let broker = Broker::start(
        &fixture,
        &[("mq_name", &mq_name), ("request_timeout_ms", "60000")],
    );
    let client = UnixStream::connect(broker.socket_path()).unwrap();

    let (pid, client_peer) = serving_child(&broker, &client);
    let links = descriptor_links(pid);
    let client_link = format!("socket:[{client_peer}]");
    let broker_sockets: BTreeSet<u64> = descriptor_links(broker.pid())
        .values()
        .filter_map(|link| socket_inode(link))
        .collect();
    // The channel is the child's other socket, and its peer is a socket of the broker.
    let channels: Vec<&String> = links
        .values()
        .filter(|link| {
            socket_inode(link)
                .and_then(unix_peer_inode)
                .is_some_and(|peer| broker_sockets.contains(&peer))
        })
        .collect();
    let queues: Vec<&String> = links
        .values()
        .filter(|link| link.starts_with(&format!("{mq_name}.")) && link.ends_with(" (deleted)"))
        .collect();

    assert_eq!(
        links.len(),
        3,
        "parser child {pid} should hold exactly the client connection, the channel and the \
         queue: {links:?}"
    );
    assert!(
        links.values().any(|link| *link == client_link),
        "parser child {pid} does not hold the client connection {client_link}: {links:?}"
    );
    assert_eq!(
        channels.len(),
        1,
        "parser child {pid} should hold one socket connected to the broker: {links:?}, \
         broker sockets {broker_sockets:?}"
    );
    assert_eq!(
        queues.len(),
        1,
        "parser child {pid} should hold one descriptor of the unlinked queue {mq_name}.*: \
         {links:?}"
    );
}

#[test]
fn idle_parser_child_holds_only_channel_and_queue() {
    let fixture = policy_fixture();
    let mq_name = unique_mq_name("idle");
    let broker = Broker::start(&fixture, &[("mq_name", &mq_name), ("pool_size", "2")]);
    // Broker::start probes the socket with a connection, and the child that served it must
    // be gone before the pool is sampled.
    let probe_served = wait_for(CHILD_TIMEOUT, || {
        fixture.log().contains("parser child exited")
    });
    assert!(
        probe_served,
        "the child that served the start-up probe did not exit\n{}",
        broker.diagnostics()
    );
    let nobody = NOBODY.uid.to_string();
    // A child that runs as nobody under seccomp has finished its set-up.
    let is_idle_child = |pid: &i32| {
        status_values(*pid, "Uid").iter().all(|uid| *uid == nobody)
            && status_field(*pid, "Seccomp").as_deref() == Some("2")
    };
    let mut idle = Vec::new();
    let pool_filled = wait_for(CHILD_TIMEOUT, || {
        idle = child_pids(broker.pid())
            .into_iter()
            .filter(is_idle_child)
            .collect();
        idle.len() >= 2
    });
    assert!(
        pool_filled,
        "the broker did not start 2 parser children\n{}",
        broker.diagnostics()
    );

    for pid in idle {
        let links = descriptor_links(pid);
        let sockets = links.values().filter(|link| socket_inode(link).is_some());
        let queues = links
            .values()
            .filter(|link| link.starts_with(&format!("{mq_name}.")));

        assert_eq!(
            links.len(),
            2,
            "idle parser child {pid} should hold only its channel and the queue: {links:?}"
        );
        assert_eq!(sockets.count(), 1, "idle parser child {pid}: {links:?}");
        assert_eq!(queues.count(), 1, "idle parser child {pid}: {links:?}");
    }
}

#[test]
fn monitor_capabilities_are_kill_setgid_setuid() {
    let fixture = policy_fixture();
    let broker = Broker::start(&fixture, &[]);
    // An open connection keeps a session thread alive, so its sets are checked too.
    let mut connection = broker.connect();
    let reply = connection.call("org.varlink.service.GetInfo", json!({}));
    assert_eq!(error_name(&reply), None, "reply: {reply}");
    let tasks: Vec<i32> = fs::read_dir(format!("/proc/{}/task", broker.pid()))
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();

    assert!(
        tasks.contains(&broker.pid()),
        "the broker's main thread is missing from its task list {tasks:?}"
    );
    // CAP_KILL (5), CAP_SETGID (6) and CAP_SETUID (7).
    let expected_effective = "00000000000000e0";
    for tid in tasks {
        let path = format!("/proc/{}/task/{tid}/status", broker.pid());
        // A thread may exit between read_dir and this read.
        let Ok(status) = fs::read_to_string(&path) else {
            continue;
        };
        let field = |key: &str| {
            status.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                (name == key).then(|| value.trim().to_string())
            })
        };

        assert_eq!(
            field("CapEff").as_deref(),
            Some(expected_effective),
            "effective capabilities of broker thread {tid}"
        );
        assert_eq!(
            field("CapInh").as_deref(),
            Some("0000000000000000"),
            "inheritable capabilities of broker thread {tid}"
        );
        assert_eq!(
            field("CapAmb").as_deref(),
            Some("0000000000000000"),
            "ambient capabilities of broker thread {tid}"
        );
    }
}

/// The `probe` script's report on its own process.
struct ProbeReport {
    pid: i32,
    stat: String,
    environment: Vec<String>,
    /// Descriptor number to link target, from `ls -l /proc/$$/fd`.
    descriptors: BTreeMap<i32, String>,
    /// Row name of /proc/$$/limits to its soft and hard limit.
    limits: BTreeMap<String, (String, String)>,
    /// The whole output, for failure messages.
    output: String,
}

impl ProbeReport {
    fn parse(output: &str) -> ProbeReport {
        let mut sections: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut current = "header";
        for line in output.lines() {
            match line.strip_prefix("--- ") {
                Some(name) => current = name,
                None => sections.entry(current).or_default().push(line),
            }
        }
        let section = |name: &str| sections.get(name).cloned().unwrap_or_default();

        let pid = section("header")
            .iter()
            .find_map(|line| line.strip_prefix("pid ")?.parse().ok())
            .unwrap_or_else(|| panic!("the probe printed no pid:\n{output}"));
        let descriptors = section("descriptors")
            .iter()
            .filter_map(|line| {
                // `lr-x------ 1 root root 64 Jan  1 00:00 0 -> /dev/null`
                let (left, target) = line.split_once(" -> ")?;
                let fd = left.split_whitespace().last()?.parse().ok()?;
                Some((fd, target.to_string()))
            })
            .collect();
        // Rows of /proc/PID/limits: the name in 25 columns, then soft and hard limit.
        let limits = section("limits")
            .iter()
            .filter(|line| line.len() > 26 && !line.starts_with("Limit "))
            .filter_map(|line| {
                let (name, rest) = line.split_at(25);
                let mut values = rest.split_whitespace();
                let soft = values.next()?.to_string();
                let hard = values.next()?.to_string();
                Some((name.trim().to_string(), (soft, hard)))
            })
            .collect();
        ProbeReport {
            pid,
            stat: section("stat").join("\n"),
            environment: section("environment")
                .iter()
                .map(|line| line.to_string())
                .collect(),
            descriptors,
            limits,
            output: output.to_string(),
        }
    }

    /// Returns field `index` after the command name of the stat line (0 is the state).
    fn stat_field(&self, index: usize) -> Option<i32> {
        let after_name = &self.stat[self.stat.rfind(')')? + 1..];
        after_name.split_whitespace().nth(index)?.parse().ok()
    }
}

/// Starts a broker with [`BROKER_ENVIRONMENT`] in its environment and the file
/// [`INHERITED_FILE`] open without close-on-exec at [`INHERITED_FD`], runs `probe` and
/// returns the report, with the fixture and broker so that they live until the test ends.
fn run_probe() -> (Fixture, Broker, ProbeReport) {
    let fixture = policy_fixture();
    let inherited_path = fixture.path().join(INHERITED_FILE);
    fs::write(&inherited_path, "a descriptor the broker inherits\n").unwrap();
    let inherited = fs::File::open(&inherited_path).unwrap();
    let source = inherited.as_raw_fd();
    let broker = Broker::start_with_command(&fixture, &[], BROKER_ENVIRONMENT, |command| {
        // SAFETY: the closure runs between fork and exec and makes only dup2, which is
        // async-signal-safe. `source` stays open until spawn returns, because `inherited`
        // lives to the end of this function. dup2 clears close-on-exec on the copy.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(source, INHERITED_FD) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let mut connection = broker.connect();

    let reply = connection.run("probe", json!({}));

    assert_eq!(
        parameters(&reply)["exit_code"],
        json!(0),
        "reply: {reply}\n{}",
        broker.diagnostics()
    );
    let output = parameters(&reply)["stdout"].as_str().unwrap_or_default();
    let report = ProbeReport::parse(output);
    (fixture, broker, report)
}

#[test]
fn script_environment_omits_broker_variables() {
    let (_fixture, _broker, report) = run_probe();
    let value_of = |name: &str| {
        report
            .environment
            .iter()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
    };

    for (name, _) in BROKER_ENVIRONMENT {
        if *name == "PATH" {
            continue;
        }
        assert_eq!(
            value_of(name),
            None,
            "{name} reached the script\n{}",
            report.output
        );
    }
    assert_eq!(
        value_of("PATH"),
        Some(SCRIPT_PATH),
        "script PATH\n{}",
        report.output
    );
}

#[test]
fn script_inherits_only_standard_streams() {
    let (fixture, broker, report) = run_probe();
    let inherited_path = fixture.path().join(INHERITED_FILE);
    // NOTE: /bin/sh opens the script file itself to read it (dash keeps it at descriptor 10
    // or above), so that one descriptor comes from the interpreter, not from the broker.
    let script = fs::canonicalize(fixture.scripts_dir().join("probe")).unwrap();
    let script = script.to_string_lossy();
    let inherited: BTreeSet<i32> = report
        .descriptors
        .iter()
        .filter(|(_, target)| **target != script)
        .map(|(fd, _)| *fd)
        .collect();

    assert_eq!(
        descriptor_links(broker.pid()).get(&INHERITED_FD),
        Some(&inherited_path.to_string_lossy().into_owned()),
        "the broker does not hold the descriptor it was started with, so the check below \
         would prove nothing"
    );
    assert_eq!(
        inherited,
        BTreeSet::from([0, 1, 2]),
        "descriptors of the script other than its own file\n{}",
        report.output
    );
    assert_eq!(
        report.descriptors.get(&0).map(String::as_str),
        Some("/dev/null"),
        "stdin of a request without stdin\n{}",
        report.output
    );
}

#[test]
fn script_leads_own_process_group_without_terminal() {
    let (_fixture, _broker, report) = run_probe();

    // Fields after the command name: state, ppid, pgrp, session, tty_nr.
    assert_eq!(
        report.stat_field(2),
        Some(report.pid),
        "process group of the script\n{}",
        report.output
    );
    assert_eq!(
        report.stat_field(4),
        Some(0),
        "controlling terminal of the script\n{}",
        report.output
    );
}

#[test]
fn script_rlimits_match_policy() {
    let (_fixture, _broker, report) = run_probe();
    let limit = |row: &str| report.limits.get(row).cloned();

    for (key, row, value) in PROBE_RLIMITS {
        let value = value.to_string();
        assert_eq!(
            limit(row),
            Some((value.clone(), value)),
            "soft and hard {row} for policy key {key}\n{}",
            report.output
        );
    }
    assert_eq!(
        limit("Max core file size"),
        Some(("0".to_string(), "0".to_string())),
        "soft and hard core file size\n{}",
        report.output
    );
}

/// An mqueue filesystem mounted on a fresh directory under /run, unmounted on drop.
struct MqueueMount {
    path: PathBuf,
    mounted: bool,
}

impl MqueueMount {
    fn new() -> MqueueMount {
        let number = QUEUE_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(format!(
            "/run/secure_socket-test-mqueue-{}-{number}",
            std::process::id()
        ));
        fs::create_dir(&path).unwrap();
        let mut mount = MqueueMount {
            path,
            mounted: false,
        };
        let status = Command::new("mount")
            .args(["-t", "mqueue", "none"])
            .arg(&mount.path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "failed to mount mqueue on {}: {status}",
            mount.path.display()
        );
        mount.mounted = true;
        mount
    }

    /// Returns the names of the queues in the filesystem, without the leading `/`.
    fn queue_names(&self) -> Vec<String> {
        fs::read_dir(&self.path)
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for MqueueMount {
    fn drop(&mut self) {
        if self.mounted {
            match Command::new("umount").arg(&self.path).status() {
                Ok(status) if status.success() => {}
                other => {
                    // Removing entries of a mounted mqueue filesystem would delete the
                    // system's queues, so the directory stays.
                    eprintln!(
                        "failed to unmount {}: {other:?}; it stays mounted",
                        self.path.display()
                    );
                    return;
                }
            }
        }
        if let Err(error) = fs::remove_dir(&self.path) {
            eprintln!("failed to remove {}: {error}", self.path.display());
        }
    }
}

/// A queue the test creates itself, unlinked on drop.
struct ControlQueue {
    name: String,
}

impl ControlQueue {
    fn create(name: String) -> ControlQueue {
        let flags = MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_RDONLY;
        // nix 0.32 passes neither mode nor attributes to mq_open when `attr` is None, and
        // O_CREAT then reads both from garbage, so attributes are always given.
        let attributes = MqAttr::new(0, 4, 64, 0);
        let mode = Mode::S_IRUSR | Mode::S_IWUSR;
        let queue = mq_open(name.as_str(), flags, mode, Some(&attributes))
            .unwrap_or_else(|error| panic!("failed to create control queue {name}: {error}"));
        mq_close(queue).unwrap();
        ControlQueue { name }
    }
}

impl Drop for ControlQueue {
    fn drop(&mut self) {
        if let Err(error) = mq_unlink(self.name.as_str()) {
            eprintln!("failed to unlink control queue {}: {error}", self.name);
        }
    }
}

/// Returns the links of the broker's descriptors that point to a queue under `mq_name`.
fn broker_queue_links(broker: &Broker, mq_name: &str) -> BTreeMap<i32, String> {
    descriptor_links(broker.pid())
        .into_iter()
        .filter(|(_, link)| link.starts_with(&format!("{mq_name}.")))
        .collect()
}

#[test]
fn audit_queue_is_absent_from_mqueue_filesystem() {
    let fixture = policy_fixture();
    let mq_name = unique_mq_name("test");
    let broker = Broker::start(&fixture, &[("mq_name", &mq_name)]);
    let mount = MqueueMount::new();
    let control = ControlQueue::create(unique_mq_name("control"));

    let names = mount.queue_names();
    let queue_links = broker_queue_links(&broker, &mq_name);

    assert!(
        names.iter().any(|name| *name == control.name[1..]),
        "the mqueue filesystem does not list the control queue {}: {names:?}",
        control.name
    );
    assert!(
        !queue_links.is_empty(),
        "the broker holds no descriptor of a queue under {mq_name}: {:?}",
        descriptor_links(broker.pid())
    );
    assert!(
        names.iter().all(|name| !name.starts_with(&mq_name[1..])),
        "the broker's queue under {mq_name} is visible in the mqueue filesystem: {names:?}"
    );
}

#[test]
fn audit_queue_descriptor_is_private_and_unlinked() {
    let fixture = policy_fixture();
    let mq_name = unique_mq_name("test");
    let broker = Broker::start(&fixture, &[("mq_name", &mq_name)]);

    let queue_links = broker_queue_links(&broker, &mq_name);
    assert!(
        !queue_links.is_empty(),
        "the broker holds no descriptor of a queue under {mq_name}: {:?}",
        descriptor_links(broker.pid())
    );
    for (fd, link) in queue_links {
        // Metadata through the /proc link is that of the queue's inode.
        let metadata = fs::metadata(format!("/proc/{}/fd/{fd}", broker.pid())).unwrap();

        assert!(
            link.ends_with(" (deleted)"),
            "broker descriptor {fd} points to a queue name that still exists: {link}"
        );
        assert_eq!(metadata.nlink(), 0, "links of queue {link}");
        assert_eq!(metadata.mode() & 0o7777, 0o600, "mode of queue {link}");
        assert_eq!(metadata.uid(), 0, "owner of queue {link}");
    }
}

#[test]
fn audit_queue_names_differ_between_brokers() {
    let first_fixture = policy_fixture();
    let second_fixture = policy_fixture();
    let mq_name = unique_mq_name("test");
    let first = Broker::start(&first_fixture, &[("mq_name", &mq_name)]);
    let second = Broker::start(&second_fixture, &[("mq_name", &mq_name)]);

    let first_names: BTreeSet<String> =
        broker_queue_links(&first, &mq_name).into_values().collect();
    let second_names: BTreeSet<String> = broker_queue_links(&second, &mq_name)
        .into_values()
        .collect();

    assert_eq!(first_names.len(), 1, "queues of the first broker");
    assert_eq!(second_names.len(), 1, "queues of the second broker");
    assert!(
        first_names.is_disjoint(&second_names),
        "two brokers with mq_name={mq_name} use the same queue name: {first_names:?}"
    );
}

/// Opens the queue `name` read-only as `user` with Python's ctypes and returns what
/// happened: `opened`, or the errno name such as `ENOENT`.
fn mq_open_as(user: User, name: &str) -> String {
    let program = "\
import ctypes, errno, os, sys
rt = ctypes.CDLL('librt.so.1', use_errno=True)
rt.mq_open.restype = ctypes.c_int
fd = rt.mq_open(sys.argv[1].encode(), os.O_RDONLY)
print('opened' if fd >= 0 else errno.errorcode.get(ctypes.get_errno(), 'unknown'))
";
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: apt-get install python3"
    );
    let output = spawn(command_as(
        user,
        Path::new(PYTHON),
        &["-c", program, name],
        &[],
    ))
    .finish(CLIENT_TIMEOUT);
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    output.stdout.trim().to_string()
}

#[test]
fn audit_queue_rejects_open_by_configured_name() {
    let fixture = policy_fixture();
    let mq_name = unique_mq_name("test");
    let broker = Broker::start(&fixture, &[("mq_name", &mq_name)]);

    // The full name, suffix included, is read from the broker's descriptor as root.
    let full_name = broker_queue_links(&broker, &mq_name)
        .into_values()
        .next()
        .map(|link| link.trim_end_matches(" (deleted)").to_string());

    let configured_outcome = mq_open_as(WWW_DATA, &mq_name);

    assert_eq!(
        configured_outcome, "ENOENT",
        "mq_open({mq_name}) as www-data while the broker runs"
    );
    let Some(full_name) = full_name else {
        panic!("the broker holds no descriptor of a queue under {mq_name}");
    };
    assert_eq!(
        mq_open_as(WWW_DATA, &full_name),
        "ENOENT",
        "mq_open({full_name}) as www-data while the broker runs"
    );
}

#[test]
fn parser_child_reports_landlock_enforced() {
    let fixture = policy_fixture();
    let broker = Broker::start(&fixture, &[("verbosity", "debug")]);
    let mut connection = broker.connect();
    let reply = connection.call("org.varlink.service.GetInfo", json!({}));
    assert_eq!(error_name(&reply), None, "reply: {reply}");

    let status_line = || {
        fixture
            .log()
            .lines()
            .find(|line| line.contains("parser child sandbox status"))
            .map(str::to_string)
    };
    // The monitor's logger drains the queue on its own thread, a moment after the reply.
    wait_for(CHILD_TIMEOUT, || status_line().is_some());
    let line = status_line().unwrap_or_default();
    // The child may report the status through Debug (`PartiallyEnforced`) or Display
    // (`partially enforced`).
    let normalised = line.to_lowercase().replace(' ', "");

    assert!(
        !line.is_empty(),
        "the log has no parser child sandbox status line\n{}",
        broker.diagnostics()
    );
    assert!(
        !normalised.contains("notenforced"),
        "landlock is not enforced in the parser child: {line}"
    );
    assert!(
        normalised.contains("fullyenforced") || normalised.contains("partiallyenforced"),
        "the sandbox status names no landlock enforcement: {line}"
    );
}
