//! The systems under test and one call through each.
//!
//! Every system runs the same script and waits for it: directly (the baseline), through
//! the broker over a persistent or a fresh varlink connection, through the broker's own
//! command-line client, through doas, and through s6-sudo. Trusts the paths it is given;
//! a reply from the broker counts as a success only when it reports exit code 0.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::options::Options;

/// How long a broker call may block on the socket before it counts as an error.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest reply accepted from the broker, in bytes; the benchmark's replies are small.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// One way of running the script.
#[derive(Debug)]
pub enum System {
    /// The script spawned and waited for by the load generator itself.
    Baseline { script: PathBuf },
    /// The broker, one connection per client thread that carries every call.
    Persistent { socket: PathBuf, request: Vec<u8> },
    /// The broker, a new connection for every call.
    Fresh { socket: PathBuf, request: Vec<u8> },
    /// The broker through `secure_socket call`, one process per call.
    Cli {
        binary: PathBuf,
        socket: PathBuf,
        command: String,
    },
    /// `doas -n SCRIPT`, with a nopass rule for the caller.
    Doas { doas: PathBuf, script: PathBuf },
    /// `s6-sudo SOCKET`, served by s6-sudod under s6-ipcserver.
    S6Sudo { s6_sudo: PathBuf, socket: PathBuf },
}

impl System {
    /// Lists the systems the options enable, the baseline first, less those that
    /// --systems leaves out.
    pub fn enabled(options: &Options) -> Vec<System> {
        let mut systems = vec![System::Baseline {
            script: options.script.clone(),
        }];
        if let Some(socket) = &options.socket {
            let request = run_request(&options.command);
            systems.push(System::Persistent {
                socket: socket.clone(),
                request: request.clone(),
            });
            systems.push(System::Fresh {
                socket: socket.clone(),
                request,
            });
            if let Some(binary) = &options.cli {
                systems.push(System::Cli {
                    binary: binary.clone(),
                    socket: socket.clone(),
                    command: options.command.clone(),
                });
            }
        }
        if let Some(doas) = &options.doas {
            systems.push(System::Doas {
                doas: doas.clone(),
                script: options.script.clone(),
            });
        }
        if let Some(socket) = &options.s6_socket {
            systems.push(System::S6Sudo {
                s6_sudo: options.s6_sudo.clone(),
                socket: socket.clone(),
            });
        }
        if !options.systems.is_empty() {
            systems.retain(|system| options.systems.iter().any(|name| name == system.name()));
        }
        systems
    }

    pub fn name(&self) -> &'static str {
        match self {
            System::Baseline { .. } => "baseline",
            System::Persistent { .. } => "broker-persistent",
            System::Fresh { .. } => "broker-fresh",
            System::Cli { .. } => "broker-cli",
            System::Doas { .. } => "doas",
            System::S6Sudo { .. } => "s6-sudo",
        }
    }

    /// Returns whether the broker serves this system's calls.
    pub fn uses_broker(&self) -> bool {
        matches!(
            self,
            System::Persistent { .. } | System::Fresh { .. } | System::Cli { .. }
        )
    }

    /// Pid of the long-running server whose CPU time counts as server side, if any.
    pub fn server_pid(&self, options: &Options) -> Option<i32> {
        if self.uses_broker() {
            options.broker_pid
        } else if let System::S6Sudo { .. } = self {
            options.s6_pid
        } else {
            None
        }
    }

    /// Creates the state of one client thread. A persistent client connects here and
    /// makes one unmeasured call, so that neither the connection nor the broker's
    /// hand-over to a parser child is part of a measured call. If that fails, the first
    /// measured call connects again and reports the error.
    pub fn client(&self) -> Client<'_> {
        let mut client = Client {
            system: self,
            stream: None,
            reply: Vec::with_capacity(4096),
        };
        if let System::Persistent { socket, request } = self
            && let Ok(mut stream) = connect(socket)
            && exchange(&mut stream, request, &mut client.reply).is_ok()
        {
            client.stream = Some(stream);
        }
        client
    }
}

/// Encodes the varlink Run call for `command`, with its terminating NUL byte.
fn run_request(command: &str) -> Vec<u8> {
    let escaped = crate::report::json_string(command);
    let mut request = format!(
        "{{\"method\":\"org.securesocket.Broker.Run\",\"parameters\":{{\"command\":{escaped},\"arguments\":{{}}}}}}"
    )
    .into_bytes();
    request.push(0);
    request
}

fn connect(socket: &PathBuf) -> Result<UnixStream, String> {
    let stream = UnixStream::connect(socket)
        .map_err(|error| format!("failed to connect to {}: {error}", socket.display()))?;
    stream
        .set_read_timeout(Some(SOCKET_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(SOCKET_TIMEOUT)))
        .map_err(|error| format!("failed to set socket timeouts: {error}"))?;
    Ok(stream)
}

