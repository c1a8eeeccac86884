//! Runs install.sh into a staging directory (DESTDIR) inside a fresh fixture and checks
//! the layout: every file and directory, its owner and mode, the example policy with its
//! script paths rewritten, and the systemd units. The staging directory keeps the tests
//! away from a real installation under /usr/local and /etc.
//!
//! install.sh installs the binary that cargo built for the tests (BINARY=...), so the
//! tests do not run a release build of their own.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BROKER_BINARY, FIXTURE_PLACEHOLDER, Fixture, ProcessOutput, spawn};

const REPOSITORY: &str = env!("CARGO_MANIFEST_DIR");

const SCRIPTS_DIR: &str = "/usr/local/libexec/secure_socket/examples";

const POLICY_DIR: &str = "etc/secure_socket/policy.d";

/// Creates `<fixture>/destdir` and installs into it.
fn install_into_fixture(fixture: &Fixture) -> (PathBuf, ProcessOutput) {
    let destdir = fixture.path().join("destdir");
    fs::create_dir(&destdir).unwrap();
    let output = common::run_install_script(destdir.to_str().unwrap());
    (destdir, output)
}

/// Asserts that `path` exists, is owned by root:root, and has permission bits `mode`.
fn assert_root_owned(path: &Path, mode: u32) {
    let metadata =
        fs::symlink_metadata(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    assert_eq!(metadata.uid(), 0, "{} is not owned by root", path.display());
    assert_eq!(metadata.gid(), 0, "{} is not in group root", path.display());
    assert_eq!(
        metadata.permissions().mode() & 0o7777,
        mode,
        "{} has mode {:o}, expected {mode:o}",
        path.display(),
        metadata.permissions().mode() & 0o7777
    );
}

/// Returns the file names in a directory of the repository, sorted.
fn repository_files(dir: &str, extension: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(Path::new(REPOSITORY).join(dir))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| extension.is_none_or(|extension| name.ends_with(extension)))
        .collect();
    names.sort();
    names
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn install_lays_out_directories_and_binary() {
    let fixture = Fixture::new();
    let (destdir, output) = install_into_fixture(&fixture);
    assert_eq!(output.code(), Some(0), "{}", output.describe());

    for dir in [
        "usr/local/bin",
        "usr/local/libexec",
        "usr/local/libexec/secure_socket",
        "usr/local/libexec/secure_socket/examples",
        "etc/secure_socket",
        POLICY_DIR,
        "etc/systemd/system",
    ] {
        let path = destdir.join(dir);
        assert!(path.is_dir(), "{} is not a directory", path.display());
        assert_root_owned(&path, 0o755);
    }

    let binary = destdir.join("usr/local/bin/secure_socket");
    assert_root_owned(&binary, 0o755);
    assert!(
        fs::read(&binary).unwrap() == fs::read(BROKER_BINARY).unwrap(),
        "{} differs from {BROKER_BINARY}",
        binary.display()
    );
}

#[test]
fn install_copies_example_scripts() {
    let fixture = Fixture::new();
    let (destdir, output) = install_into_fixture(&fixture);
    assert_eq!(output.code(), Some(0), "{}", output.describe());

    let installed_dir = destdir.join(SCRIPTS_DIR.trim_start_matches('/'));
    let expected = repository_files("scripts", None);
    assert!(!expected.is_empty(), "the repository has no scripts/");
    assert_eq!(sorted_names(&installed_dir), expected);
    for name in &expected {
        let installed = installed_dir.join(name);
        assert_root_owned(&installed, 0o755);
        let source = Path::new(REPOSITORY).join("scripts").join(name);
        assert_eq!(
            fs::read(&installed).unwrap(),
            fs::read(&source).unwrap(),
            "{} differs from {}",
            installed.display(),
            source.display()
        );
    }
}

#[test]
fn install_rewrites_policy_script_paths() {
    let fixture = Fixture::new();
    let (destdir, output) = install_into_fixture(&fixture);
    assert_eq!(output.code(), Some(0), "{}", output.describe());

    let policy_dir = destdir.join(POLICY_DIR);
    let expected = repository_files("policy", Some(".toml"));
    assert!(!expected.is_empty(), "the repository has no policy/*.toml");
    assert_eq!(sorted_names(&policy_dir), expected);

    for name in &expected {
        let installed = policy_dir.join(name);
        assert_root_owned(&installed, 0o644);
        let text = fs::read_to_string(&installed).unwrap();
        let scripts: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("script = \""))
            .map(|rest| rest.trim_end_matches('"'))
            .collect();
        assert!(!scripts.is_empty(), "{name} names no script:\n{text}");
        for script in scripts {
            let file_name = Path::new(script).file_name().unwrap().to_str().unwrap();
            assert_eq!(
                script,
                format!("{SCRIPTS_DIR}/{file_name}"),
                "{name} names a script outside the installed directory"
            );
            let staged = destdir.join(script.trim_start_matches('/'));
            assert!(
                staged.is_file(),
                "{name} names {script}, which was not installed"
            );
        }
    }
}

