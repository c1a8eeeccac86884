<?php
/**
 * Runs one broker command from the command line, as a web backend would from a request:
 *
 *     php run_command.php [--socket PATH] COMMAND [name=value | name:=JSON]...
 *     php run_command.php --help
 *     php run_command.php add-mail-user user=alice domain=example.org quota_mb:=500 password=s3cret
 *
 * name=value sends a string and name:=JSON any JSON value. The command's stdout and stderr
 * are written byte for byte, from the base64 fields of the reply when the output is not
 * UTF-8, and a note on stderr follows output truncated at output_limit. The exit code is the command's own, or one of those of `secure_socket call`:
 * 124 when the command timed out, 128+N when signal N killed it, 65 when the broker
 * rejected the request (the varlink error is printed on stderr), 69 when the broker could
 * not be reached, and 64 for usage errors.
 */

declare(strict_types=1);

require __DIR__ . '/secure_socket_client.php';

const EXIT_USAGE = 64;
const EXIT_REJECTED = 65;
const EXIT_UNAVAILABLE = 69;
const EXIT_TIMED_OUT = 124;

/**
 * Turns name=value and name:=JSON items into the arguments array of a Run call.
 *
 * @param list<string> $items
 * @return array<string, mixed>
 * @throws InvalidArgumentException naming the item at fault
 */
function parse_arguments(array $items): array
{
    $arguments = [];
    foreach ($items as $item) {
        // PHP strings are bytes, and json_encode would fail later without naming the item.
        if (preg_match('//u', $item) !== 1) {
            $shown = addcslashes($item, "\0..\37\177..\377");
            throw new InvalidArgumentException("invalid argument \"{$shown}\": not valid UTF-8");
        }
        $json = strpos($item, ':=');
        $equals = strpos($item, '=');
        if ($json !== false && $json < $equals) {
            $name = substr($item, 0, $json);
            try {
                $value = json_decode(substr($item, $json + 2), false, 512, JSON_THROW_ON_ERROR);
            } catch (JsonException $error) {
                throw new InvalidArgumentException("invalid JSON value for argument \"{$name}\"");
            }
        } elseif ($equals !== false) {
            $name = substr($item, 0, $equals);
            $value = substr($item, $equals + 1);
        } else {
            throw new InvalidArgumentException("invalid argument \"{$item}\": expected name=value or name:=JSON");
        }
        if ($name === '') {
            throw new InvalidArgumentException("invalid argument \"{$item}\": the name is empty");
        }
        if (array_key_exists($name, $arguments)) {
            throw new InvalidArgumentException("argument \"{$name}\" given twice");
        }
        $arguments[$name] = $value;
    }
    return $arguments;
}

function main(array $argv): int
{
    $usage = "usage: php run_command.php [--socket PATH] COMMAND [name=value | name:=JSON]...\n";
    $socketPath = SecureSocketClient::DEFAULT_SOCKET;
    $rest = array_slice($argv, 1);
    if ($rest !== [] && $rest[0] === '--socket') {
        // A lone --socket is a missing value, never the command "--socket".
        if (count($rest) < 2) {
            fwrite(STDERR, "missing value for option --socket\n" . $usage);
            return EXIT_USAGE;
        }
        $socketPath = $rest[1];
        $rest = array_slice($rest, 2);
    }
    if ($rest === []) {
        fwrite(STDERR, $usage);
        return EXIT_USAGE;
    }
    if ($rest[0] === '--help' || $rest[0] === '-h') {
        fwrite(STDOUT, $usage);
        return 0;
    }

    $command = $rest[0];
    try {
        $arguments = parse_arguments(array_slice($rest, 1));
    } catch (InvalidArgumentException $error) {
        fwrite(STDERR, $error->getMessage() . "\n");
        return EXIT_USAGE;
    }

    $client = new SecureSocketClient($socketPath);
    try {
        $reply = $client->run($command, $arguments);
        $stdout = SecureSocketClient::outputBytes($reply, 'stdout');
        $stderr = SecureSocketClient::outputBytes($reply, 'stderr');
    } catch (SecureSocketBrokerError $error) {
        fwrite(STDERR, $error->getErrorName() . ' ' . json_encode($error->getParameters()) . "\n");
        return EXIT_REJECTED;
    } catch (SecureSocketConnectionError $error) {
        fwrite(STDERR, $error->getMessage() . "\n");
        return EXIT_UNAVAILABLE;
    } catch (JsonException $error) {
        // json_encode fails on a string that is not UTF-8 and on a float out of range
        // (json_decode reads 1e999 as INF), and its message names which.
        fwrite(STDERR, "invalid argument: cannot encode it as JSON: " . $error->getMessage() . "\n");
        return EXIT_USAGE;
    }

    fwrite(STDOUT, $stdout);
    fwrite(STDERR, $stderr);
    $truncated = array_filter(['stdout', 'stderr'], fn ($stream) => $reply[$stream . '_truncated'] ?? false);
    if ($truncated !== []) {
        fwrite(STDERR, "note: the command's " . implode(' and ', $truncated)
            . " output was truncated at its output_limit\n");
    }
    if ($reply['timed_out']) {
        return EXIT_TIMED_OUT;
    }
    if (isset($reply['signal'])) {
        return 128 + $reply['signal'];
    }
    return $reply['exit_code'];
}

exit(main($argv));
