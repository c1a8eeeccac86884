//! Calls the broker from a third-party client: the `varlink` package from PyPI, run by
//! Debian's /usr/bin/python3 as www-data. The client reads the broker's interface
//! description and builds its calls from it, so this checks that the description parses
//! and that replies and errors match it.
//!
//! The test installs nothing. `.ci/run` installs the package with
//! `/usr/bin/python3 -m pip install --target /opt/secure_socket-ci/python varlink`.

mod common;

use std::path::Path;

use common::{Broker, Fixture, WWW_DATA, command_as, spawn};

/// Directory that `.ci/run` installs the `varlink` package into. It sits outside /root so
/// that www-data can read it.
const PYTHON_PACKAGES: &str = "/opt/secure_socket-ci/python";

/// Debian's interpreter: www-data cannot enter /root, where pyenv's interpreters live.
const PYTHON: &str = "/usr/bin/python3";

const POLICY: &str = r#"
[command.hello]
description = "Print the date and the peer uid"
script = "@FIXTURE@/scripts/hello"
run_as = "root"
allow_users = ["www-data"]
capture_output = true

[command.greet]
description = "Print a greeting for one name"
script = "@FIXTURE@/scripts/greet"
run_as = "root"
allow_users = ["www-data"]
argv = ["{name}"]
capture_output = true

[command.binary]
description = "Print bytes that are not UTF-8"
script = "@FIXTURE@/scripts/binary"
run_as = "root"
allow_users = ["www-data"]
capture_output = true

[command.greet.arguments.name]
type = "string"
pattern = "[a-z]+"
max_length = 16
"#;

const HELLO_SCRIPT: &str = "#!/bin/sh\ndate\necho \"peer uid: $SECURE_SOCKET_PEER_UID\"\n";

const GREET_SCRIPT: &str = "#!/bin/sh\necho \"hello, $1\"\n";

/// Prints `caf\xc3\xa9 \xff\xfe`, which is not UTF-8.
const BINARY_SCRIPT: &str = "#!/bin/sh\nprintf 'caf\\303\\251 \\377\\376'\n";

#[test]
fn python_varlink_client_runs_command() {
    let fixture = Fixture::new();
    let package = Path::new(PYTHON_PACKAGES).join("varlink/__init__.py");
    assert!(
        package.exists(),
        "the Python varlink package is missing from {PYTHON_PACKAGES}: run .ci/run, or \
         `{PYTHON} -m pip install --target {PYTHON_PACKAGES} varlink`"
    );
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: apt-get install python3"
    );

    fixture.write_policy("commands", POLICY);
    fixture.write_script("hello", HELLO_SCRIPT);
    fixture.write_script("greet", GREET_SCRIPT);
    fixture.write_script("binary", BINARY_SCRIPT);
    let broker = Broker::start(&fixture, &[]);
    // Copied so that www-data can read it wherever the source tree is.
    let client_script = fixture.copy_in(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/varlink_client.py"),
        "varlink_client.py",
    );
    let address = format!("unix:{}", fixture.socket_path().display());

    let output = spawn(command_as(
        WWW_DATA,
        Path::new(PYTHON),
        &[&client_script.to_string_lossy(), &address],
        &[("PYTHONPATH", PYTHON_PACKAGES)],
    ))
    .finish(common::CLIENT_TIMEOUT);

    assert_eq!(
        output.code(),
        Some(0),
        "{}\n{}",
        output.describe(),
        broker.diagnostics()
    );
    assert!(
        output.stdout.contains("ok: Run hello printed peer uid 33"),
        "{}",
        output.describe()
    );
    assert!(
        output
            .stdout
            .contains("ok: List shows exactly binary, greet, hello"),
        "{}",
        output.describe()
    );
    assert!(
        output
            .stdout
            .contains("ok: Run binary returned the exact bytes in stdout_base64"),
        "{}",
        output.describe()
    );
    assert!(
        output.stdout.contains("ok: invalid argument rejected"),
        "{}",
        output.describe()
    );
    assert!(
        output.stdout.contains("ok: unknown interface rejected"),
        "{}",
        output.describe()
    );
}
