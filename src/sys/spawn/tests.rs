//! Tests of [`spawn`] with real programs. Most need root (user switch, limits).

use std::ffi::{CStr, CString};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use super::*;

fn strings(list: &[&str]) -> Vec<CString> {
    list.iter()
        .map(|text| CString::new(*text).unwrap())
        .collect()
}

/// Builds a plan that runs `argv` in `/` with an empty environment and nothing else.
fn plan<'a>(argv: &'a [CString], descriptors: &'a [(BorrowedFd<'a>, RawFd)]) -> Plan<'a> {
    Plan {
        program: argv[0].as_c_str(),
        argv,
        env: &[],
        directory: c"/",
        descriptors,
        new_process_group: false,
        rlimits: &[],
        credentials: None,
        kill_with_parent: false,
    }
}

/// Returns the credentials of user and group 65534 (nobody) with `groups`.
fn nobody(groups: &[u32]) -> Credentials<'_> {
    Credentials {
        uid: 65534,
        gid: 65534,
        groups,
        capabilities: ScriptCapabilities::Default,
    }
}

/// A pipe for a program's standard output.
struct Output {
    read_end: OwnedFd,
    write_end: OwnedFd,
}

impl Output {
    fn new() -> Output {
        let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC).unwrap();
        Output {
            read_end,
            write_end,
        }
    }

    /// Returns the plan entry that makes the pipe the program's standard output.
    fn as_stdout(&self) -> (BorrowedFd<'_>, RawFd) {
        (self.write_end.as_fd(), 1)
    }
}

