//! The varlink service: request parsing, replies and the interface descriptions.
//!
//! Owns the translation between varlink messages and [`Request`]s. Frames come straight
//! from the client and are untrusted: [`parse_call`] accepts only the documented shape,
//! rejects duplicate keys at every level and bounds nesting and name lengths. A duplicate
//! Run argument is an InvalidArgument naming the argument, and a duplicate key anywhere
//! else an InvalidRequest. Its errors name the offending key, parameter or argument, but
//! never repeat an argument value.
//!
//! Method dispatch follows the reference implementation of the varlink Python package
//! (version 31): the interface is the part of the method name before the last dot. An
//! interface the broker does not implement, including the empty one of a name without a
//! dot, is `org.varlink.service.InterfaceNotFound`. A method that a known interface lacks
//! is `org.varlink.service.MethodNotFound` with the full method name.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

use crate::policy::{ArgKind, ArgSpec, ArgValue, CommandSpec};
use crate::protocol::channel::{
    ExecOutcome, MAX_ARGUMENTS, MAX_NAME_BYTES, MAX_STDIN_BYTES, MAX_VALUE_BYTES,
};
use crate::protocol::{BrokerError, ErrorKind, base64};

/// Name of the broker's own interface.
pub const BROKER_INTERFACE: &str = "org.securesocket.Broker";
/// Name of the standard interface that every varlink service implements.
pub const SERVICE_INTERFACE: &str = "org.varlink.service";

/// Interface description of `org.varlink.service`. The varlink standard fixes the
/// declarations, and the comments are this project's.
pub const SERVICE_DESCRIPTION: &str = "\
# The standard interface of every varlink service: information about the service and
# the definitions of the interfaces it implements.
interface org.varlink.service

# Returns who made the service, its version and the interfaces it implements.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# Returns the interface definition of one implemented interface. This broker adds a
# request_id member to the replies of both methods, the id of their audit record.
method GetInterfaceDescription(interface: string) -> (description: string)

# The service does not implement the interface.
error InterfaceNotFound (interface: string)

# The interface has no method of this name.
error MethodNotFound (method: string)

# The interface declares the method, but the service does not implement it.
error MethodNotImplemented (method: string)

# A parameter is missing, has the wrong type or is not declared.
error InvalidParameter (parameter: string)

# The caller may not call the method.
error PermissionDenied ()

# The method must be called with more set to true.
error ExpectedMore ()
";

/// Interface description of `org.securesocket.Broker`.
pub const BROKER_DESCRIPTION: &str = "\
# Runs predefined commands for local clients. The broker identifies each client by the
# credentials the kernel reports for its socket, and lets it run only the commands that
# the broker's policy grants it, with typed arguments checked against the policy.
interface org.securesocket.Broker

# An argument that a command accepts.
type ArgumentInfo (
  name: string,
  # One of string, integer, enum, boolean or path.
  kind: string,
  description: string,
  required: bool,
  # The broker never logs the value of a sensitive argument.
  sensitive: bool,
  # Maximum length in bytes of a string or path value.
  max_length: ?int,
  # Regular expression that a string value must match in full.
  pattern: ?string,
  # Character class that every character of a string value must match.
  charset: ?string,
  # Whether a string value may contain a line break (LF, CR, U+0085, U+2028, U+2029),
  # another control character other than NUL, and a leading '-'. Null for other kinds.
  allow_newline: ?bool,
  allow_control: ?bool,
  allow_leading_dash: ?bool,
  # Smallest and largest accepted integer.
  min: ?int,
  max: ?int,
  # Accepted values of an enum argument.
  values: ?[]string,
  # Directories that a path value must be inside.
  prefixes: ?[]string
)

# A command that the caller may run.
type CommandInfo (
  name: string,
  description: string,
  arguments: []ArgumentInfo,
  # Time in milliseconds after which the broker kills the command.
  timeout_ms: int,
  # Whether Run returns the command's stdout and stderr.
  capture_output: bool,
  # Maximum bytes of stdout and of stderr that Run returns.
  output_limit: int,
  # Maximum bytes of stdin that Run accepts. 0 means the command reads no stdin.
  stdin_limit: int,
  # Runs of the command at once; further requests wait up to 2 s, then get Busy.
  max_concurrent: int,
  # Per-caller rate limit: at most rate_limit_requests runs per rate_limit_seconds, or
  # null when the command has none.
  rate_limit_requests: ?int,
  rate_limit_seconds: ?int
)

# Runs a command and returns how it ended. arguments maps argument names to strings,
# integers or booleans. Called with oneway, the command still runs but no reply is sent.
# exit_code is set when the command exited and signal when a signal killed it.
# stdout and stderr are null unless the command captures output. They are text, in
# which bytes that are not UTF-8 are replaced by U+FFFD. Only for such output the reply
# also carries stdout_base64 or stderr_base64: the exact bytes in base64 (RFC 4648
# alphabet, with padding). Output cut at output_limit can end inside a UTF-8 character,
# which also adds the base64 field. The truncated flags say that output was cut at
# output_limit.
method Run(command: string, arguments: ?object, stdin: ?string) -> (
  request_id: string,
  exit_code: ?int,
  signal: ?int,
  timed_out: bool,
  duration_ms: int,
  stdout: ?string,
  stderr: ?string,
  stdout_base64: ?string,
  stderr_base64: ?string,
  stdout_truncated: bool,
  stderr_truncated: bool
)

# Lists the commands that the caller may run. request_id names the audit record.
method List() -> (commands: []CommandInfo, request_id: string)

# Describes a command that the caller may run. request_id names the audit record.
method Describe(command: string) -> (command: CommandInfo, request_id: string)

# Every error below carries request_id when the broker logged the request under an id;
# the same id appears in the audit log.

# No command of this name exists. Describe also returns it for a command that the caller
# may not run, so that introspection shows nothing beyond the caller's own commands.
error UnknownCommand (command: string, message: string, request_id: ?string)

# Run of a command that exists but that the caller may not run, or a connection from a
# peer that the broker's authorised_peer_* filter excludes (command is then empty). rule
# is allow_users, allow_executables or the filter parameter.
error PermissionDenied (command: string, rule: string, message: string, request_id: ?string)

# An argument breaks a rule of the command's policy. rule is one of unknown, required,
# duplicate, type, nul, control, newline, leading_dash, max_length, pattern, charset,
# range, enum, absolute, dotdot, normalised or prefix.
error InvalidArgument (argument: string, rule: string, message: string, request_id: ?string)

# The command is at its concurrency limit (rule max_concurrent), the caller is at the
# command's rate limit (rule rate_limit), or the broker is shutting down (rule
# shutting_down). Retry later.
error Busy (field: string, rule: string, message: string, request_id: ?string)

