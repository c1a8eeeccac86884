//! Capabilities of the monitor and of scripts, read from /proc/PID/status of the running
//! broker and from inside the scripts themselves.
//!
//! Run as root: `cargo test --release -- --test-threads=2`.

mod common;

use serde_json::{Value, json};

use common::{Broker, Fixture, status_field};

/// CAP_KILL (5), CAP_SETGID (6) and CAP_SETUID (7): what the monitor uses itself.
const MONITOR_EFFECTIVE: u64 = 0xe0;
/// CAP_SETPCAP (8), kept in permitted and bounding to cut a root script's bounding set.
const CAP_SETPCAP: u64 = 1 << 8;
/// CAP_NET_BIND_SERVICE (10), the capability the test commands declare.
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;

/// Prints the script's capability sets as `Name: hex` lines.
const PRINT_CAPABILITIES: &str = "#!/bin/sh\ngrep '^Cap' /proc/self/status\n";

/// Two commands that declare one capability, one run as root and one as nobody.
const DECLARING_POLICY: &str = r#"
[command.root-bind]
script = "@FIXTURE@/scripts/print-capabilities"
run_as = "root"
allow_users = ["root"]
capabilities = ["CAP_NET_BIND_SERVICE"]
capture_output = true

[command.nobody-bind]
script = "@FIXTURE@/scripts/print-capabilities"
run_as = "nobody"
allow_users = ["root"]
capabilities = ["CAP_NET_BIND_SERVICE"]
capture_output = true

[command.nobody-plain]
script = "@FIXTURE@/scripts/print-capabilities"
run_as = "nobody"
allow_users = ["root"]
capture_output = true
"#;

/// A root command that declares nothing, so it keeps root's usual set.
const ROOT_DEFAULT_POLICY: &str = r#"
[command.root-default]
script = "@FIXTURE@/scripts/print-capabilities"
run_as = "root"
allow_users = ["root"]
capture_output = true
"#;

fn start(policy: &str) -> (Fixture, Broker) {
    let fixture = Fixture::new();
    fixture.write_policy("capabilities.toml", policy);
    fixture.write_script("print-capabilities", PRINT_CAPABILITIES);
    let broker = Broker::start(&fixture, &[]);
    (fixture, broker)
}

fn parse_mask(text: &str) -> u64 {
    u64::from_str_radix(text.trim(), 16).unwrap_or_else(|_| panic!("not a hex mask: {text:?}"))
}

/// Runs `command` and returns the script's capability masks by name (CapEff, ...).
fn script_masks(broker: &Broker, command: &str) -> Vec<(String, u64)> {
    let reply = broker.connect().run(command, json!({}));
    let parameters = &reply["parameters"];
    assert_eq!(parameters["exit_code"], json!(0), "reply: {reply}");
    let stdout = parameters["stdout"].as_str().unwrap_or_default();
    stdout
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, mask)| (name.to_string(), parse_mask(mask)))
        .collect()
}

fn mask(masks: &[(String, u64)], name: &str) -> u64 {
    masks
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| *value)
        .unwrap_or_else(|| panic!("{name} missing from {masks:?}"))
}

fn broker_mask(broker: &Broker, name: &str) -> u64 {
    let field = status_field(broker.pid(), name).unwrap_or_else(|| panic!("{name} not found"));
    parse_mask(&field)
}

#[test]
fn monitor_effective_set_is_documented_set() {
    let (_fixture, broker) = start(DECLARING_POLICY);
    assert_eq!(broker_mask(&broker, "CapEff"), MONITOR_EFFECTIVE);
}

#[test]
fn monitor_inheritable_and_ambient_are_empty() {
    let (_fixture, broker) = start(DECLARING_POLICY);
    assert_eq!(broker_mask(&broker, "CapInh"), 0);
    assert_eq!(broker_mask(&broker, "CapAmb"), 0);
}

#[test]
fn monitor_bounding_set_is_cut_to_policy_needs() {
    let (_fixture, broker) = start(DECLARING_POLICY);
    let expected = MONITOR_EFFECTIVE | CAP_SETPCAP | CAP_NET_BIND_SERVICE;
    assert_eq!(broker_mask(&broker, "CapBnd"), expected);
}

#[test]
fn monitor_permitted_set_is_cut_to_policy_needs() {
    let (_fixture, broker) = start(DECLARING_POLICY);
    let expected = MONITOR_EFFECTIVE | CAP_SETPCAP | CAP_NET_BIND_SERVICE;
    assert_eq!(broker_mask(&broker, "CapPrm"), expected);
}

#[test]
fn root_script_gets_only_declared_capability() {
    let (_fixture, broker) = start(DECLARING_POLICY);
    let masks = script_masks(&broker, "root-bind");
    assert_eq!(mask(&masks, "CapEff"), CAP_NET_BIND_SERVICE);
    assert_eq!(mask(&masks, "CapPrm"), CAP_NET_BIND_SERVICE);
    assert_eq!(mask(&masks, "CapBnd"), CAP_NET_BIND_SERVICE);
    assert_eq!(mask(&masks, "CapInh"), 0);
}

#[test]
fn non_root_script_gets_declared_capability_as_ambient() {
    let (_fixture, broker) = start(DECLARING_POLICY);
    let masks = script_masks(&broker, "nobody-bind");
    assert_eq!(mask(&masks, "CapAmb"), CAP_NET_BIND_SERVICE);
    assert_eq!(mask(&masks, "CapEff"), CAP_NET_BIND_SERVICE);
    assert_eq!(mask(&masks, "CapPrm"), CAP_NET_BIND_SERVICE);
}

#[test]
fn non_root_script_without_declaration_has_none() {
    let (_fixture, broker) = start(DECLARING_POLICY);
    let masks = script_masks(&broker, "nobody-plain");
    assert_eq!(mask(&masks, "CapEff"), 0);
    assert_eq!(mask(&masks, "CapPrm"), 0);
    assert_eq!(mask(&masks, "CapAmb"), 0);
}

#[test]
fn root_script_without_declaration_keeps_bounding_set() {
    let (_fixture, broker) = start(ROOT_DEFAULT_POLICY);
    let masks = script_masks(&broker, "root-default");
    let bounding = mask(&masks, "CapBnd");
    assert_eq!(mask(&masks, "CapEff"), bounding);
    assert_eq!(bounding, broker_mask(&broker, "CapBnd"));
}

#[test]
fn reload_cannot_widen_capabilities() {
    let (fixture, broker) = start(DECLARING_POLICY);
    // The new policy requests CAP_NET_ADMIN, which the broker dropped at start.
    let widened = DECLARING_POLICY.replace(
        "capabilities = [\"CAP_NET_BIND_SERVICE\"]\ncapture_output = true\n\n[command.nobody-bind]",
        "capabilities = [\"CAP_NET_ADMIN\"]\ncapture_output = true\n\n[command.nobody-bind]",
    );
    assert_ne!(widened, DECLARING_POLICY);
    fixture.write_policy("capabilities.toml", &widened);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(broker.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("send SIGHUP");
    let rejected = common::wait_for(std::time::Duration::from_secs(5), || {
        fixture.log().contains("policy reload rejected")
    });
    assert!(rejected, "log: {}", fixture.log());
    let masks = script_masks(&broker, "root-bind");
    assert_eq!(mask(&masks, "CapEff"), CAP_NET_BIND_SERVICE);
    let reply: Value = broker.connect().run("root-bind", json!({}));
    assert!(reply.get("error").is_none(), "reply: {reply}");
}