/// The state one client thread keeps between calls.
pub struct Client<'a> {
    system: &'a System,
    /// The open connection of a persistent client; dropped after an error.
    stream: Option<UnixStream>,
    /// Receive buffer, reused for every reply.
    reply: Vec<u8>,
}

impl Client<'_> {
    /// Runs the script once through the system and waits for it. Returns a short
    /// description of what failed, if anything did.
    pub fn call(&mut self) -> Result<(), String> {
        match self.system {
            System::Baseline { script } => run_process(Command::new(script)),
            System::Persistent { socket, request } => {
                let mut stream = match self.stream.take() {
                    Some(stream) => stream,
                    None => connect(socket)?,
                };
                exchange(&mut stream, request, &mut self.reply)?;
                // Only a connection that worked is kept: after an error the next call
                // starts on a new one.
                self.stream = Some(stream);
                Ok(())
            }
            System::Fresh { socket, request } => {
                let mut stream = connect(socket)?;
                exchange(&mut stream, request, &mut self.reply)
            }
            System::Cli {
                binary,
                socket,
                command,
            } => {
                let mut process = Command::new(binary);
                process.arg("call").arg("--socket").arg(socket).arg(command);
                run_process(process)
            }
            System::Doas { doas, script } => {
                let mut process = Command::new(doas);
                process.arg("-n").arg(script);
                run_process(process)
            }
            System::S6Sudo { s6_sudo, socket } => {
                let mut process = Command::new(s6_sudo);
                process.arg(socket);
                run_process(process)
            }
        }
    }
}

/// Spawns a process with its standard streams on /dev/null and waits for exit status 0.
fn run_process(mut process: Command) -> Result<(), String> {
    process
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let status = process
        .status()
        .map_err(|error| format!("failed to spawn {:?}: {error}", process.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{:?} ended with {status}", process.get_program()))
    }
}

/// Sends one request and reads its reply up to the NUL byte. Succeeds only when the
/// reply is not a varlink error and reports exit code 0.
fn exchange(stream: &mut UnixStream, request: &[u8], reply: &mut Vec<u8>) -> Result<(), String> {
    stream
        .write_all(request)
        .map_err(|error| format!("failed to send the request: {error}"))?;
    reply.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let count = stream
            .read(&mut chunk)
            .map_err(|error| format!("failed to read the reply: {error}"))?;
        if count == 0 {
            return Err("the broker closed the connection without a reply".to_string());
        }
        reply.extend_from_slice(&chunk[..count]);
        if let Some(end) = reply.iter().position(|&byte| byte == 0) {
            reply.truncate(end);
            break;
        }
        if reply.len() > MAX_REPLY_BYTES {
            return Err("the reply is larger than 64 KiB".to_string());
        }
    }
    check_reply(reply)
}

/// Accepts a Run reply whose parameters hold `"exit_code":0`.
fn check_reply(reply: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(reply);
    let exit_code = text
        .split_once("\"exit_code\":")
        .map(|(_, rest)| rest.split([',', '}']).next().unwrap_or(rest));
    if text.starts_with("{\"parameters\"") && exit_code == Some("0") {
        return Ok(());
    }
    let shown: String = text.chars().take(200).collect();
    Err(format!("unexpected reply: {shown}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_request_is_json_with_nul() {
        let request = run_request("bench-exit-zero");
        assert_eq!(request.last(), Some(&0));
        let text = std::str::from_utf8(&request[..request.len() - 1]).unwrap();
        assert_eq!(
            text,
            r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"bench-exit-zero","arguments":{}}}"#
        );
    }

    #[test]
    fn names_match_systems_option() {
        let options = crate::options::parse(
            &[
                "--script",
                "/s",
                "--out",
                "/o",
                "--socket",
                "/k",
                "--cli",
                "/c",
                "--doas",
                "/d",
                "--s6-socket",
                "/6",
            ]
            .map(String::from),
        )
        .unwrap();
        let names: Vec<&str> = System::enabled(&options).iter().map(System::name).collect();
        assert_eq!(names, crate::options::SYSTEM_NAMES);
    }

    #[test]
    fn check_reply_accepts_exit_zero() {
        let reply = br#"{"parameters":{"request_id":"a","exit_code":0,"timed_out":false}}"#;
        assert!(check_reply(reply).is_ok());
    }

    #[test]
    fn check_reply_rejects_other_exit_code() {
        let reply = br#"{"parameters":{"request_id":"a","exit_code":10,"timed_out":false}}"#;
        assert!(check_reply(reply).is_err());
    }

    #[test]
    fn check_reply_rejects_error() {
        let reply = br#"{"error":"org.securesocket.Broker.Busy","parameters":{"exit_code":0,}}"#;
        assert!(check_reply(reply).is_err());
    }
}
