<?php
/**
 * Calls the broker through examples/php/secure_socket_client.php and prints the outcome
 * as one JSON object, so that tests/examples.rs can check it field by field:
 *
 *     php call_example_client.php SOCKET list
 *     php call_example_client.php SOCKET run COMMAND ARGUMENTS_JSON
 *
 * Prints {"reply": ...} for a reply, or {"error": NAME, "parameters": {...}} when the
 * client throws SecureSocketBrokerError. Any other exception ends the script with an
 * error, which fails the test. Expects the client file in the same directory.
 */

declare(strict_types=1);

require __DIR__ . '/secure_socket_client.php';

function main(array $argv): int
{
    if (count($argv) < 3) {
        fwrite(STDERR, "usage: php call_example_client.php SOCKET list|run COMMAND ARGUMENTS_JSON\n");
        return 2;
    }
    $client = new SecureSocketClient($argv[1], 30.0);
    try {
        if ($argv[2] === 'list') {
            $outcome = ['reply' => $client->listCommands()];
        } elseif ($argv[2] === 'run' && count($argv) === 5) {
            $arguments = json_decode($argv[4], true, 512, JSON_THROW_ON_ERROR);
            $outcome = ['reply' => $client->run($argv[3], $arguments)];
        } else {
            fwrite(STDERR, "unknown mode or wrong number of arguments\n");
            return 2;
        }
    } catch (SecureSocketBrokerError $error) {
        $outcome = [
            'error' => $error->getErrorName(),
            'parameters' => (object) $error->getParameters(),
        ];
    }
    echo json_encode($outcome, JSON_THROW_ON_ERROR), "\n";
    return 0;
}

exit(main($argv));
