//! Entry point: dispatches to the broker, the hidden parser-child role, the policy
//! checker, or the command-line client.

use std::process::ExitCode;

use secure_socket::config::{Config, PARAMETERS};
use secure_socket::{child, client, logging, monitor, policy};

/// Zeroes freed memory in the parser child role, which enables it; elsewhere it is the
/// system allocator.
#[global_allocator]
static ALLOCATOR: child::scrub::ScrubbingAllocator = child::scrub::ScrubbingAllocator;

/// Exit status for invalid parameters.
const EXIT_INVALID_PARAMETERS: u8 = 2;

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
    for parameter in PARAMETERS {
        text.push_str(&format!(
            "  {:<30} {} (default: {})\n",
            parameter.key, parameter.help, parameter.default
        ));
    }
    text.push_str("\nsignals: SIGTERM/SIGINT stop the broker, SIGHUP reloads the policy.\n");
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
}

fn check_policy(args: &[String]) -> ExitCode {
    let [dir] = args else {
        eprintln!("usage: secure_socket check-policy DIR");
        return ExitCode::from(EXIT_INVALID_PARAMETERS);
    };
    if dir.starts_with('-') {
        eprintln!("usage: secure_socket check-policy DIR");
        return ExitCode::from(EXIT_INVALID_PARAMETERS);
    };
    match policy::load_dir(std::path::Path::new(dir)) {
        Ok(policy) => {
            println!("{dir}: valid, {} commands", policy.commands.len());
            ExitCode::SUCCESS
        }
        Err(error) => {
            for entry in &error.errors {
                println!("{entry}");
            }
            eprintln!("{dir}: invalid, {} errors", error.errors.len());
            ExitCode::FAILURE
        }
    }
}

fn run_broker(args: &[String]) -> ExitCode {
    secure_socket::sys::tune_allocator();
    // Descriptors inherited from the broker's parent must not reach its children. Parser
    // children close everything anyway, and this covers the scripts the monitor starts.
    if let Err(error) = secure_socket::sys::mark_inherited_cloexec() {
        eprintln!("secure_socket: failed to mark inherited descriptors close-on-exec: {error}");
        return ExitCode::FAILURE;
    }
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("secure_socket: {error}");
            return ExitCode::from(EXIT_INVALID_PARAMETERS);
        }
    };
    let activated = match monitor::take_activated_socket(&config.socket_path) {
        Ok(activated) => activated,
        Err(error) => {
            eprintln!("secure_socket: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The log destination opens here, as root and before the monitor drops anything.
    if let Err(error) = logging::init(&config) {
        eprintln!("secure_socket: {error}");
        if let Some(source) = std::error::Error::source(&error) {
            eprintln!("  caused by: {source}");
        }
        return ExitCode::FAILURE;
    }
    match monitor::run(config, activated) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, source = ?std::error::Error::source(&error), "broker failed to start");
            eprintln!("secure_socket: {error}");
            if let monitor::MonitorError::Policy { errors, .. } = &error {
                for entry in errors {
                    eprintln!("  {entry}");
                }
            }
            if let Some(source) = std::error::Error::source(&error) {
                eprintln!("  caused by: {source}");
            }
            match error {
                monitor::MonitorError::UnknownUser { .. } | monitor::MonitorError::Conflict(_) => {
                    ExitCode::from(EXIT_INVALID_PARAMETERS)
                }
                _ => ExitCode::FAILURE,
            }
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
        "--help" | "-h" | "help" => {
            print_help();
            ExitCode::SUCCESS
        }
        "--version" | "-V" => {
            println!("secure_socket {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "check-policy" => check_policy(rest),
        "call" => client::main(client::Subcommand::Call, rest),
        "list" => client::main(client::Subcommand::List, rest),
        "describe" => client::main(client::Subcommand::Describe, rest),
        _ => run_broker(&args),
    }
}