/// The installed policy, with its script paths pointed into the staging directory, must
/// pass the broker's own checks: file modes, directory owners and script permissions.
#[test]
fn installed_policy_passes_check_policy() {
    let fixture = Fixture::new();
    let (destdir, output) = install_into_fixture(&fixture);
    assert_eq!(output.code(), Some(0), "{}", output.describe());

    for entry in fs::read_dir(destdir.join(POLICY_DIR)).unwrap() {
        let path = entry.unwrap().path();
        let text = fs::read_to_string(&path).unwrap().replace(
            &format!("\"{SCRIPTS_DIR}/"),
            &format!("\"{FIXTURE_PLACEHOLDER}/destdir{SCRIPTS_DIR}/"),
        );
        let name = path.file_stem().unwrap().to_str().unwrap();
        fixture.write_policy(name, &text);
    }

    let mut command = Command::new(BROKER_BINARY);
    command
        .arg("check-policy")
        .arg(fixture.policy_dir())
        .current_dir("/");
    let check = spawn(command).finish(common::CLIENT_TIMEOUT);
    assert_eq!(check.code(), Some(0), "{}", check.describe());
}

#[test]
fn install_copies_systemd_units() {
    let fixture = Fixture::new();
    let (destdir, output) = install_into_fixture(&fixture);
    assert_eq!(output.code(), Some(0), "{}", output.describe());

    for unit in ["secure_socket.service", "secure_socket.socket"] {
        let installed = destdir.join("etc/systemd/system").join(unit);
        assert_root_owned(&installed, 0o644);
        let source = Path::new(REPOSITORY).join("systemd").join(unit);
        assert_eq!(
            fs::read_to_string(&installed).unwrap(),
            fs::read_to_string(&source).unwrap(),
            "{} differs from {}",
            installed.display(),
            source.display()
        );
    }

    let service =
        fs::read_to_string(destdir.join("etc/systemd/system/secure_socket.service")).unwrap();
    assert!(
        service.contains("ExecStart=/usr/local/bin/secure_socket "),
        "the service does not start the installed binary:\n{service}"
    );
}

#[test]
fn install_keeps_existing_policy() {
    let fixture = Fixture::new();
    let destdir = fixture.path().join("destdir");
    let policy_dir = destdir.join(POLICY_DIR);
    fs::create_dir_all(&policy_dir).unwrap();
    fs::set_permissions(&policy_dir, fs::Permissions::from_mode(0o750)).unwrap();
    let local = policy_dir.join("local.toml");
    let local_text = "# the administrator's own policy\n";
    fs::write(&local, local_text).unwrap();

    let output = common::run_install_script(destdir.to_str().unwrap());
    assert_eq!(output.code(), Some(0), "{}", output.describe());

    assert_eq!(sorted_names(&policy_dir), ["local.toml"]);
    assert_eq!(fs::read_to_string(&local).unwrap(), local_text);
    assert_root_owned(&policy_dir, 0o750);
    assert!(
        output.stdout.contains("left the existing policy"),
        "{}",
        output.describe()
    );
}

#[test]
fn install_rejects_relative_destdir() {
    common::require_root();
    let output = common::run_install_script("relative/destdir");
    assert_eq!(output.code(), Some(1), "{}", output.describe());
    assert!(
        output.stderr.contains("DESTDIR must be an absolute path"),
        "{}",
        output.describe()
    );
    // The command ran in /, so a relative DESTDIR would have been created there.
    assert!(!Path::new("/relative").exists());
}

#[test]
fn build_sh_rejects_unknown_target() {
    let mut command = Command::new("/bin/sh");
    command
        .arg(Path::new(REPOSITORY).join("build.sh"))
        .arg("instal")
        .current_dir("/");
    let output = spawn(command).finish(common::CLIENT_TIMEOUT);
    assert_eq!(output.code(), Some(64), "{}", output.describe());
    assert!(
        output.stderr.contains("usage: ./build.sh [install]"),
        "{}",
        output.describe()
    );
}

/// Paths that build.sh or install.sh would write to on the real system.
const SYSTEM_PATHS: &[&str] = &[
    "/usr/local/bin/secure_socket",
    "/usr/local/libexec/secure_socket",
    "/etc/secure_socket",
    "/etc/systemd/system/secure_socket.service",
    "/etc/systemd/system/secure_socket.socket",
];

/// Files of the user database that useradd would add secure-socket to. Other tests add
/// and remove users of their own, so only the lines of secure-socket are compared.
const USER_DATABASE: &[&str] = &["/etc/passwd", "/etc/group", "/etc/shadow"];

/// Returns one line per file below `path` (or `path` itself) with its type, owner, mode,
/// size and modification time, or a line saying that it is absent.
fn snapshot(path: &Path) -> Vec<String> {
    let Ok(metadata) = fs::symlink_metadata(path) else {
        return vec![format!("{} absent", path.display())];
    };
    let mut lines = vec![format!(
        "{} {:o} {}:{} {} {}.{}",
        path.display(),
        metadata.mode(),
        metadata.uid(),
        metadata.gid(),
        metadata.size(),
        metadata.mtime(),
        metadata.mtime_nsec()
    )];
    if metadata.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        entries.sort();
        for entry in entries {
            lines.extend(snapshot(&entry));
        }
    }
    lines
}

