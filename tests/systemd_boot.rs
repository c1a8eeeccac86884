//! Runs the installed units under a real systemd. The test boots /lib/systemd/systemd as
//! PID 1 of new PID, mount, UTS, IPC, network and cgroup namespaces and starts
//! secure_socket.socket. It calls the broker as www-data through the client and checks
//! that the service started on demand, that its audit record reached the journal, and
//! that `systemctl stop` ends it within TimeoutStopSec.
//!
//! The test changes nothing on the host outside its scratch directory and its control
//! group. /etc and /usr/local are overlays whose upper layers are the install.sh staging
//! directory, /etc/systemd/system holds only our units, and /run, /tmp, /var/tmp and
//! /var/lib/systemd are fresh tmpfs mounts. /dev is a tmpfs with a few device nodes bound
//! in. /proc/sys and /sys are read-only, so no process inside can change a kernel setting
//! through them. systemd loads units only from our directories (SYSTEMD_UNIT_PATH) and
//! runs no generators. The control group tree is a cgroup2 group that the test creates
//! below its own and removes at the end.
//!
//! Skips with a printed reason when /lib/systemd/systemd is missing.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ProcessOutput, spawn, wait_for};

const SYSTEMD: &str = "/lib/systemd/systemd";

/// The units of the host's systemd that a minimal boot needs: the targets that every
/// service depends on by default, and the journal, which log_destination=journald uses.
const HOST_UNITS: [&str; 16] = [
    "sysinit.target",
    "basic.target",
    "sockets.target",
    "shutdown.target",
    "local-fs.target",
    "swap.target",
    "paths.target",
    "timers.target",
    "slices.target",
    "exit.target",
    "final.target",
    "umount.target",
    "systemd-exit.service",
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
];

/// The target systemd boots into: only the journal, so that the test starts our units.
const BOOT_TARGET: &str = "\
[Unit]
Description=secure_socket boot test
Wants=systemd-journald.socket systemd-journald.service
";

/// A volatile journal that neither reads nor writes the host's kernel log.
const JOURNALD_CONFIG: &str = "\
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
";

/// Runs as PID 1 of the new namespaces with the scratch directory as $1, prepares the
/// mounts described at the top of this file, and then becomes systemd. unshare has made
/// every mount private, so none of these mounts reaches the host.
const INIT_SCRIPT: &str = r#"#!/bin/sh
set -eu
scratch=$1

mount -t overlay overlay \
    -o "lowerdir=/etc,upperdir=$scratch/destdir/etc,workdir=$scratch/work-etc" /etc
mount --bind "$scratch/destdir/etc/systemd/system" /etc/systemd/system
mount -t overlay overlay \
    -o "lowerdir=/usr/local,upperdir=$scratch/destdir/usr/local,workdir=$scratch/work-local" \
    /usr/local
# install.sh leaves the user to the package when DESTDIR is set. useradd writes to the
# /etc overlay only.
if ! id secure-socket >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin secure-socket
fi

mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
if [ -e /proc/sysrq-trigger ]; then
    mount --bind /proc/sysrq-trigger /proc/sysrq-trigger
    mount -o remount,bind,ro /proc/sysrq-trigger
fi
mount --bind /sys /sys
mount -o remount,bind,ro,nosuid,nodev,noexec /sys
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup

dev=$scratch/dev
mkdir "$dev"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$dev"
for node in null zero full random urandom tty; do
    touch "$dev/$node"
    mount --bind "/dev/$node" "$dev/$node"
done
touch "$dev/console"
mount --bind "$scratch/console.log" "$dev/console"
mkdir "$dev/pts" "$dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$dev/pts"
ln -s pts/ptmx "$dev/ptmx"
ln -s /proc/self/fd "$dev/fd"
mount --move "$dev" /dev

for dir in /run /tmp /var/tmp /var/lib/systemd; do
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$dir"
done
chmod 1777 /tmp /var/tmp

