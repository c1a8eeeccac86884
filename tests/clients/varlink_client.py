"""Call the broker through the `varlink` package from PyPI, as a third-party client would.

Usage: varlink_client.py unix:/path/to/broker.sock

The client builds its calls from the interface description that the broker serves, so a
description it cannot parse, or a reply that does not match it, fails here. Each check
prints one `ok:` line; the first failure prints the reason to stderr and exits 1.
Expects the policy of tests/python_client.rs and to run as www-data (uid 33).
"""

import base64
import sys

import varlink

BROKER_INTERFACE = "org.securesocket.Broker"


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def expect_error(call, expected_name, **expected_parameters):
    """Run `call` and check that it raises the varlink error `expected_name`."""
    try:
        reply = call()
    except varlink.VarlinkError as error:
        if error.error() != expected_name:
            fail("expected %s, got %s" % (expected_name, error.as_dict()))
        parameters = error.parameters() or {}
        for key, value in expected_parameters.items():
            if parameters.get(key) != value:
                fail("expected %s=%r in %s" % (key, value, error.as_dict()))
        return
    fail("expected %s, got the reply %r" % (expected_name, reply))


def main():
    if len(sys.argv) != 2:
        fail("usage: varlink_client.py unix:/path/to/broker.sock")
    address = sys.argv[1]

    with varlink.Client(address=address) as client:
        interfaces = client.get_interfaces()
        if BROKER_INTERFACE not in interfaces:
            fail("GetInfo lists %r without %s" % (interfaces, BROKER_INTERFACE))
        print("ok: GetInfo lists " + BROKER_INTERFACE)

        with client.open(BROKER_INTERFACE) as broker:
            print("ok: interface description parsed")

            names = sorted(command["name"] for command in broker.List()["commands"])
            if names != ["binary", "greet", "hello"]:
                fail("List returned %r" % names)
            print("ok: List shows exactly binary, greet, hello")

            reply = broker.Run(command="hello", arguments={})
            if reply.get("exit_code") != 0:
                fail("Run hello returned %r" % reply)
            if "peer uid: 33" not in (reply.get("stdout") or ""):
                fail("Run hello printed %r" % reply.get("stdout"))
            print("ok: Run hello printed peer uid 33")

            reply = broker.Run(command="greet", arguments={"name": "world"})
            if reply.get("stdout") != "hello, world\n":
                fail("Run greet returned %r" % reply)
            print("ok: Run greet passed its argument")
            if "stdout_base64" in reply:
                fail("Run greet sent stdout_base64 for UTF-8 output: %r" % reply)

            reply = broker.Run(command="binary", arguments={})
            if reply.get("stdout") != "caf\u00e9 \ufffd\ufffd":
                fail("Run binary returned the text %r" % reply.get("stdout"))
            exact = base64.b64decode(reply.get("stdout_base64") or "", validate=True)
            if exact != b"caf\xc3\xa9 \xff\xfe":
                fail("Run binary returned the bytes %r" % exact)
            print("ok: Run binary returned the exact bytes in stdout_base64")

            expect_error(
                lambda: broker.Run(command="greet", arguments={"name": "World!"}),
                BROKER_INTERFACE + ".InvalidArgument",
                argument="name",
                rule="pattern",
            )
            print("ok: invalid argument rejected")

            expect_error(
                lambda: broker.Run(command="no-such-command", arguments={}),
                BROKER_INTERFACE + ".UnknownCommand",
                command="no-such-command",
            )
            print("ok: unknown command rejected")

        # The broker adds request_id to the standard errors, which do not declare it.
        # The package must still raise the standard error with its declared member.
        expect_error(
            lambda: client.get_interface("org.example.Missing"),
            "org.varlink.service.InterfaceNotFound",
            interface="org.example.Missing",
        )
        print("ok: unknown interface rejected")


if __name__ == "__main__":
    try:
        main()
    except varlink.VarlinkError as error:
        fail("unexpected varlink error %s" % error.as_dict())