/// Reads everything the program printed on `output` and reaps it.
fn finish(process: Result<Process, SpawnError>, output: Output) -> (String, Option<i32>) {
    let mut process = process.unwrap();
    drop(output.write_end);
    let mut text = String::new();
    std::fs::File::from(output.read_end)
        .read_to_string(&mut text)
        .unwrap();
    (text, process.wait().unwrap().code())
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(|value| value.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn spawn_runs_program_and_reports_exit_code() {
    let argv = strings(&["/bin/sh", "-c", "exit 7"]);
    let mut process = spawn(&plan(&argv, &[])).unwrap();
    assert_eq!(process.wait().unwrap().code(), Some(7));
}

#[test]
fn spawn_reports_missing_program_as_exec_step() {
    let argv = strings(&["/nonexistent/secure_socket-test-program"]);
    let error = spawn(&plan(&argv, &[])).unwrap_err();
    assert!(
        matches!(
            error,
            SpawnError::Child {
                step: Step::Exec,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn spawn_reports_missing_program_errno() {
    let argv = strings(&["/nonexistent/secure_socket-test-program"]);
    let error = spawn(&plan(&argv, &[])).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn spawn_passes_arguments_and_environment_exactly() {
    let argv = strings(&[
        "/bin/sh",
        "-c",
        "printf '%s|%s|%s' \"$0\" \"$1\" \"$GREETING\"",
        "zero",
        "one two",
    ]);
    let env = strings(&["GREETING=hello world"]);
    let output = Output::new();
    let descriptors = [output.as_stdout()];
    let mut plan = plan(&argv, &descriptors);
    plan.env = &env;
    assert_eq!(finish(spawn(&plan), output).0, "zero|one two|hello world");
}

#[test]
fn spawn_switches_user_and_groups() {
    let argv = strings(&["/bin/sh", "-c", "id -u; id -g; id -G"]);
    let output = Output::new();
    let descriptors = [output.as_stdout()];
    let mut plan = plan(&argv, &descriptors);
    plan.credentials = Some(nobody(&[4]));
    assert_eq!(finish(spawn(&plan), output).0, "65534\n65534\n65534 4\n");
}

#[test]
fn spawn_leaves_credentials_of_other_threads_unchanged() {
    // glibc's setresuid changes every thread of a process. The raw call in the child
    // must not reach the threads of the process that spawned it.
    let (ready, parked) = std::sync::mpsc::channel::<libc::pid_t>();
    let (release, wait_release) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        // SAFETY: gettid takes no arguments.
        ready.send(unsafe { libc::gettid() }).unwrap();
        wait_release.recv().unwrap();
    });
    let tid = parked.recv().unwrap();
    let argv = strings(&["/bin/true"]);
    let mut plan = plan(&argv, &[]);
    plan.credentials = Some(nobody(&[]));
    spawn(&plan).unwrap().wait().unwrap();
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    release.send(()).unwrap();
    thread.join().unwrap();
    assert_eq!(status_field(&status, "Uid:"), "0\t0\t0\t0");
}

#[test]
fn spawn_leaves_credentials_of_spawning_thread_unchanged() {
    let argv = strings(&["/bin/true"]);
    let mut plan = plan(&argv, &[]);
    plan.credentials = Some(nobody(&[]));
    spawn(&plan).unwrap().wait().unwrap();
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert_eq!(status_field(&status, "Uid:"), "0\t0\t0\t0");
}

#[test]
fn spawn_clears_signal_mask_and_ignored() {
    // The test harness, like the monitor, ignores SIGPIPE (and here signal 32); the
    // program must start with no signal ignored or blocked.
    let output = Output::new();
    let descriptors = [output.as_stdout()];
    let argv = strings(&["/bin/cat", "/proc/self/status"]);
    let (status, _) = finish(spawn(&plan(&argv, &descriptors)), output);
    assert_eq!(status_field(&status, "SigBlk:"), "0000000000000000");
    assert_eq!(status_field(&status, "SigIgn:"), "0000000000000000");
}

#[test]
fn spawn_closes_descriptors_not_in_plan() {
    let stray = std::fs::File::open("/dev/null").unwrap();
    let stray: OwnedFd = stray.into();
    // A descriptor without close-on-exec, as one inherited from outside would be.
    let leaked = nix::unistd::dup(stray.as_fd()).unwrap();
    let output = Output::new();
    let descriptors = [output.as_stdout()];
    let argv = strings(&["/bin/sh", "-c", "ls /proc/self/fd"]);
    let (listing, _) = finish(spawn(&plan(&argv, &descriptors)), output);
    let numbers: Vec<&str> = listing.lines().collect();
    assert!(
        !numbers.contains(&leaked.as_raw_fd().to_string().as_str()),
        "{listing}"
    );
}

#[test]
fn spawn_installs_descriptor_at_target_number() {
    let file = std::fs::File::open("/etc/hostname").unwrap();
    let file: OwnedFd = file.into();
    let argv = strings(&["/bin/sh", "-c", "test -r /proc/self/fd/7 && echo open"]);
    let output = Output::new();
    let descriptors = [output.as_stdout(), (file.as_fd(), 7)];
    assert_eq!(
        finish(spawn(&plan(&argv, &descriptors)), output).0,
        "open\n"
    );
}

#[test]
fn spawn_starts_new_process_group_when_asked() {
    let argv = strings(&["/bin/sh", "-c", "cut -d' ' -f5 /proc/$$/stat; echo $$"]);
    let output = Output::new();
    let descriptors = [output.as_stdout()];
    let mut plan = plan(&argv, &descriptors);
    plan.new_process_group = true;
    let (text, _) = finish(spawn(&plan), output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), lines.get(1), "{text}");
}

#[test]
fn spawn_sets_resource_limits() {
    let argv = strings(&["/bin/sh", "-c", "ulimit -n"]);
    let output = Output::new();
    let descriptors = [output.as_stdout()];
    let mut plan = plan(&argv, &descriptors);
    let limits = [(libc::RLIMIT_NOFILE, 17)];
    plan.rlimits = &limits;
    assert_eq!(finish(spawn(&plan), output).0, "17\n");
}

#[test]
fn spawn_reports_failed_user_switch_as_user_step() {
    // A group list longer than the kernel's NGROUPS_MAX makes setgroups fail.
    let groups = vec![1u32; 65_537];
    let argv = strings(&["/bin/true"]);
    let mut plan = plan(&argv, &[]);
    plan.credentials = Some(nobody(&groups));
    let error = spawn(&plan).unwrap_err();
    assert!(
        matches!(
            error,
            SpawnError::Child {
                step: Step::User,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn spawn_from_many_threads_at_once_succeeds() {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let argv = strings(&["/bin/true"]);
                for _ in 0..50 {
                    // Allocation on other threads while children share the memory.
                    let noise = vec![1u8; 4096];
                    let mut process = spawn(&plan(&argv, &[])).unwrap();
                    assert_eq!(process.wait().unwrap().code(), Some(0));
                    drop(noise);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn process_kill_ends_running_program() {
    let argv = strings(&["/bin/sleep", "30"]);
    let mut process = spawn(&plan(&argv, &[])).unwrap();
    process.kill().unwrap();
    assert_eq!(process.wait().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn process_try_wait_is_none_while_running() {
    let argv = strings(&["/bin/sleep", "30"]);
    let mut process = spawn(&plan(&argv, &[])).unwrap();
    let running = process.try_wait().unwrap();
    process.kill().unwrap();
    process.wait().unwrap();
    assert_eq!(running, None);
}

#[test]
fn step_codes_round_trip() {
    for step in Step::ALL {
        assert_eq!(Step::from_code(step.code()), Some(step));
    }
}

#[test]
fn plan_directory_is_used() {
    let argv = strings(&["/bin/sh", "-c", "pwd"]);
    let output = Output::new();
    let descriptors = [output.as_stdout()];
    let mut plan = plan(&argv, &descriptors);
    let directory: &CStr = c"/tmp";
    plan.directory = directory;
    assert_eq!(finish(spawn(&plan), output).0, "/tmp\n");
}

/// Runs `/bin/sh` printing its controlling terminal's device number (field 7 of
/// /proc/PID/stat, 0 for none) from a forked process that leads a session with a
/// pseudo-terminal as its controlling terminal. Returns what the script printed.
fn terminal_of_script(new_process_group: bool) -> String {
    let output = Output::new();
    // SAFETY: the forked child only runs the code below and ends with _exit. glibc's fork
    // resets the allocator's locks in the child, so the allocation in `spawn` is safe.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let code = (|| -> Option<i32> {
                nix::unistd::setsid().ok()?;
                // SAFETY: plain libc calls on a descriptor this process owns.
                let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
                // SAFETY: as above.
                if master < 0 || unsafe { libc::grantpt(master) } != 0 {
                    return None;
                }
                // SAFETY: as above.
                if unsafe { libc::unlockpt(master) } != 0 {
                    return None;
                }
                let mut name = [0 as libc::c_char; 64];
                // SAFETY: `name` is a live buffer of the length passed.
                if unsafe { libc::ptsname_r(master, name.as_mut_ptr(), name.len()) } != 0 {
                    return None;
                }
                // A session leader opening a terminal without O_NOCTTY acquires it.
                // SAFETY: `name` is NUL-terminated by ptsname_r.
                let slave = unsafe { libc::open(name.as_ptr(), libc::O_RDWR) };
                if slave < 0 {
                    return None;
                }
                let argv = strings(&["/bin/sh", "-c", "cut -d' ' -f7 /proc/$$/stat"]);
                let descriptors = [output.as_stdout()];
                let mut plan = plan(&argv, &descriptors);
                plan.new_process_group = new_process_group;
                let mut process = spawn(&plan).ok()?;
                process.wait().ok()?.code()
            })();
            // SAFETY: _exit ends the forked child without running the test harness.
            unsafe { libc::_exit(code.unwrap_or(99)) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(output.write_end);
            let mut text = String::new();
            std::fs::File::from(output.read_end)
                .read_to_string(&mut text)
                .unwrap();
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            text.trim().to_string()
        }
    }
}

#[test]
fn spawn_keeps_terminal_without_process_group() {
    assert_ne!(terminal_of_script(false), "0");
}

#[test]
fn spawn_detaches_terminal_with_process_group() {
    assert_eq!(terminal_of_script(true), "0");
}