export container=secure_socket_test
export SYSTEMD_UNIT_PATH="/etc/systemd/system:$scratch/units"
export SYSTEMD_GENERATOR_PATH="$scratch/generators"
export SYSTEMD_ENVIRONMENT_GENERATOR_PATH="$scratch/generators"
exec /lib/systemd/systemd --unit=secure-socket-test.target --log-target=journal
"#;

/// How long systemd gets to reach the running state.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long systemd gets to exit after `systemctl exit` before its PID 1 is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Returns the mount point of the cgroup2 hierarchy and this process's group in it.
fn own_cgroup2_directory() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    // Fields: id, parent, major:minor, root, mount point, options, optional fields, "-",
    // file system type, source, super block options.
    let mount_point = mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let file_system = after.split_whitespace().next()?;
            (file_system == "cgroup2").then(|| before.split_whitespace().nth(4))?
        })
        .expect("no cgroup2 file system is mounted");
    let cgroup = fs::read_to_string("/proc/self/cgroup").unwrap();
    let own_group = cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .expect("/proc/self/cgroup has no cgroup2 line");
    Path::new(mount_point).join(own_group.trim_start_matches('/'))
}

/// The booted systemd and everything the test created for it. Drop stops systemd, kills
/// its PID 1 by pid when it does not exit, and removes the control groups and the scratch
/// directory.
struct BootedSystemd {
    scratch: PathBuf,
    cgroup: PathBuf,
    /// unshare, which the test started and which waits for PID 1 of the namespaces.
    unshare: Child,
    /// PID 1 of the namespaces, as numbered in the test's own PID namespace.
    init_pid: i32,
}