fn snapshot_system() -> Vec<String> {
    let mut lines: Vec<String> = SYSTEM_PATHS
        .iter()
        .flat_map(|path| snapshot(Path::new(path)))
        .collect();
    for path in USER_DATABASE {
        let text = fs::read_to_string(path).unwrap_or_default();
        lines.extend(
            text.lines()
                .filter(|line| line.starts_with("secure-socket:"))
                .map(|line| format!("{path}: {line}")),
        );
    }
    lines
}

/// Copies the files build.sh and install.sh read into `<fixture>/repository`, and puts a
/// stand-in `cargo` into `<fixture>/bin` that copies the test binary to where a release
/// build leaves it, so that the test runs no release build.
fn stage_repository(fixture: &Fixture) -> (PathBuf, PathBuf) {
    let repository = fixture.path().join("repository");
    for dir in ["scripts", "policy", "systemd"] {
        let target = repository.join(dir);
        fs::create_dir_all(&target).unwrap();
        for name in repository_files(dir, None) {
            fs::copy(
                Path::new(REPOSITORY).join(dir).join(&name),
                target.join(&name),
            )
            .unwrap();
        }
    }
    for name in ["build.sh", "install.sh", "parameters.conf"] {
        fs::copy(Path::new(REPOSITORY).join(name), repository.join(name)).unwrap();
    }
    let bin = fixture.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let cargo = bin.join("cargo");
    fs::write(
        &cargo,
        format!(
            "#!/bin/sh\n\
             [ \"$*\" = 'build --release --locked' ] || {{ echo \"unexpected: $*\" >&2; exit 2; }}\n\
             mkdir -p target/release\n\
             cp '{BROKER_BINARY}' target/release/secure_socket\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&cargo, fs::Permissions::from_mode(0o755)).unwrap();
    (repository, bin)
}

#[test]
fn build_sh_install_with_destdir_stays_inside() {
    let fixture = Fixture::new();
    let (repository, bin) = stage_repository(&fixture);
    let destdir = fixture.path().join("destdir");
    fs::create_dir(&destdir).unwrap();
    let before = snapshot_system();

    let mut command = Command::new("/bin/sh");
    command
        .arg(repository.join("build.sh"))
        .arg("install")
        .env("DESTDIR", &destdir)
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
        )
        .current_dir("/");
    let output = spawn(command).finish(common::CLIENT_TIMEOUT);

    assert_eq!(output.code(), Some(0), "{}", output.describe());
    assert_eq!(snapshot_system(), before, "{}", output.describe());
    assert!(
        output
            .stdout
            .contains("DESTDIR is set, so the system user secure-socket was not created"),
        "{}",
        output.describe()
    );
    assert_root_owned(&destdir.join("usr/local/bin/secure_socket"), 0o755);
    let examples = destdir.join(SCRIPTS_DIR.trim_start_matches('/'));
    assert_eq!(sorted_names(&examples), repository_files("scripts", None));
    for name in repository_files("scripts", None) {
        assert_root_owned(&examples.join(name), 0o755);
    }
    assert!(destdir.join(POLICY_DIR).is_dir());
}

#[test]
fn build_sh_rejects_relative_destdir() {
    let fixture = Fixture::new();
    let (repository, bin) = stage_repository(&fixture);

    let mut command = Command::new("/bin/sh");
    command
        .arg(repository.join("build.sh"))
        .arg("install")
        .env("DESTDIR", "relative/destdir")
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .current_dir("/");
    let output = spawn(command).finish(common::CLIENT_TIMEOUT);

    assert_eq!(output.code(), Some(64), "{}", output.describe());
    assert!(
        output.stderr.contains("DESTDIR must be an absolute path"),
        "{}",
        output.describe()
    );
    assert!(!repository.join("build").exists(), "{}", output.describe());
}

#[test]
fn install_with_destdir_lists_staged_files() {
    let fixture = Fixture::new();

    let (destdir, output) = install_into_fixture(&fixture);

    assert_eq!(output.code(), Some(0), "{}", output.describe());
    let destdir = destdir.to_str().unwrap();
    let stdout = &output.stdout;
    assert!(
        stdout.contains(&format!("staged secure_socket under {destdir} ")),
        "{stdout}"
    );
    for path in [
        "usr/local/bin/secure_socket",
        "usr/local/libexec/secure_socket/examples/",
        "etc/secure_socket/policy.d/",
        "etc/systemd/system/secure_socket.service",
        "etc/systemd/system/secure_socket.socket",
    ] {
        assert!(
            stdout
                .lines()
                .any(|line| line == format!("  {destdir}/{path}")
                    || line.starts_with(&format!("  {destdir}/{path} "))),
            "{path} missing from:\n{stdout}"
        );
    }
    assert!(!stdout.contains("systemctl"), "{stdout}");
    assert!(!stdout.contains("check the policy"), "{stdout}");
}