# The command could not be started or did not run to its end.
error ExecutionFailed (field: string, rule: string, message: string, request_id: ?string)

# The request exceeds the size limit. The broker closes the connection after this error.
error RequestTooLarge (field: string, rule: string, message: string, request_id: ?string)

# The request is not a valid varlink call: invalid JSON, not an object, a duplicate or
# unknown key, a missing or mistyped method, or more or upgrade set to true.
error InvalidRequest (field: string, rule: string, message: string, request_id: ?string)

# The client did not send a whole request in time. The broker closes the connection
# after this error.
error TimedOut (field: string, rule: string, message: string, request_id: ?string)
";

/// Maximum nesting depth of arrays and objects in a request. A valid call needs three
/// levels: the call, its parameters and the Run arguments. serde_json's own limit of 128
/// stays in force behind this one.
const MAX_JSON_DEPTH: usize = 16;
/// Maximum length in bytes of a method or interface name, dots included.
const MAX_METHOD_BYTES: usize = 2 * MAX_NAME_BYTES;

/// A parsed varlink call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub request: Request,
    /// The client expects no reply.
    pub oneway: bool,
}

/// A method call, with parameters checked for type and size but not against the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    GetInfo,
    GetInterfaceDescription {
        interface: String,
    },
    Run {
        command: String,
        /// In the order the client sent them. Names are unique.
        arguments: Vec<(String, ArgValue)>,
        stdin: Option<String>,
    },
    List,
    Describe {
        command: String,
    },
}

/// Parses one frame, without its NUL terminator, into a call.
pub fn parse_call(frame: &[u8]) -> Result<Call, BrokerError> {
    let text = std::str::from_utf8(frame)
        .map_err(|_| invalid_request("request", "utf8", "the request is not valid UTF-8"))?;
    let Json::Object(entries) = parse_json(text)? else {
        return Err(invalid_request(
            "request",
            "type",
            "the request is not a JSON object",
        ));
    };

    let mut method = None;
    let mut parameters = None;
    let mut oneway = false;
    for (key, value) in entries {
        match key.as_str() {
            "method" => method = Some(value),
            "parameters" => parameters = Some(value),
            "oneway" => oneway = call_flag("oneway", value)?,
            "more" | "upgrade" => {
                if call_flag(&key, value)? {
                    return Err(invalid_request(
                        &key,
                        "unsupported",
                        format!("the broker does not support {key} calls"),
                    ));
                }
            }
            _ => {
                return Err(invalid_request(
                    &key,
                    "unknown",
                    format!("unknown key {:?} in the call", bounded(&key)),
                ));
            }
        }
    }

    let method = match method {
        Some(Json::String(method)) => method,
        Some(_) => {
            return Err(invalid_request("method", "type", "method must be a string"));
        }
        None => return Err(invalid_request("method", "required", "method is missing")),
    };
    if method.len() > MAX_METHOD_BYTES {
        return Err(invalid_request(
            "method",
            "max_length",
            format!("method is longer than {MAX_METHOD_BYTES} bytes"),
        ));
    }
    let parameters = match parameters {
        None | Some(Json::Null) => Parameters::default(),
        Some(Json::Object(entries)) => Parameters { entries },
        Some(_) => {
            return Err(invalid_request(
                "parameters",
                "type",
                "parameters must be an object",
            ));
        }
    };

    let request = parse_request(&method, parameters)?;
    Ok(Call { request, oneway })
}

/// Dispatches on the method name and parses its parameters.
fn parse_request(method: &str, mut parameters: Parameters) -> Result<Request, BrokerError> {
    let (interface, member) = method.rsplit_once('.').unwrap_or(("", method));
    let request = match (interface, member) {
        (SERVICE_INTERFACE, "GetInfo") => {
            parameters.check_declared(&[])?;
            Request::GetInfo
        }
        (SERVICE_INTERFACE, "GetInterfaceDescription") => {
            parameters.check_declared(&["interface"])?;
            let interface = parameters.required_string("interface", MAX_METHOD_BYTES)?;
            Request::GetInterfaceDescription { interface }
        }
        (BROKER_INTERFACE, "Run") => {
            parameters.check_declared(&["command", "arguments", "stdin"])?;
            let command = parameters.required_string("command", MAX_NAME_BYTES)?;
            let arguments = match parameters.take("arguments") {
                None | Some(Json::Null) => Vec::new(),
                Some(Json::Object(entries)) => parse_arguments(entries)?,
                Some(_) => return Err(invalid_parameter("arguments", "type")),
            };
            let stdin = parameters.optional_string("stdin", MAX_STDIN_BYTES)?;
            Request::Run {
                command,
                arguments,
                stdin,
            }
        }
        (BROKER_INTERFACE, "List") => {
            parameters.check_declared(&[])?;
            Request::List
        }
        (BROKER_INTERFACE, "Describe") => {
            parameters.check_declared(&["command"])?;
            let command = parameters.required_string("command", MAX_NAME_BYTES)?;
            Request::Describe { command }
        }
        (SERVICE_INTERFACE | BROKER_INTERFACE, _) => {
            return Err(BrokerError::new(
                ErrorKind::MethodNotFound,
                method,
                "unknown",
                format!("interface {interface} has no method {member:?}"),
            ));
        }
        _ => {
            return Err(BrokerError::new(
                ErrorKind::InterfaceNotFound,
                interface,
                "unknown",
                format!("the broker does not implement interface {interface:?}"),
            ));
        }
    };
    Ok(request)
}

/// Converts the Run `arguments` object into typed values.
fn parse_arguments(entries: Vec<(String, Json)>) -> Result<Vec<(String, ArgValue)>, BrokerError> {
    if entries.len() > MAX_ARGUMENTS {
        return Err(BrokerError::new(
            ErrorKind::InvalidParameter,
            "arguments",
            "max_count",
            format!("more than {MAX_ARGUMENTS} arguments"),
        ));
    }

    let mut seen = HashSet::with_capacity(entries.len());
    let mut arguments = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if !seen.insert(name.clone()) {
            return Err(invalid_argument(
                &name,
                "duplicate",
                format!("argument {:?} is given more than once", bounded(&name)),
            ));
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(invalid_argument(
                &name,
                "max_length",
                format!("argument name is longer than {MAX_NAME_BYTES} bytes"),
            ));
        }
        let value = match value {
            Json::String(text) if text.len() > MAX_VALUE_BYTES => {
                return Err(invalid_argument(
                    &name,
                    "max_length",
                    format!("argument {name} is longer than {MAX_VALUE_BYTES} bytes"),
                ));
            }
            Json::String(text) => ArgValue::Str(text),
            Json::Int(number) => ArgValue::Int(number),
            Json::Bool(flag) => ArgValue::Bool(flag),
            Json::UnsignedOverI64 => {
                return Err(invalid_argument(
                    &name,
                    "range",
                    format!("argument {name} is outside the 64-bit signed integer range"),
                ));
            }
            Json::Float(number) if is_integer_outside_i64(number) => {
                return Err(invalid_argument(
                    &name,
                    "range",
                    format!("argument {name} is outside the 64-bit signed integer range"),
                ));
            }
            Json::Float(_) | Json::Null | Json::Array | Json::Object(_) => {
                return Err(invalid_argument(
                    &name,
                    "type",
                    format!("argument {name} must be a string, an integer or a boolean"),
                ));
            }
        };
        arguments.push((name, value));
    }
    Ok(arguments)
}