impl BootedSystemd {
    /// Installs with install.sh into a scratch directory, boots systemd in new namespaces
    /// and waits until it is running.
    fn boot() -> BootedSystemd {
        common::require_root();
        // Not below the target directory: a checkout under /tmp, /run or /var/tmp would
        // vanish behind the private mounts that the init script puts there.
        let scratch = Path::new("/var/lib")
            .join(format!("secure_socket-systemd-boot-{}", std::process::id()));
        if scratch.exists() {
            fs::remove_dir_all(&scratch).unwrap();
        }
        prepare_scratch(&scratch);

        let cgroup =
            own_cgroup2_directory().join(format!("secure_socket-boot-test-{}", std::process::id()));
        fs::create_dir(&cgroup)
            .unwrap_or_else(|error| panic!("failed to create {}: {error}", cgroup.display()));

        // The shell moves itself into the new group before unshare creates the cgroup
        // namespace, so that the group becomes the namespace's root.
        let output = fs::File::create(scratch.join("unshare.log")).unwrap();
        let unshare = Command::new("/bin/sh")
            .arg("-c")
            .arg(
                "echo $$ > \"$0/cgroup.procs\" && exec unshare --pid --fork --mount \
                 --mount-proc --uts --ipc --net --cgroup \"$1\" \"$2\"",
            )
            .arg(&cgroup)
            .arg(scratch.join("init.sh"))
            .arg(&scratch)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap();
        let unshare_pid = unshare.id() as i32;

        let mut init_pid = None;
        wait_for(BOOT_TIMEOUT, || {
            init_pid = common::child_pids(unshare_pid).first().copied();
            init_pid.is_some()
        });
        let mut booted = BootedSystemd {
            scratch,
            cgroup,
            unshare,
            init_pid: init_pid.unwrap_or(0),
        };
        assert!(
            booted.init_pid != 0,
            "unshare started no process\n{}",
            booted.diagnostics()
        );

        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let state = booted.run(&["systemctl", "is-system-running"]);
            if state.stdout.trim() == "running" {
                break;
            }
            if Instant::now() >= deadline || booted.unshare.try_wait().unwrap().is_some() {
                panic!(
                    "systemd did not reach the running state\n{}\n{}",
                    state.describe(),
                    booted.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        booted
    }

    /// Builds `nsenter` into every namespace of the booted systemd, running `args`.
    fn nsenter(&self, extra: &[&str], args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg("--target")
            .arg(self.init_pid.to_string())
            .args(["--mount", "--pid", "--net", "--uts", "--ipc", "--cgroup"])
            .args(extra)
            .arg("--")
            .args(args)
            .current_dir("/");
        command
    }

    /// Runs `args` as root inside the namespaces and waits for it.
    fn run(&self, args: &[&str]) -> ProcessOutput {
        spawn(self.nsenter(&[], args)).finish(common::CLIENT_TIMEOUT)
    }

    /// Runs `args` as www-data (uid and gid 33, no supplementary groups) inside the
    /// namespaces and waits for it.
    fn run_as_www_data(&self, args: &[&str]) -> ProcessOutput {
        let user = common::WWW_DATA;
        let uid = user.uid.to_string();
        let gid = user.gid.to_string();
        let extra = ["--setuid", uid.as_str(), "--setgid", gid.as_str()];
        spawn(self.nsenter(&extra, args)).finish(common::CLIENT_TIMEOUT)
    }

    /// Returns the output of `systemctl show UNIT -p PROPERTY --value`.
    fn property(&self, unit: &str, property: &str) -> String {
        let output = self.run(&["systemctl", "show", unit, "-p", property, "--value"]);
        assert_eq!(output.code(), Some(0), "{}", output.describe());
        output.stdout.trim().to_string()
    }

    /// Returns the journal of this boot and unshare's output, for failure messages.
    fn diagnostics(&self) -> String {
        let journal = if self.init_pid != 0 && common::process_is_alive(self.init_pid) {
            let output = spawn(self.nsenter(&[], &["journalctl", "-b", "--no-pager"]))
                .finish(common::CLIENT_TIMEOUT);
            output.stdout
        } else {
            "<systemd is not running>".to_string()
        };
        let unshare = fs::read_to_string(self.scratch.join("unshare.log"))
            .unwrap_or_else(|error| format!("<unshare.log: {error}>"));
        format!("--- journal ---\n{journal}\n--- unshare ---\n{unshare}")
    }
}

impl Drop for BootedSystemd {
    fn drop(&mut self) {
        if self.init_pid != 0 && common::process_is_alive(self.init_pid) {
            // `systemctl exit` stops every unit and ends a systemd that runs in a
            // container, which takes its namespaces with it.
            let output = spawn(self.nsenter(&[], &["systemctl", "exit", "0"]))
                .finish(common::CLIENT_TIMEOUT);
            if output.code() != Some(0) {
                eprintln!("systemctl exit failed\n{}", output.describe());
            }
        }
        let exited = wait_for(EXIT_TIMEOUT, || {
            matches!(self.unshare.try_wait(), Ok(Some(_)))
        });
        if !exited {
            eprintln!("systemd did not exit within {EXIT_TIMEOUT:?}; killing its PID 1");
            // Killing PID 1 of a PID namespace kills every process in it.
            let pid = nix::unistd::Pid::from_raw(self.init_pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = self.unshare.wait();
        }

        remove_cgroup_tree(&self.cgroup);
        if let Err(error) = fs::remove_dir_all(&self.scratch) {
            eprintln!("failed to remove {}: {error}", self.scratch.display());
        }
    }
}

/// Removes a control group and every group below it, deepest first. A group can be
/// removed only once its processes are gone, so each removal is retried for a while.
fn remove_cgroup_tree(group: &Path) {
    let Ok(entries) = fs::read_dir(group) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    let removed = wait_for(Duration::from_secs(5), || fs::remove_dir(group).is_ok());
    if !removed {
        eprintln!("failed to remove the control group {}", group.display());
    }
}

/// Lays out the scratch directory: the install.sh staging directory with a journald
/// drop-in, the overlay work directories, the host units of [`HOST_UNITS`] and the boot
/// target, an empty generator directory, the console file and the init script.
fn prepare_scratch(scratch: &Path) {
    fs::create_dir_all(scratch).unwrap();
    let destdir = scratch.join("destdir");
    fs::create_dir(&destdir).unwrap();
    let output = common::run_install_script(&destdir);
    assert_eq!(output.code(), Some(0), "{}", output.describe());

    let journald_dropins = destdir.join("etc/systemd/journald.conf.d");
    fs::create_dir_all(&journald_dropins).unwrap();
    fs::write(journald_dropins.join("test.conf"), JOURNALD_CONFIG).unwrap();

    for dir in ["work-etc", "work-local", "units", "generators"] {
        fs::create_dir(scratch.join(dir)).unwrap();
    }
    for unit in HOST_UNITS {
        let source = Path::new("/lib/systemd/system").join(unit);
        fs::copy(&source, scratch.join("units").join(unit))
            .unwrap_or_else(|error| panic!("failed to copy {}: {error}", source.display()));
    }
    fs::write(scratch.join("units/secure-socket-test.target"), BOOT_TARGET).unwrap();

    fs::write(scratch.join("console.log"), "").unwrap();
    let init = scratch.join("init.sh");
    fs::write(&init, INIT_SCRIPT).unwrap();
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Converts a systemd time span such as `30s` or `1min 30s`, the form in which
/// `systemctl show` prints TimeoutStopUSec, with `systemd-analyze timespan`.
fn timespan(text: &str) -> Duration {
    let output = {
        let mut command = Command::new("systemd-analyze");
        command.args(["timespan", text]);
        spawn(command).finish(common::CLIENT_TIMEOUT)
    };
    assert_eq!(output.code(), Some(0), "{}", output.describe());
    let microseconds = output
        .stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("μs:"))
        .unwrap_or_else(|| panic!("no μs line in {}", output.describe()))
        .trim()
        .parse()
        .unwrap();
    Duration::from_micros(microseconds)
}

#[test]
fn socket_activation_under_systemd() {
    if !Path::new(SYSTEMD).exists() {
        eprintln!("skipped: {SYSTEMD} is missing (Debian package systemd)");
        return;
    }
    let systemd = BootedSystemd::boot();

    let start = systemd.run(&["systemctl", "start", "secure_socket.socket"]);
    assert_eq!(
        start.code(),
        Some(0),
        "{}\n{}",
        start.describe(),
        systemd.diagnostics()
    );
    let socket = systemd.run(&["stat", "-c", "%a %U %G", "/run/secure_socket/broker.sock"]);
    assert_eq!(
        socket.stdout.trim(),
        "660 root www-data",
        "{}",
        socket.describe()
    );
    assert_eq!(
        systemd.property("secure_socket.service", "ActiveState"),
        "inactive",
        "the service ran before any connection"
    );

    let call = systemd.run_as_www_data(&[
        "/usr/local/bin/secure_socket",
        "call",
        "--socket",
        "/run/secure_socket/broker.sock",
        "--json",
        "report-caller",
    ]);
    assert_eq!(
        call.code(),
        Some(0),
        "{}\n{}",
        call.describe(),
        systemd.diagnostics()
    );
    let reply = call.stdout_json();
    let reply = common::json_reply_parameters(&reply);
    assert_eq!(reply["exit_code"], 0, "{reply}");
    let stdout = reply["stdout"].as_str().unwrap();
    assert!(stdout.contains("caller uid: 33"), "{stdout}");
    let request_id = reply["request_id"].as_str().unwrap().to_string();
    assert_eq!(
        systemd.property("secure_socket.service", "ActiveState"),
        "active",
        "the connection did not start the service"
    );

    // The journal may store the entry a moment after the reply was sent.
    let match_request = format!("REQUEST_ID={request_id}");
    let mut record = None;
    wait_for(Duration::from_secs(10), || {
        let output = systemd.run(&[
            "journalctl",
            "-u",
            "secure_socket.service",
            &match_request,
            "-o",
            "json",
            "--no-pager",
        ]);
        record = output.stdout.lines().next().map(str::to_string);
        record.is_some()
    });
    let record = record.unwrap_or_else(|| {
        panic!(
            "no journal entry with {match_request}\n{}",
            systemd.diagnostics()
        )
    });
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["COMMAND"], "report-caller", "{record}");
    assert_eq!(record["PEER_UID"], "33", "{record}");
    assert_eq!(record["DECISION"], "allowed", "{record}");
    assert_eq!(record["EXIT_CODE"], "0", "{record}");
    assert_eq!(record["SYSLOG_IDENTIFIER"], "secure_socket", "{record}");

    let timeout = timespan(&systemd.property("secure_socket.service", "TimeoutStopUSec"));
    let started = Instant::now();
    let stop = systemd.run(&["systemctl", "stop", "secure_socket.service"]);
    let elapsed = started.elapsed();
    assert_eq!(stop.code(), Some(0), "{}", stop.describe());
    assert!(
        elapsed < timeout,
        "systemctl stop took {elapsed:?}, TimeoutStopSec is {timeout:?}"
    );
    assert_eq!(
        systemd.property("secure_socket.service", "ActiveState"),
        "inactive"
    );
    assert_eq!(
        systemd.property("secure_socket.service", "Result"),
        "success"
    );
    assert_eq!(
        systemd.property("secure_socket.service", "ExecMainStatus"),
        "0"
    );

    // Without the socket unit the broker creates the socket itself, in the runtime
    // directory that systemd makes, and `systemctl reload` reaches it as SIGHUP.
    let stop_socket = systemd.run(&["systemctl", "stop", "secure_socket.socket"]);
    assert_eq!(stop_socket.code(), Some(0), "{}", stop_socket.describe());
    let socket_exists = systemd.run(&["test", "-e", "/run/secure_socket/broker.sock"]);
    assert_eq!(
        socket_exists.code(),
        Some(1),
        "RemoveOnStop= left the socket behind"
    );
    let start_service = systemd.run(&["systemctl", "start", "secure_socket.service"]);
    assert_eq!(
        start_service.code(),
        Some(0),
        "{}\n{}",
        start_service.describe(),
        systemd.diagnostics()
    );
    let mut direct_call = None;
    wait_for(Duration::from_secs(10), || {
        let output = systemd.run_as_www_data(&[
            "/usr/local/bin/secure_socket",
            "call",
            "--socket",
            "/run/secure_socket/broker.sock",
            "report-caller",
        ]);
        let served = output.code() == Some(0);
        direct_call = Some(output);
        served
    });
    let direct_call = direct_call.unwrap();
    assert_eq!(
        direct_call.code(),
        Some(0),
        "{}\n{}",
        direct_call.describe(),
        systemd.diagnostics()
    );

    let reload = systemd.run(&["systemctl", "reload", "secure_socket.service"]);
    assert_eq!(reload.code(), Some(0), "{}", reload.describe());
    let reloaded = wait_for(Duration::from_secs(10), || {
        let output = systemd.run(&[
            "journalctl",
            "-u",
            "secure_socket.service",
            "MESSAGE=policy reloaded",
            "-o",
            "cat",
            "--no-pager",
        ]);
        !output.stdout.trim().is_empty()
    });
    assert!(
        reloaded,
        "no \"policy reloaded\" entry after systemctl reload\n{}",
        systemd.diagnostics()
    );
    let stop_direct = systemd.run(&["systemctl", "stop", "secure_socket.service"]);
    assert_eq!(stop_direct.code(), Some(0), "{}", stop_direct.describe());
    assert_eq!(
        systemd.property("secure_socket.service", "Result"),
        "success"
    );
}
