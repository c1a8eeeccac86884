//! Entry point: dispatches to the broker, the hidden parser-child role, the policy
//! checker, or the command-line client.

use std::process::ExitCode;

use secure_socket::config::{self, Config};
use secure_socket::{child, client, logging, monitor, policy};

/// Zeroes freed memory in the parser child role, which enables it; elsewhere it is the
/// system allocator.
#[global_allocator]
static ALLOCATOR: child::scrub::ScrubbingAllocator = child::scrub::ScrubbingAllocator;

/// Exit status of a broker start that failed on the parameters, the policy, or the users
/// and files they name: EX_CONFIG from sysexits.h. A restart fails the same way until the
/// administrator changes something, so a service manager should not retry it (systemd:
/// RestartPreventExitStatus=78).
const EXIT_CONFIG: u8 = 78;

/// Exit status of a broker start that failed for another reason, such as an unreachable
/// log socket or a failed system call, which a later restart may not meet.
const EXIT_START_FAILED: u8 = 1;

/// Prints the help text. Write errors are ignored, so that `--help | head` ends quietly
/// instead of panicking on a closed pipe.
fn print_help() {
    let mut text = format!(
        "secure_socket {}: a local access broker\n\n",
        env!("CARGO_PKG_VERSION")
    );
    text.push_str("usage: secure_socket [key=value ...]        run the broker (as root)\n");
    text.push_str("       secure_socket check-policy DIR       validate a policy directory\n");
    text.push_str(
        "       secure_socket call|list|describe ... call a running broker (see `secure_socket call --help`)\n",
    );
    text.push_str("\nparameters:\n");
    text.push_str(&config::parameters_help());
    text.push_str(
        "\nsignals: SIGTERM/SIGINT stop the broker; SIGHUP reopens log_file and reloads the \
         policy.\n",
    );
    text.push_str(&format!(
        "\nexit status of the broker: 0 after SIGTERM or SIGINT; {EXIT_CONFIG} when the \
         parameters, the policy, or a user or file they name is invalid or unsafe; \
         {EXIT_START_FAILED} when the start failed for another reason.\n\
         exit status of check-policy: 0 for a valid policy, 1 for an invalid one, {} for \
         invalid usage.\n",
        client::EXIT_USAGE
    ));
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
}

fn check_policy(args: &[String]) -> ExitCode {
    if let [option] = args
        && (option == "--help" || option == "-h")
    {
        println!(
            "usage: secure_socket check-policy DIR\n\n\
             Loads and checks every *.toml file directly in DIR, as the broker does at\n\
             start, and prints each error. Exit status: 0 for a valid policy, 1 for an\n\
             invalid one, {} for invalid usage.",
            client::EXIT_USAGE
        );
        return ExitCode::SUCCESS;
    }
    let [dir] = args else {
        eprintln!("usage: secure_socket check-policy DIR");
        return ExitCode::from(client::EXIT_USAGE);
    };
    if dir.starts_with('-') {
        eprintln!("usage: secure_socket check-policy DIR");
        return ExitCode::from(client::EXIT_USAGE);
    };
    match policy::load_dir(std::path::Path::new(dir)) {
        Ok(policy) => {
            let count = policy.commands.len();
            let noun = if count == 1 { "command" } else { "commands" };
            println!("{dir}: valid, {count} {noun}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            for entry in &error.errors {
                println!("{entry}");
            }
            let count = error.errors.len();
            let noun = if count == 1 { "error" } else { "errors" };
            eprintln!("{dir}: invalid, {count} {noun}");
            ExitCode::FAILURE
        }
    }
}

/// Returns the exit status of a failed start: [`EXIT_CONFIG`] for a configuration or
/// policy error, else [`EXIT_START_FAILED`].
fn start_failure(is_configuration: bool) -> ExitCode {
    if is_configuration {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::from(EXIT_START_FAILED)
    }
}

/// Prints an error that stops the start before the log destination is open.
fn print_start_error(error: &dyn std::error::Error) {
    eprintln!("secure_socket: {}", logging::format_error_chain(error));
}

fn run_broker(args: &[String]) -> ExitCode {
    secure_socket::sys::tune_allocator();
    // Descriptors inherited from the broker's parent must not reach its children. Parser
    // children close everything anyway, and this covers the scripts the monitor starts.
    if let Err(error) = secure_socket::sys::mark_inherited_cloexec() {
        eprintln!("secure_socket: failed to mark inherited descriptors close-on-exec: {error}");
        return ExitCode::from(EXIT_START_FAILED);
    }
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(error) => {
            print_start_error(&error);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let activated = match monitor::take_activated_socket(&config.socket_path) {
        Ok(activated) => activated,
        Err(error) => {
            print_start_error(&error);
            return start_failure(error.is_configuration());
        }
    };
    // The log destination opens here, as root and before the monitor drops anything.
    if let Err(error) = logging::init(&config) {
        print_start_error(&error);
        return start_failure(error.is_configuration());
    }
    let events_reach_stderr = logging::events_reach_stderr(config.log_destination);
    let status = match monitor::run(config, activated) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report_monitor_error(&error, events_reach_stderr);
            start_failure(error.is_configuration())
        }
    };
    logging::flush();
    status
}

/// Logs a failed start, and prints it to stderr as well unless the log already goes
/// there. A person who started the broker from a terminal with a log file or syslog then
/// gets the reason on the terminal. The monitor has logged each policy error already.
fn report_monitor_error(error: &monitor::MonitorError, events_reach_stderr: bool) {
    let chain = logging::format_error_chain(error);
    tracing::error!(error = %chain, "broker failed to start");
    if events_reach_stderr {
        return;
    }
    eprintln!("secure_socket: {chain}");
    if let monitor::MonitorError::Policy { errors, .. } = error {
        for entry in errors {
            eprintln!("  {entry}");
        }
    }
}

fn main() -> ExitCode {
    // std::env::args panics on an argument that is not UTF-8; every parameter, policy
    // path and command name is UTF-8, so such an argument is a usage error.
    let mut args: Vec<String> = Vec::new();
    for (position, argument) in std::env::args_os().skip(1).enumerate() {
        match argument.into_string() {
            Ok(argument) => args.push(argument),
            Err(argument) => {
                eprintln!(
                    "secure_socket: argument {} is not valid UTF-8: {}",
                    position + 1,
                    argument.to_string_lossy().escape_debug()
                );
                return ExitCode::from(client::EXIT_USAGE);
            }
        }
    }
    let Some(first) = args.first() else {
        return run_broker(&args);
    };
    let rest = &args[1..];
    match first.as_str() {
        child::ROLE_ARGUMENT => child::run(rest),
        "--help" | "-h" | "help" if rest.is_empty() => {
            print_help();
            ExitCode::SUCCESS
        }
        "--help" | "-h" | "help" => {
            eprintln!(
                "usage: secure_socket --help (it takes no arguments; for a subcommand, run \
                 `secure_socket SUBCOMMAND --help`)"
            );
            ExitCode::from(client::EXIT_USAGE)
        }
        "--version" | "-V" if rest.is_empty() => {
            println!("secure_socket {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "--version" | "-V" => {
            eprintln!("usage: secure_socket --version (it takes no arguments)");
            ExitCode::from(client::EXIT_USAGE)
        }
        "check-policy" => check_policy(rest),
        "call" => client::main(client::Subcommand::Call, rest),
        "list" => client::main(client::Subcommand::List, rest),
        "describe" => client::main(client::Subcommand::Describe, rest),
        _ => run_broker(&args),
    }
}
