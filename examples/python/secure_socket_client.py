"""Client for the secure_socket broker that uses only the Python standard library.

The broker speaks varlink: each request is a JSON object followed by a NUL byte, and so
is each reply. A reply carries either "parameters" or an "error" with the qualified error
name. This module sends one call per connection and raises BrokerError for an error
reply, so a caller handles the broker's typed errors (InvalidArgument, PermissionDenied,
UnknownCommand, ...) with one except clause.

    from secure_socket_client import BrokerError, Client

    client = Client("/run/secure_socket/broker.sock")
    try:
        reply = client.run("add-mail-user", {"user": "alice", "domain": "example.org",
                                             "quota_mb": 500, "password": "s3cret"})
    except BrokerError as error:
        print(error.name, error.parameters)
    else:
        print(reply["exit_code"], reply["stdout"])

reply["stdout"] and reply["stderr"] are text, in which bytes that are not UTF-8 are
replaced by U+FFFD. output_bytes(reply, "stdout") returns the exact bytes, which the
broker sends in base64 for such output.

Run as a program, it calls one command, writes its output byte for byte, and exits
with the command's exit code:

    python3 secure_socket_client.py [--socket PATH] COMMAND [name=value | name:=JSON]...
    python3 secure_socket_client.py [--socket PATH] --list

The test suite runs it with Debian 12's /usr/bin/python3 (Python 3.11).
"""

import argparse
import base64
import binascii
import json
import math
import socket
import sys
import unicodedata

DEFAULT_SOCKET = "/run/secure_socket/broker.sock"

# Largest reply accepted, in bytes. A reply contains at most two streams of output_limit
# bytes each (65536 at most), escaped as JSON, so 4 MiB leaves ample room.
MAX_REPLY_BYTES = 4 * 1024 * 1024

BROKER_INTERFACE = "org.securesocket.Broker"


class BrokerError(Exception):
    """A varlink error reply.

    `name` is the qualified error name, for example
    "org.securesocket.Broker.InvalidArgument", and `parameters` its fields as a dict,
    for example {"argument": "user", "rule": "pattern", "message": "..."}.
    """

    def __init__(self, name, parameters):
        self.name = name
        self.parameters = parameters
        message = parameters.get("message") if isinstance(parameters, dict) else None
        super().__init__("%s: %s" % (name, message or json.dumps(parameters)))


class Client:
    """Client of the broker listening on the unix socket `path`.

    `timeout` is the time in seconds that one call may take, connection and reply
    included. A Run reply arrives only when the command has finished, so the timeout must
    exceed the command's timeout_ms. Errors other than BrokerError are OSError
    subclasses: socket.timeout, ConnectionError and FileNotFoundError when nothing
    listens on the path.
    """

    def __init__(self, path=DEFAULT_SOCKET, timeout=60.0):
        self.path = path
        self.timeout = timeout

    def call(self, method, parameters=None):
        """Send one method call and return the parameters of its reply.

        Each call opens a new connection, because the broker serves a connection with one
        sandboxed process and closes it after max_requests_per_connection requests.
        """
        request = {"method": method, "parameters": parameters or {}}
        # allow_nan=False raises ValueError for NaN and infinities, which Python's json
        # would otherwise write as the invalid JSON tokens NaN and Infinity.
        frame = json.dumps(request, allow_nan=False).encode("utf-8") + b"\0"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(self.timeout)
            connection.connect(self.path)
            # A broker that rejects the connection at once (Busy) writes its reply and
            # closes without reading, so a failed send may still have a reply waiting.
            send_error = None
            try:
                connection.sendall(frame)
            except OSError as error:
                send_error = error
            try:
                reply = _receive_frame(connection)
            except OSError:
                if send_error is not None:
                    raise send_error
                raise

        message = json.loads(reply.decode("utf-8"))
        if "error" in message:
            raise BrokerError(message["error"], message.get("parameters") or {})
        return message.get("parameters") or {}

    def run(self, command, arguments=None, stdin=None):
        """Run `command` with `arguments` (a dict of str, int or bool values).

        Returns the reply parameters: request_id, exit_code (None when a signal killed the
        command), signal, timed_out, duration_ms, stdout and stderr (None unless the
        command captures output), stdout_truncated and stderr_truncated. For output that
        is not UTF-8, stdout and stderr contain U+FFFD in place of the invalid bytes, and
        stdout_base64 and stderr_base64 contain the exact bytes (see output_bytes).
        """
        parameters = {"command": command, "arguments": arguments or {}}
        if stdin is not None:
            parameters["stdin"] = stdin
        return self.call(BROKER_INTERFACE + ".Run", parameters)

    def list(self):
        """Return the commands this caller may run, as a list of CommandInfo dicts."""
        return self.call(BROKER_INTERFACE + ".List")["commands"]

    def describe(self, command):
        """Return the CommandInfo dict of one command this caller may run."""
        return self.call(BROKER_INTERFACE + ".Describe", {"command": command})["command"]


def output_bytes(reply, stream):
    """Return the exact bytes of one output stream ("stdout" or "stderr") of a Run reply.

    Uses the stream's base64 field when the broker sent one, because the output is not
    UTF-8, and the text otherwise. Returns b"" when the command does not capture output.
    Raises ValueError when the base64 field is not valid base64.
    """
    encoded = reply.get(stream + "_base64")
    if encoded is not None:
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error as error:
            raise ValueError("invalid %s_base64 in the reply: %s" % (stream, error)) from error
    return (reply.get(stream) or "").encode("utf-8")