/// Returns whether a JSON number that serde_json read as a float is a whole number outside
/// i64. serde_json reads integer literals outside i64 and u64 as floats, and rounding turns
/// `-9223372036854775809` into -2^63, so -2^63 itself counts as outside too.
fn is_integer_outside_i64(number: f64) -> bool {
    // 2^63 is exact in f64, and every f64 of at least that magnitude is a whole number.
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    number.is_finite() && number.abs() >= TWO_POW_63
}

/// Reads the `oneway`, `more` or `upgrade` flag of a call. Null counts as false.
fn call_flag(key: &str, value: Json) -> Result<bool, BrokerError> {
    match value {
        Json::Bool(flag) => Ok(flag),
        Json::Null => Ok(false),
        _ => Err(invalid_request(
            key,
            "type",
            format!("{key} must be a boolean"),
        )),
    }
}

/// The parameters object of a call, consumed one parameter at a time.
#[derive(Default)]
struct Parameters {
    entries: Vec<(String, Json)>,
}

impl Parameters {
    /// Fails on the first parameter that `declared` does not list.
    fn check_declared(&self, declared: &[&str]) -> Result<(), BrokerError> {
        match self
            .entries
            .iter()
            .find(|(name, _)| !declared.contains(&name.as_str()))
        {
            Some((name, _)) => Err(invalid_parameter(name, "unknown")),
            None => Ok(()),
        }
    }

    fn take(&mut self, name: &str) -> Option<Json> {
        let index = self.entries.iter().position(|(key, _)| key == name)?;
        Some(self.entries.swap_remove(index).1)
    }

    fn required_string(&mut self, name: &str, max_bytes: usize) -> Result<String, BrokerError> {
        match self.optional_string(name, max_bytes)? {
            Some(text) => Ok(text),
            None => Err(invalid_parameter(name, "required")),
        }
    }

    /// Returns the string parameter `name`, or `None` when it is absent or null.
    fn optional_string(
        &mut self,
        name: &str,
        max_bytes: usize,
    ) -> Result<Option<String>, BrokerError> {
        match self.take(name) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(text)) if text.len() > max_bytes => {
                Err(invalid_parameter(name, "max_length"))
            }
            Some(Json::String(text)) => Ok(Some(text)),
            Some(_) => Err(invalid_parameter(name, "type")),
        }
    }
}

fn invalid_request(field: &str, rule: &str, message: impl Into<String>) -> BrokerError {
    BrokerError::new(ErrorKind::InvalidRequest, bounded(field), rule, message)
}

fn invalid_argument(name: &str, rule: &str, message: impl Into<String>) -> BrokerError {
    BrokerError::new(ErrorKind::InvalidArgument, bounded(name), rule, message)
}

/// Builds an InvalidParameter error. Only `parameter` reaches the client, so the message
/// serves the broker's log.
fn invalid_parameter(name: &str, rule: &str) -> BrokerError {
    let name = bounded(name);
    let message = match rule {
        "required" => format!("parameter {name} is missing"),
        "type" => format!("parameter {name} has the wrong type"),
        "unknown" => format!("unknown parameter {name:?}"),
        "max_length" => format!("parameter {name} is too long"),
        _ => format!("parameter {name} is invalid"),
    };
    BrokerError::new(ErrorKind::InvalidParameter, name, rule, message)
}

/// Cuts a client-chosen name to [`MAX_NAME_BYTES`] at a character boundary, so that an
/// error that repeats it stays small.
fn bounded(name: &str) -> String {
    if name.len() <= MAX_NAME_BYTES {
        return name.to_owned();
    }
    let mut end = MAX_NAME_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// A JSON value as the client sent it. Unlike `serde_json::Value`, objects keep their
/// keys in order and may not repeat one, and integers outside i64 are kept apart.
#[derive(Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer above `i64::MAX` that still fits u64.
    UnsignedOverI64,
    Float(f64),
    String(String),
    /// The items are checked for duplicate keys and depth, then dropped: no parameter of
    /// the broker takes an array.
    Array,
    /// Keys are unique, except in the Run `arguments` object (see [`Place`]).
    Object(Vec<(String, Json)>),
}

/// Position of a value in the call. Only the `arguments` object in the call's `parameters`
/// may repeat a key, so that [`parse_arguments`] can report it as a duplicate argument.
/// Every other object rejects a repeated key while it is parsed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Call,
    Parameters,
    Arguments,
    Other,
}

impl Place {
    /// Returns the place of the value stored under `key` in an object at `self`.
    fn of_member(self, key: &str) -> Place {
        match (self, key) {
            (Place::Call, "parameters") => Place::Parameters,
            (Place::Parameters, "arguments") => Place::Arguments,
            _ => Place::Other,
        }
    }
}

/// Causes of a failed parse that serde_json's error does not carry.
#[derive(Default)]
struct ParseState {
    duplicate_key: RefCell<Option<String>>,
    too_deep: Cell<bool>,
}

/// Parses `text` as one JSON value, rejecting duplicate keys and deep nesting.
fn parse_json(text: &str) -> Result<Json, BrokerError> {
    let state = ParseState::default();
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let seed = JsonSeed {
        state: &state,
        depth: 0,
        place: Place::Call,
    };
    let parsed = seed
        .deserialize(&mut deserializer)
        .and_then(|json| deserializer.end().map(|()| json));
    match parsed {
        Ok(json) => Ok(json),
        Err(error) => {
            if let Some(key) = state.duplicate_key.take() {
                let message = format!("duplicate key {:?}", bounded(&key));
                return Err(invalid_request(&key, "duplicate", message));
            }
            if state.too_deep.get() {
                return Err(invalid_request(
                    "request",
                    "depth",
                    format!("the request nests more than {MAX_JSON_DEPTH} levels deep"),
                ));
            }
            // serde_json's message can quote parts of the input, so only its position is
            // passed on.
            let message = format!(
                "invalid JSON at line {} column {}",
                error.line(),
                error.column()
            );
            Err(invalid_request("request", "json", message))
        }
    }
}

