"""Call the broker through examples/python/secure_socket_client.py and print the outcome.

Usage:
    call_example_client.py SOCKET list
    call_example_client.py SOCKET run COMMAND ARGUMENTS_JSON

Prints one JSON object, so that tests/examples.rs can check it field by field:
{"reply": ...} for a reply, or {"error": NAME, "parameters": {...}} when the client raises
BrokerError. Any other exception ends the script with a traceback, which fails the test.
Expects the client module in the same directory.
"""

import json
import sys

from secure_socket_client import BrokerError, Client


def main(argv):
    if len(argv) < 3:
        print("usage: call_example_client.py SOCKET list|run COMMAND ARGUMENTS_JSON",
              file=sys.stderr)
        return 2
    client = Client(argv[1], timeout=30.0)
    try:
        if argv[2] == "list":
            outcome = {"reply": client.list()}
        elif argv[2] == "run" and len(argv) == 5:
            outcome = {"reply": client.run(argv[3], json.loads(argv[4]))}
        else:
            print("unknown mode or wrong number of arguments", file=sys.stderr)
            return 2
    except BrokerError as error:
        outcome = {"error": error.name, "parameters": error.parameters}
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