def _receive_frame(connection):
    """Read up to the first NUL byte and return the bytes before it."""
    received = bytearray()
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError("the broker closed the connection without a reply")
        end = chunk.find(b"\0")
        if end >= 0:
            received += chunk[:end]
            return bytes(received)
        received += chunk
        if len(received) > MAX_REPLY_BYTES:
            raise ConnectionError("the reply is larger than %d bytes" % MAX_REPLY_BYTES)


def _parse_arguments(items):
    """Turn name=value (a string) and name:=JSON (any JSON value) items into a dict."""
    arguments = {}
    for item in items:
        if "=" not in item:
            raise ValueError("invalid argument %r: expected name=value or name:=JSON" % item)
        # The first "=" ends the name, so a string value may itself contain ":=".
        _check_utf8(item, "argument")
        name, value = item.split("=", 1)
        if name.endswith(":"):
            name = name[:-1]
            value = _parse_json_value(name, value)
        if not name:
            raise ValueError("invalid argument %r: the name is empty" % item)
        if name in arguments:
            raise ValueError("argument %r given twice" % name)
        arguments[name] = value
    return arguments


def _check_utf8(word, kind):
    """Raise ValueError when the command-line word `word` was not valid UTF-8.

    Python decodes argv with surrogateescape, so a byte that is not UTF-8 arrives as a
    lone surrogate, which json.dumps would send as a \\udcXX escape that the broker
    rejects. The message shows the original bytes, for example 'mode=\\xff'.
    """
    try:
        word.encode("utf-8")
    except UnicodeEncodeError:
        escaped = word.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
        raise ValueError("invalid %s '%s': not valid UTF-8" % (kind, _escape_control(escaped))) \
            from None


def _escape_control(text):
    """Return `text` with each control character (category Cc) written as a Python
    escape such as \\n, so that a string from the broker cannot split a line or reach
    the terminal as an escape sequence."""
    return "".join(
        character.encode("unicode_escape").decode("ascii")
        if unicodedata.category(character) == "Cc"
        else character
        for character in text
    )


def _reject_constant(constant):
    """Raise ValueError for NaN, Infinity and -Infinity, which JSON does not have."""
    raise ValueError("%s is not a JSON value" % constant)


def _parse_finite_float(text):
    """Parse a JSON number as a float, rejecting one too large for a float (1e999)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("%s is out of the range of a float" % text)
    return value


def _parse_json_value(name, text):
    """Parse the JSON value of argument `name`, rejecting NaN and infinities.

    Python's json.loads accepts NaN, Infinity and -Infinity by default and reads 1e999 as
    infinity, and json.dumps would then send tokens that no strict JSON parser accepts.
    """
    try:
        return json.loads(
            text, parse_constant=_reject_constant, parse_float=_parse_finite_float
        )
    except ValueError as error:
        raise ValueError("invalid JSON value for argument %r: %s" % (name, error)) from error


class _UsageParser(argparse.ArgumentParser):
    """Argument parser that exits with 64 (EX_USAGE) on a usage error, as
    `secure_socket call` does, instead of argparse's 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(64, "%s: error: %s\n" % (self.prog, message))


def _main():
    """Run one command, or list the commands, from the command line.

    The exit codes match `secure_socket call`: the command's own exit code, 124 when it
    timed out, 128+N when signal N killed it, 65 when the broker rejected the request,
    69 when the broker could not be reached, 64 for usage errors.
    """
    parser = _UsageParser(description="Call the secure_socket broker.")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="broker socket path")
    parser.add_argument("--list", action="store_true", help="list the commands you may run")
    parser.add_argument("command", nargs="?", help="command to run")
    parser.add_argument("arguments", nargs="*", help="name=value or name:=JSON")
    options = parser.parse_args()
    if options.list and options.command is not None:
        parser.error("--list takes no command")
    if not options.list and options.command is None:
        parser.error("a command or --list is required")

    try:
        if options.command is not None:
            _check_utf8(options.command, "command")
        arguments = _parse_arguments(options.arguments)
    except ValueError as error:
        parser.error(str(error))

    client = Client(options.socket)
    try:
        if options.list:
            for command in client.list():
                print("%s\t%s" % (_escape_control(command["name"]),
                                   _escape_control(command["description"])))
            return 0
        reply = client.run(options.command, arguments)
        stdout = output_bytes(reply, "stdout")
        stderr = output_bytes(reply, "stderr")
    except BrokerError as error:
        print("%s %s" % (error.name, json.dumps(error.parameters)), file=sys.stderr)
        return 65
    except (OSError, ValueError) as error:
        # ValueError: a reply that is not UTF-8 JSON, or invalid base64 in it.
        print("failed to call the broker at %s: %s" % (options.socket, error), file=sys.stderr)
        return 69

    sys.stdout.buffer.write(stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(stderr)
    sys.stderr.buffer.flush()
    truncated = " and ".join(
        stream for stream in ("stdout", "stderr") if reply.get(stream + "_truncated")
    )
    if truncated:
        print("note: the command's %s output was truncated at its output_limit" % truncated,
              file=sys.stderr)
    if reply.get("timed_out"):
        return 124
    if reply.get("signal") is not None:
        return 128 + reply["signal"]
    return reply["exit_code"]


if __name__ == "__main__":
    raise SystemExit(_main())