/// Deserialises one [`Json`] value at nesting depth `depth`.
#[derive(Clone, Copy)]
struct JsonSeed<'s> {
    state: &'s ParseState,
    depth: usize,
    place: Place,
}

impl JsonSeed<'_> {
    fn nested<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_JSON_DEPTH {
            self.state.too_deep.set(true);
            return Err(E::custom("nesting too deep"));
        }
        Ok(JsonSeed {
            state: self.state,
            depth: self.depth + 1,
            place: Place::Other,
        })
    }
}

impl<'de> DeserializeSeed<'de> for JsonSeed<'_> {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonSeed<'_> {
    type Value = Json;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Json, E> {
        Ok(Json::Bool(value))
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Json, E> {
        Ok(Json::Int(value))
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Json, E> {
        Ok(i64::try_from(value).map_or(Json::UnsignedOverI64, Json::Int))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Json, E> {
        Ok(Json::Float(value))
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Json, E> {
        Ok(Json::String(value.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, value: String) -> Result<Json, E> {
        Ok(Json::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let inner = self.nested()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(Json::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let inner = self.nested()?;
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if self.place != Place::Arguments && !seen.insert(key.clone()) {
                *self.state.duplicate_key.borrow_mut() = Some(key);
                return Err(A::Error::custom("duplicate key"));
            }
            let member = JsonSeed {
                place: self.place.of_member(&key),
                ..inner
            };
            let value = map.next_value_seed(member)?;
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

/// Encodes a successful reply, with its NUL terminator.
pub fn encode_reply(parameters: Value) -> Vec<u8> {
    terminate(json!({ "parameters": parameters }))
}

/// Encodes an error reply, with its NUL terminator.
pub fn encode_error(error: &BrokerError) -> Vec<u8> {
    terminate(json!({
        "error": error.varlink_name(),
        "parameters": error.varlink_parameters(),
    }))
}

fn terminate(message: Value) -> Vec<u8> {
    // JSON text never contains a raw NUL: serde_json escapes U+0000 inside strings.
    let mut bytes = message.to_string().into_bytes();
    bytes.push(0);
    bytes
}

/// Returns the reply parameters of `org.varlink.service.GetInfo`. The URL is the
/// `repository` field of Cargo.toml, empty while that field is unset.
pub fn get_info_parameters() -> Value {
    json!({
        "vendor": "secure_socket",
        "product": "secure_socket",
        "version": env!("CARGO_PKG_VERSION"),
        "url": env!("CARGO_PKG_REPOSITORY"),
        "interfaces": [SERVICE_INTERFACE, BROKER_INTERFACE],
    })
}

/// Returns the interface description of an implemented interface.
pub fn interface_description(name: &str) -> Option<&'static str> {
    match name {
        SERVICE_INTERFACE => Some(SERVICE_DESCRIPTION),
        BROKER_INTERFACE => Some(BROKER_DESCRIPTION),
        _ => None,
    }
}

/// Builds the `CommandInfo` of a command for List and Describe.
pub fn command_info(spec: &CommandSpec) -> Value {
    let arguments: Vec<Value> = spec.arguments.iter().map(argument_info).collect();
    json!({
        "name": spec.name,
        "description": spec.description,
        "arguments": arguments,
        "timeout_ms": spec.timeout_ms,
        "capture_output": spec.capture_output,
        "output_limit": spec.output_limit,
        "stdin_limit": spec.stdin_limit,
        "max_concurrent": spec.max_concurrent,
        "rate_limit_requests": spec.rate_limit.map(|limit| limit.requests),
        "rate_limit_seconds": spec.rate_limit.map(|limit| limit.per_seconds),
    })
}

/// Builds the `ArgumentInfo` of an argument. Fields that do not apply to its kind are
/// null.
fn argument_info(argument: &ArgSpec) -> Value {
    let mut info = Map::new();
    info.insert("name".into(), json!(argument.name));
    info.insert("description".into(), json!(argument.description));
    info.insert("required".into(), json!(argument.required));
    info.insert("sensitive".into(), json!(argument.sensitive));
    for key in [
        "max_length",
        "pattern",
        "charset",
        "allow_newline",
        "allow_control",
        "allow_leading_dash",
        "min",
        "max",
        "values",
        "prefixes",
    ] {
        info.insert(key.into(), Value::Null);
    }

    match &argument.kind {
        ArgKind::String {
            max_length,
            pattern,
            charset,
            ..
        } => {
            info.insert("max_length".into(), json!(max_length));
            info.insert("allow_newline".into(), json!(argument.allow_newline));
            info.insert("allow_control".into(), json!(argument.allow_control));
            info.insert(
                "allow_leading_dash".into(),
                json!(argument.allow_leading_dash),
            );
            if let Some(pattern) = pattern {
                info.insert("pattern".into(), json!(pattern.source));
            }
            if let Some(charset) = charset {
                info.insert("charset".into(), json!(charset.source));
            }
        }
        ArgKind::Integer { min, max, .. } => {
            info.insert("min".into(), json!(min));
            info.insert("max".into(), json!(max));
        }
        ArgKind::Enum { values, .. } => {
            info.insert("values".into(), json!(values));
        }
        ArgKind::Boolean => {}
        ArgKind::Path {
            prefixes,
            max_length,
            ..
        } => {
            info.insert("max_length".into(), json!(max_length));
            info.insert("prefixes".into(), json!(prefixes));
        }
    }
    info.insert("kind".into(), json!(argument.kind.type_name()));
    Value::Object(info)
}

/// Builds the reply parameters of Run. `stdout` and `stderr` carry the output as text, in
/// which bytes that are not UTF-8 become U+FFFD. For such output the reply also carries
/// the exact bytes in base64, as `stdout_base64` or `stderr_base64`.
pub fn run_reply(outcome: &ExecOutcome) -> Value {
    let mut reply = Map::new();
    reply.insert("request_id".into(), json!(outcome.request_id));
    reply.insert("exit_code".into(), json!(outcome.exit_code));
    reply.insert("signal".into(), json!(outcome.signal));
    reply.insert("timed_out".into(), json!(outcome.timed_out));
    reply.insert("duration_ms".into(), json!(outcome.duration_us / 1000));
    insert_output(&mut reply, "stdout", outcome.stdout.as_deref());
    insert_output(&mut reply, "stderr", outcome.stderr.as_deref());
    reply.insert("stdout_truncated".into(), json!(outcome.stdout_truncated));
    reply.insert("stderr_truncated".into(), json!(outcome.stderr_truncated));
    Value::Object(reply)
}

/// Inserts one output stream as the field `stream`, and as `<stream>_base64` as well when
/// the bytes are not valid UTF-8. Output that was not captured is null.
fn insert_output(reply: &mut Map<String, Value>, stream: &str, bytes: Option<&[u8]>) {
    let Some(bytes) = bytes else {
        reply.insert(stream.into(), Value::Null);
        return;
    };
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            reply.insert(stream.into(), json!(text));
        }
        Err(_) => {
            reply.insert(stream.into(), json!(String::from_utf8_lossy(bytes)));
            reply.insert(format!("{stream}_base64"), json!(base64::encode(bytes)));
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::policy::Pattern;

    fn parse(text: &str) -> Result<Call, BrokerError> {
        parse_call(text.as_bytes())
    }

    fn parse_err(text: &str) -> BrokerError {
        parse(text).unwrap_err()
    }

    fn assert_error(error: &BrokerError, kind: ErrorKind, field: &str, rule: &str) {
        assert_eq!(error.kind, kind, "kind of {error:?}");
        assert_eq!(error.field, field, "field of {error:?}");
        assert_eq!(error.rule, rule, "rule of {error:?}");
    }

    fn run_arguments(text: &str) -> Vec<(String, ArgValue)> {
        match parse(text).unwrap().request {
            Request::Run { arguments, .. } => arguments,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn parse_get_info() {
        let call = parse(r#"{"method":"org.varlink.service.GetInfo"}"#).unwrap();
        assert_eq!(call.request, Request::GetInfo);
        assert!(!call.oneway);
        let call = parse(r#"{"method":"org.varlink.service.GetInfo","parameters":{}}"#).unwrap();
        assert_eq!(call.request, Request::GetInfo);
        let call = parse(r#"{"method":"org.varlink.service.GetInfo","parameters":null}"#).unwrap();
        assert_eq!(call.request, Request::GetInfo);
    }

    #[test]
    fn parse_get_interface_description() {
        let call = parse(
            r#"{"method":"org.varlink.service.GetInterfaceDescription",
                "parameters":{"interface":"org.securesocket.Broker"}}"#,
        )
        .unwrap();
        let expected = Request::GetInterfaceDescription {
            interface: BROKER_INTERFACE.into(),
        };
        assert_eq!(call.request, expected);
    }

    #[test]
    fn parse_run_with_all_parameters() {
        let call = parse(
            r#"{"method":"org.securesocket.Broker.Run","oneway":true,"more":false,
                "parameters":{"command":"restart","stdin":"data",
                "arguments":{"service":"nginx","count":-5,"force":true,"big":9223372036854775807}}}"#,
        )
        .unwrap();
        assert!(call.oneway);
        let expected = Request::Run {
            command: "restart".into(),
            arguments: vec![
                ("service".into(), ArgValue::Str("nginx".into())),
                ("count".into(), ArgValue::Int(-5)),
                ("force".into(), ArgValue::Bool(true)),
                ("big".into(), ArgValue::Int(i64::MAX)),
            ],
            stdin: Some("data".into()),
        };
        assert_eq!(call.request, expected);
    }

    #[test]
    fn parse_run_with_null_optionals() {
        let call = parse(
            r#"{"method":"org.securesocket.Broker.Run",
                "parameters":{"command":"status","arguments":null,"stdin":null}}"#,
        )
        .unwrap();
        let expected = Request::Run {
            command: "status".into(),
            arguments: Vec::new(),
            stdin: None,
        };
        assert_eq!(call.request, expected);
    }

    #[test]
    fn parse_list_and_describe() {
        let call = parse(r#"{"method":"org.securesocket.Broker.List"}"#).unwrap();
        assert_eq!(call.request, Request::List);
        let call =
            parse(r#"{"method":"org.securesocket.Broker.Describe","parameters":{"command":"x"}}"#)
                .unwrap();
        assert_eq!(
            call.request,
            Request::Describe {
                command: "x".into()
            }
        );
    }

    #[test]
    fn parse_rejects_invalid_utf8() {
        let error = parse_call(b"{\"method\":\"\xff\"}").unwrap_err();
        assert_error(&error, ErrorKind::InvalidRequest, "request", "utf8");
    }

    #[test]
    fn parse_rejects_malformed_json() {
        for text in [
            "",
            "{",
            "{\"method\":}",
            "{} {}",
            "{\"method\":\"x\"} x",
            "nul\u{0}",
        ] {
            let error = parse_err(text);
            assert_error(&error, ErrorKind::InvalidRequest, "request", "json");
        }
    }

    #[test]
    fn parse_hides_input_in_json_errors() {
        let error = parse_err(r#"{"method": secret-value}"#);
        assert!(!error.message.contains("secret"), "{}", error.message);
    }

    #[test]
    fn parse_rejects_non_object() {
        for text in ["[]", "\"x\"", "1", "null", "true"] {
            let error = parse_err(text);
            assert_error(&error, ErrorKind::InvalidRequest, "request", "type");
        }
    }

    #[test]
    fn parse_rejects_nested_duplicate_keys() {
        let cases = [
            (r#"{"method":"a.B","method":"a.B"}"#, "method"),
            (
                r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"a","command":"b"}}"#,
                "command",
            ),
            (
                r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"a",
                    "arguments":{},"arguments":{}}}"#,
                "arguments",
            ),
            (
                r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"a",
                    "arguments":{"name":{"inner":1,"inner":2}}}}"#,
                "inner",
            ),
            (
                r#"{"method":"a.B","parameters":{"x":[{"deep":1,"deep":2}]}}"#,
                "deep",
            ),
            (
                r#"{"method":"a.B","parameters":{"x":{"arguments":{"k":1,"k":2}}}}"#,
                "k",
            ),
        ];
        for (text, key) in cases {
            let error = parse_err(text);
            assert_error(&error, ErrorKind::InvalidRequest, key, "duplicate");
        }
    }

    #[test]
    fn parse_rejects_duplicate_argument() {
        let error = parse_err(
            r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"a",
                "arguments":{"name":"x","other":1,"name":"secret-value"}}}"#,
        );
        assert_error(&error, ErrorKind::InvalidArgument, "name", "duplicate");
        assert!(!error.message.contains("secret"), "{}", error.message);

        // The same argument sent with values of different types is still a duplicate.
        let error = parse_err(
            r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"a",
                "arguments":{"flag":true,"flag":"true"}}}"#,
        );
        assert_error(&error, ErrorKind::InvalidArgument, "flag", "duplicate");
    }

    #[test]
    fn duplicate_arguments_of_other_methods_are_unknown_parameter() {
        let error = parse_err(
            r#"{"method":"org.securesocket.Broker.Describe","parameters":{"command":"a",
                "arguments":{"name":"x","name":"y"}}}"#,
        );
        assert_error(&error, ErrorKind::InvalidParameter, "arguments", "unknown");
    }

    #[test]
    fn parse_rejects_deep_nesting() {
        let text = format!(
            r#"{{"method":"a.B","parameters":{{"x":{}{}}}}}"#,
            "[".repeat(20),
            "]".repeat(20)
        );
        let error = parse_err(&text);
        assert_error(&error, ErrorKind::InvalidRequest, "request", "depth");

        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let error = parse_err(&text);
        assert_eq!(error.kind, ErrorKind::InvalidRequest);
    }

    #[test]
    fn parse_rejects_unknown_call_key() {
        let error = parse_err(r#"{"method":"org.varlink.service.GetInfo","extra":1}"#);
        assert_error(&error, ErrorKind::InvalidRequest, "extra", "unknown");
    }

    #[test]
    fn parse_rejects_more_and_upgrade() {
        let error = parse_err(r#"{"method":"org.securesocket.Broker.List","more":true}"#);
        assert_error(&error, ErrorKind::InvalidRequest, "more", "unsupported");
        let error = parse_err(r#"{"method":"org.securesocket.Broker.List","upgrade":true}"#);
        assert_error(&error, ErrorKind::InvalidRequest, "upgrade", "unsupported");
        let error = parse_err(r#"{"method":"org.securesocket.Broker.List","oneway":"yes"}"#);
        assert_error(&error, ErrorKind::InvalidRequest, "oneway", "type");
    }

    #[test]
    fn parse_rejects_bad_method() {
        let error = parse_err(r#"{"parameters":{}}"#);
        assert_error(&error, ErrorKind::InvalidRequest, "method", "required");
        let error = parse_err(r#"{"method":5}"#);
        assert_error(&error, ErrorKind::InvalidRequest, "method", "type");
        let long = format!(r#"{{"method":"{}"}}"#, "a".repeat(MAX_METHOD_BYTES + 1));
        let error = parse_err(&long);
        assert_error(&error, ErrorKind::InvalidRequest, "method", "max_length");
    }

    #[test]
    fn parse_rejects_non_object_parameters() {
        let error = parse_err(r#"{"method":"org.securesocket.Broker.List","parameters":[]}"#);
        assert_error(&error, ErrorKind::InvalidRequest, "parameters", "type");
    }

    #[test]
    fn parse_reports_unknown_method_and_interface() {
        let error = parse_err(r#"{"method":"org.securesocket.Broker.Destroy"}"#);
        assert_error(
            &error,
            ErrorKind::MethodNotFound,
            "org.securesocket.Broker.Destroy",
            "unknown",
        );
        let error = parse_err(r#"{"method":"org.varlink.service.Nope"}"#);
        assert_error(
            &error,
            ErrorKind::MethodNotFound,
            "org.varlink.service.Nope",
            "unknown",
        );
        let error = parse_err(r#"{"method":"org.example.Other.Run"}"#);
        assert_error(
            &error,
            ErrorKind::InterfaceNotFound,
            "org.example.Other",
            "unknown",
        );
        let error = parse_err(r#"{"method":"Run"}"#);
        assert_error(&error, ErrorKind::InterfaceNotFound, "", "unknown");
    }

    #[test]
    fn parse_rejects_missing_and_mistyped_parameters() {
        let error = parse_err(r#"{"method":"org.securesocket.Broker.Run","parameters":{}}"#);
        assert_error(&error, ErrorKind::InvalidParameter, "command", "required");
        let error =
            parse_err(r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":null}}"#);
        assert_error(&error, ErrorKind::InvalidParameter, "command", "required");
        let error =
            parse_err(r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":1}}"#);
        assert_error(&error, ErrorKind::InvalidParameter, "command", "type");
        let error = parse_err(
            r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"a","arguments":[]}}"#,
        );
        assert_error(&error, ErrorKind::InvalidParameter, "arguments", "type");
        let error = parse_err(
            r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"a","stdin":true}}"#,
        );
        assert_error(&error, ErrorKind::InvalidParameter, "stdin", "type");
        let error = parse_err(r#"{"method":"org.securesocket.Broker.Describe"}"#);
        assert_error(&error, ErrorKind::InvalidParameter, "command", "required");
        let error = parse_err(r#"{"method":"org.varlink.service.GetInterfaceDescription"}"#);
        assert_error(&error, ErrorKind::InvalidParameter, "interface", "required");
    }

    #[test]
    fn parse_rejects_unknown_parameters() {
        let error = parse_err(r#"{"method":"org.securesocket.Broker.List","parameters":{"x":1}}"#);
        assert_error(&error, ErrorKind::InvalidParameter, "x", "unknown");
        let error = parse_err(
            r#"{"method":"org.securesocket.Broker.Run","parameters":{"command":"a","argument":{}}}"#,
        );
        assert_error(&error, ErrorKind::InvalidParameter, "argument", "unknown");
        let error = parse_err(r#"{"method":"org.varlink.service.GetInfo","parameters":{"a":1}}"#);
        assert_error(&error, ErrorKind::InvalidParameter, "a", "unknown");
    }

    #[test]
    fn parse_rejects_long_names() {
        let name = "c".repeat(MAX_NAME_BYTES + 1);
        let text = format!(
            r#"{{"method":"org.securesocket.Broker.Run","parameters":{{"command":"{name}"}}}}"#
        );
        let error = parse_err(&text);
        assert_error(&error, ErrorKind::InvalidParameter, "command", "max_length");

        let text = format!(
            r#"{{"method":"org.securesocket.Broker.Run",
                "parameters":{{"command":"a","arguments":{{"{name}":1}}}}}}"#
        );
        let error = parse_err(&text);
        assert_eq!(error.kind, ErrorKind::InvalidArgument);
        assert_eq!(error.rule, "max_length");
        assert_eq!(error.field.len(), MAX_NAME_BYTES);

        let text = format!(
            r#"{{"method":"org.securesocket.Broker.Describe","parameters":{{"command":"{name}"}}}}"#
        );
        let error = parse_err(&text);
        assert_error(&error, ErrorKind::InvalidParameter, "command", "max_length");
    }

    #[test]
    fn parse_truncates_echoed_keys() {
        let key = "é".repeat(MAX_NAME_BYTES);
        let text = format!(r#"{{"method":"a.B","{key}":1}}"#);
        let error = parse_err(&text);
        assert_eq!(error.rule, "unknown");
        assert_eq!(error.field, "é".repeat(MAX_NAME_BYTES / 2));
    }

    #[test]
    fn parse_rejects_too_many_arguments() {
        let arguments: Vec<String> = (0..=MAX_ARGUMENTS)
            .map(|i| format!(r#""a{i}":1"#))
            .collect();
        let text = format!(
            r#"{{"method":"org.securesocket.Broker.Run",
                "parameters":{{"command":"a","arguments":{{{}}}}}}}"#,
            arguments.join(",")
        );
        let error = parse_err(&text);
        assert_error(
            &error,
            ErrorKind::InvalidParameter,
            "arguments",
            "max_count",
        );
    }

    #[test]
    fn parse_rejects_argument_types() {
        for value in ["null", "[]", "{}", "1.5", "1e3", "-0.5"] {
            let text = format!(
                r#"{{"method":"org.securesocket.Broker.Run",
                    "parameters":{{"command":"a","arguments":{{"arg":{value}}}}}}}"#
            );
            let error = parse_err(&text);
            assert_error(&error, ErrorKind::InvalidArgument, "arg", "type");
        }
    }

    #[test]
    fn parse_rejects_integers_outside_i64() {
        let values = [
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
            "1e300",
        ];
        for value in values {
            let text = format!(
                r#"{{"method":"org.securesocket.Broker.Run",
                    "parameters":{{"command":"a","arguments":{{"arg":{value}}}}}}}"#
            );
            let error = parse_err(&text);
            assert_error(&error, ErrorKind::InvalidArgument, "arg", "range");
        }
        let arguments = run_arguments(
            r#"{"method":"org.securesocket.Broker.Run",
                "parameters":{"command":"a","arguments":{"arg":-9223372036854775808}}}"#,
        );
        assert_eq!(arguments, vec![("arg".into(), ArgValue::Int(i64::MIN))]);
    }

    #[test]
    fn parse_hides_argument_values_in_errors() {
        let secret = "x".repeat(MAX_VALUE_BYTES + 1);
        let text = format!(
            r#"{{"method":"org.securesocket.Broker.Run",
                "parameters":{{"command":"a","arguments":{{"password":"{secret}"}}}}}}"#
        );
        let error = parse_err(&text);
        assert_error(&error, ErrorKind::InvalidArgument, "password", "max_length");
        assert!(!error.message.contains("xxx"));
    }

    #[test]
    fn parse_rejects_oversized_stdin() {
        let stdin = "s".repeat(MAX_STDIN_BYTES + 1);
        let text = format!(
            r#"{{"method":"org.securesocket.Broker.Run",
                "parameters":{{"command":"a","stdin":"{stdin}"}}}}"#
        );
        let error = parse_err(&text);
        assert_error(&error, ErrorKind::InvalidParameter, "stdin", "max_length");
    }

    #[test]
    fn run_encoding_stays_near_frame_size() {
        for value in ["0", "true", "\"\""] {
            let arguments: Vec<String> = (0..MAX_ARGUMENTS)
                .map(|i| format!(r#""{i}":{value}"#))
                .collect();
            let frame = format!(
                r#"{{"method":"org.securesocket.Broker.Run",
                    "parameters":{{"command":"c","arguments":{{{}}},"stdin":""}}}}"#,
                arguments.join(",")
            );
            let Request::Run {
                command,
                arguments,
                stdin,
            } = parse(&frame).unwrap().request
            else {
                panic!("expected Run");
            };
            let message = crate::protocol::channel::ChildMessage::Exec {
                command,
                arguments,
                stdin: stdin.unwrap_or_default().into_bytes(),
            };
            let encoded = crate::protocol::channel::encode_child_message(&message);
            assert!(encoded.len() < frame.len() + 1024, "value {value}");
        }
    }

    #[test]
    fn encode_reply_adds_nul() {
        let bytes = encode_reply(json!({"a": "\u{0}"}));
        assert_eq!(bytes.last(), Some(&0));
        assert_eq!(bytes.iter().filter(|&&byte| byte == 0).count(), 1);
        let value: Value = serde_json::from_slice(&bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(value, json!({"parameters": {"a": "\u{0}"}}));
    }

    #[test]
    fn encode_error_uses_varlink_name() {
        let error = BrokerError::new(ErrorKind::InvalidArgument, "service", "enum", "bad");
        let bytes = encode_error(&error);
        assert_eq!(bytes.last(), Some(&0));
        let value: Value = serde_json::from_slice(&bytes[..bytes.len() - 1]).unwrap();
        let expected = json!({
            "error": "org.securesocket.Broker.InvalidArgument",
            "parameters": {"argument": "service", "rule": "enum", "message": "bad"},
        });
        assert_eq!(value, expected);
    }

    #[test]
    fn get_info_lists_interfaces() {
        let info = get_info_parameters();
        assert_eq!(info["vendor"], "secure_socket");
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
        assert!(info["url"].is_string());
        assert_eq!(
            info["interfaces"],
            json!([SERVICE_INTERFACE, BROKER_INTERFACE])
        );
    }

    #[test]
    fn interface_description_by_name() {
        assert_eq!(
            interface_description(SERVICE_INTERFACE),
            Some(SERVICE_DESCRIPTION)
        );
        assert_eq!(
            interface_description(BROKER_INTERFACE),
            Some(BROKER_DESCRIPTION)
        );
        assert_eq!(interface_description("org.example"), None);
        for (name, description) in [
            (SERVICE_INTERFACE, SERVICE_DESCRIPTION),
            (BROKER_INTERFACE, BROKER_DESCRIPTION),
        ] {
            let declaration = format!("\ninterface {name}\n");
            assert!(description.contains(&declaration), "{name}");
        }
    }

    /// Returns the field names of `error NAME (a: string, b: string)` in `description`.
    fn declared_error_fields(description: &str, name: &str) -> Vec<String> {
        let prefix = format!("error {name} (");
        let line = description
            .lines()
            .find(|line| line.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no declaration of error {name}"));
        let fields = line[prefix.len()..].trim_end_matches(')');
        fields
            .split(',')
            .filter(|field| !field.trim().is_empty())
            .map(|field| field.split(':').next().unwrap().trim().to_owned())
            .collect()
    }

    #[test]
    fn error_parameters_match_descriptions() {
        for tag in 1..=u8::MAX {
            let Some(kind) = ErrorKind::from_u8(tag) else {
                continue;
            };
            // With a request id, so that the optional request_id field is sent where the
            // description declares it.
            let error = BrokerError::new(kind, "f", "r", "m").with_request_id("0123-1");
            let (interface, member) = error.varlink_name().rsplit_once('.').unwrap();
            let description = interface_description(interface).unwrap();
            let mut declared = declared_error_fields(description, member);
            // The standard interface cannot declare request_id, so its errors carry it
            // as an undeclared member.
            if interface == SERVICE_INTERFACE {
                declared.push("request_id".to_owned());
            }
            declared.sort();
            let Value::Object(parameters) = error.varlink_parameters() else {
                panic!("parameters of {kind:?} are not an object");
            };
            let mut sent: Vec<String> = parameters.keys().cloned().collect();
            sent.sort();
            assert_eq!(sent, declared, "{kind:?}");
        }
    }

    fn argument(name: &str, kind: ArgKind) -> ArgSpec {
        ArgSpec {
            name: name.into(),
            description: format!("the {name}"),
            kind,
            required: true,
            sensitive: false,
            allow_leading_dash: false,
            allow_newline: false,
            allow_control: false,
        }
    }

    #[test]
    fn command_info_describes_every_kind() {
        let spec = CommandSpec {
            name: "deploy".into(),
            description: "Deploy a site".into(),
            arguments: vec![
                ArgSpec {
                    allow_newline: true,
                    ..argument(
                        "branch",
                        ArgKind::String {
                            max_length: 64,
                            pattern: Some(Pattern::new("[a-z]+").unwrap()),
                            charset: Some(Pattern::new("[a-z]").unwrap()),
                        },
                    )
                },
                argument("count", ArgKind::Integer { min: 1, max: 9 }),
                argument(
                    "mode",
                    ArgKind::Enum {
                        values: vec!["fast".into(), "slow".into()],
                    },
                ),
                argument("force", ArgKind::Boolean),
                argument(
                    "target",
                    ArgKind::Path {
                        prefixes: vec!["/srv".into()],
                        max_length: 4096,
                    },
                ),
            ],
            timeout_ms: 5000,
            capture_output: true,
            output_limit: 1024,
            stdin_limit: 0,
            max_concurrent: 4,
            rate_limit: None,
        };
        let info = command_info(&spec);

        assert_eq!(info["name"], "deploy");
        assert_eq!(info["description"], "Deploy a site");
        assert_eq!(info["timeout_ms"], 5000);
        assert_eq!(info["capture_output"], true);
        assert_eq!(info["output_limit"], 1024);
        assert_eq!(info["stdin_limit"], 0);
        let arguments = info["arguments"].as_array().unwrap();
        assert_eq!(arguments.len(), 5);
        let null = Value::Null;
        let expected = [
            json!({"name": "branch", "kind": "string", "description": "the branch",
                "required": true, "sensitive": false, "max_length": 64, "pattern": "[a-z]+",
                "charset": "[a-z]", "allow_newline": true, "allow_control": false,
                "allow_leading_dash": false, "min": null, "max": null, "values": null,
                "prefixes": null}),
            json!({"name": "count", "kind": "integer", "description": "the count",
                "required": true, "sensitive": false, "max_length": null, "pattern": null,
                "charset": null, "allow_newline": null, "allow_control": null,
                "allow_leading_dash": null, "min": 1, "max": 9, "values": null, "prefixes": null}),
            json!({"name": "mode", "kind": "enum", "description": "the mode",
                "required": true, "sensitive": false, "max_length": null, "pattern": null,
                "charset": null, "allow_newline": null, "allow_control": null,
                "allow_leading_dash": null, "min": null, "max": null, "values": ["fast", "slow"],
                "prefixes": null}),
            json!({"name": "force", "kind": "boolean", "description": "the force",
                "required": true, "sensitive": false, "max_length": null, "pattern": null,
                "charset": null, "allow_newline": null, "allow_control": null,
                "allow_leading_dash": null, "min": null, "max": null, "values": null, "prefixes": null}),
            json!({"name": "target", "kind": "path", "description": "the target",
                "required": true, "sensitive": false, "max_length": 4096, "pattern": null,
                "charset": null, "allow_newline": null, "allow_control": null,
                "allow_leading_dash": null, "min": null, "max": null, "values": null,
                "prefixes": ["/srv"]}),
        ];
        for (argument, expected) in arguments.iter().zip(expected) {
            assert_eq!(argument, &expected);
        }
        assert_eq!(arguments[3]["max"], null);
    }

    #[test]
    fn run_reply_converts_outcome() {
        let outcome = ExecOutcome {
            request_id: "r-1".into(),
            exit_code: Some(3),
            signal: None,
            timed_out: false,
            duration_us: 12_999,
            stdout: Some(b"ok\xff".to_vec()),
            stderr: None,
            stdout_truncated: true,
            stderr_truncated: false,
        };
        let expected = json!({
            "request_id": "r-1",
            "exit_code": 3,
            "signal": null,
            "timed_out": false,
            "duration_ms": 12,
            "stdout": "ok\u{fffd}",
            "stdout_base64": "b2v/",
            "stderr": null,
            "stdout_truncated": true,
            "stderr_truncated": false,
        });
        assert_eq!(run_reply(&outcome), expected);
    }

    #[test]
    fn run_reply_sends_base64_only_for_invalid_utf8() {
        let outcome = ExecOutcome {
            stdout: Some("caf\u{e9}\n".as_bytes().to_vec()),
            stderr: Some(b"\xc3".to_vec()),
            ..ExecOutcome::default()
        };
        let reply = run_reply(&outcome);
        assert_eq!(reply["stdout"], json!("caf\u{e9}\n"));
        assert_eq!(reply.get("stdout_base64"), None);
        assert_eq!(reply["stderr"], json!("\u{fffd}"));
        assert_eq!(reply["stderr_base64"], json!("ww=="));
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_call(&bytes);
        }

        #[test]
        fn parse_never_panics_on_json_like_text(text in r#"[{}\[\]",:a-z0-9.\-e\\ ]{0,200}"#) {
            let _ = parse_call(text.as_bytes());
        }

        #[test]
        fn parse_keeps_argument_values(
            arguments in prop::collection::btree_map(
                "[a-z_]{1,16}",
                prop_oneof![
                    any::<i64>().prop_map(ArgValue::Int),
                    any::<bool>().prop_map(ArgValue::Bool),
                    any::<String>().prop_map(ArgValue::Str),
                ],
                0..MAX_ARGUMENTS,
            ),
        ) {
            let mut object = Map::new();
            for (name, value) in &arguments {
                let value = match value {
                    ArgValue::Str(text) => json!(text),
                    ArgValue::Int(number) => json!(number),
                    ArgValue::Bool(flag) => json!(flag),
                };
                object.insert(name.clone(), value);
            }
            let request = json!({
                "method": "org.securesocket.Broker.Run",
                "parameters": {"command": "c", "arguments": object},
            });
            let parsed = run_arguments(&request.to_string());
            let expected: Vec<(String, ArgValue)> = arguments.into_iter().collect();
            prop_assert_eq!(parsed, expected);
        }
    }
}
