<?php
/**
 * Client for the secure_socket broker, using only PHP's standard stream and JSON functions.
 *
 * The broker speaks varlink: each request is a JSON object followed by a NUL byte, and so
 * is each reply. A reply carries either "parameters" or an "error" with the qualified error
 * name. This client sends one call per connection and throws SecureSocketBrokerError for an
 * error reply, so a caller handles the broker's typed errors (InvalidArgument,
 * PermissionDenied, UnknownCommand, ...) with one catch block:
 *
 *     require __DIR__ . '/secure_socket_client.php';
 *
 *     $client = new SecureSocketClient('/run/secure_socket/broker.sock');
 *     try {
 *         $reply = $client->run('report-caller');
 *         echo $reply['exit_code'], "\n", $reply['stdout'];
 *     } catch (SecureSocketBrokerError $error) {
 *         echo $error->getErrorName(), ' ', json_encode($error->getParameters()), "\n";
 *     }
 *
 * $reply['stdout'] and $reply['stderr'] are text, in which bytes that are not UTF-8 are
 * replaced by U+FFFD. SecureSocketClient::outputBytes($reply, 'stdout') returns the exact
 * bytes, which the broker sends in base64 for such output.
 *
 * The test suite runs it with Debian 12's php-cli (PHP 8.2) as www-data.
 */

declare(strict_types=1);

/** A varlink error reply: the qualified error name and its parameters. */
class SecureSocketBrokerError extends RuntimeException
{
    /** @var string */
    private $errorName;

    /** @var array<string, mixed> */
    private $parameters;

    /** @param array<string, mixed> $parameters */
    public function __construct(string $errorName, array $parameters)
    {
        $this->errorName = $errorName;
        $this->parameters = $parameters;
        $detail = isset($parameters['message']) && is_string($parameters['message'])
            ? $parameters['message']
            : json_encode($parameters);
        parent::__construct($errorName . ': ' . $detail);
    }

    /** Returns the qualified name, for example "org.securesocket.Broker.InvalidArgument". */
    public function getErrorName(): string
    {
        return $this->errorName;
    }

    /**
     * Returns the error's fields, for example
     * ["argument" => "user", "rule" => "pattern", "message" => "..."].
     *
     * @return array<string, mixed>
     */
    public function getParameters(): array
    {
        return $this->parameters;
    }
}

/** The broker could not be reached, or the connection failed before a whole reply arrived. */
class SecureSocketConnectionError extends RuntimeException
{
}

/** Client of the broker listening on one unix socket. */
class SecureSocketClient
{
    public const DEFAULT_SOCKET = '/run/secure_socket/broker.sock';

    public const BROKER_INTERFACE = 'org.securesocket.Broker';

    /**
     * Largest reply accepted, in bytes. A reply contains at most two streams of
     * output_limit bytes each (65536 at most), escaped as JSON, so 4 MiB leaves ample room.
     */
    public const MAX_REPLY_BYTES = 4 * 1024 * 1024;

    /** @var string */
    private $socketPath;

    /** @var float */
    private $timeoutSeconds;

    /**
     * Creates a client for the broker listening on $socketPath.
     *
     * $timeoutSeconds bounds the connection and each read. A Run reply arrives only when
     * the command has finished, so the timeout must exceed the command's timeout_ms.
     */
    public function __construct(string $socketPath = self::DEFAULT_SOCKET, float $timeoutSeconds = 60.0)
    {
        $this->socketPath = $socketPath;
        $this->timeoutSeconds = $timeoutSeconds;
    }

    /**
     * Runs $command with $arguments (string, int or bool values by argument name).
     *
     * Returns the reply parameters: request_id, exit_code (null when a signal killed the
     * command), signal, timed_out, duration_ms, stdout and stderr (null unless the command
     * captures output), stdout_truncated and stderr_truncated. For output that is not
     * UTF-8, stdout and stderr contain U+FFFD in place of the invalid bytes, and
     * stdout_base64 and stderr_base64 contain the exact bytes (see outputBytes()).
     *
     * @param array<string, string|int|bool> $arguments
     * @return array<string, mixed>
     */
    public function run(string $command, array $arguments = [], ?string $stdin = null): array
    {
        // A PHP array without keys encodes as a JSON list, so cast to get an object.
        $parameters = ['command' => $command, 'arguments' => (object) $arguments];
        if ($stdin !== null) {
            $parameters['stdin'] = $stdin;
        }
        return $this->call(self::BROKER_INTERFACE . '.Run', $parameters);
    }

    /**
     * Returns the exact bytes of one output stream ('stdout' or 'stderr') of a Run reply.
     *
     * Uses the stream's base64 field when the broker sent one, because the output is not
     * UTF-8, and the text otherwise. Returns '' when the command does not capture output.
     *
     * @param array<string, mixed> $reply
     * @throws SecureSocketConnectionError when the base64 field is not valid base64
     */
    public static function outputBytes(array $reply, string $stream): string
    {
        $encoded = $reply[$stream . '_base64'] ?? null;
        if ($encoded === null) {
            return (string) ($reply[$stream] ?? '');
        }
        $bytes = is_string($encoded) ? base64_decode($encoded, true) : false;
        if ($bytes === false) {
            throw new SecureSocketConnectionError("the broker sent an invalid {$stream}_base64");
        }
        return $bytes;
    }

    /**
     * Returns the commands this caller may run, as a list of CommandInfo arrays.
     *
     * @return list<array<string, mixed>>
     */
    public function listCommands(): array
    {
        return $this->call(self::BROKER_INTERFACE . '.List')['commands'];
    }

    /**
     * Returns the CommandInfo array of one command this caller may run.
     *
     * @return array<string, mixed>
     */
    public function describe(string $command): array
    {
        return $this->call(self::BROKER_INTERFACE . '.Describe', ['command' => $command])['command'];
    }

    /**
     * Sends one method call and returns the parameters of its reply.
     *
     * Each call opens a new connection, because the broker serves a connection with one
     * sandboxed process and closes it after max_requests_per_connection requests.
     *
     * @param array<string, mixed> $parameters
     * @return array<string, mixed>
     * @throws SecureSocketBrokerError when the broker replies with a varlink error
     * @throws SecureSocketConnectionError when the call does not complete
     * @throws JsonException when a parameter contains a string that is not valid UTF-8 or
     *         a float that JSON cannot carry (INF or NAN)
     */
    public function call(string $method, array $parameters = []): array
    {
        $request = json_encode(
            ['method' => $method, 'parameters' => (object) $parameters],
            JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES
        );

        $errorNumber = 0;
        $errorText = '';
        $connection = @stream_socket_client(
            'unix://' . $this->socketPath,
            $errorNumber,
            $errorText,
            $this->timeoutSeconds
        );
        if ($connection === false) {
            throw new SecureSocketConnectionError(
                "failed to connect to {$this->socketPath}: {$errorText} (error {$errorNumber})"
            );
        }

        try {
            $seconds = (int) $this->timeoutSeconds;
            $microseconds = (int) (($this->timeoutSeconds - $seconds) * 1000000);
            stream_set_timeout($connection, $seconds, $microseconds);
            // A broker that rejects the connection at once (Busy) writes its reply and
            // closes without reading, so a failed send may still have a reply waiting.
            $sendError = null;
            try {
                $this->writeAll($connection, $request . "\0");
            } catch (SecureSocketConnectionError $error) {
                $sendError = $error;
            }
            try {
                $reply = $this->readFrame($connection);
            } catch (SecureSocketConnectionError $error) {
                throw $sendError ?? $error;
            }
        } finally {
            fclose($connection);
        }

        try {
            $message = json_decode($reply, true, 512, JSON_THROW_ON_ERROR);
        } catch (JsonException $error) {
            throw new SecureSocketConnectionError('the broker sent a reply that is not JSON', 0, $error);
        }
        if (!is_array($message)) {
            throw new SecureSocketConnectionError('the broker sent a reply that is not a JSON object');
        }
        $replyParameters = isset($message['parameters']) && is_array($message['parameters'])
            ? $message['parameters']
            : [];
        if (isset($message['error'])) {
            throw new SecureSocketBrokerError((string) $message['error'], $replyParameters);
        }
        return $replyParameters;
    }

    /** @param resource $connection */
    private function writeAll($connection, string $bytes): void
    {
        while ($bytes !== '') {
            $written = @fwrite($connection, $bytes);
            if ($written === false || $written === 0) {
                throw new SecureSocketConnectionError('failed to send the request to the broker');
            }
            $bytes = substr($bytes, $written);
        }
    }

    /**
     * Reads up to the first NUL byte and returns the bytes before it.
     *
     * @param resource $connection
     */
    private function readFrame($connection): string
    {
        $received = '';
        while (true) {
            $chunk = fread($connection, 65536);
            if (stream_get_meta_data($connection)['timed_out']) {
                throw new SecureSocketConnectionError(
                    "the broker sent no reply within {$this->timeoutSeconds} seconds"
                );
            }
            if ($chunk === false || ($chunk === '' && feof($connection))) {
                throw new SecureSocketConnectionError('the broker closed the connection without a reply');
            }
            $end = strpos($chunk, "\0");
            if ($end !== false) {
                return $received . substr($chunk, 0, $end);
            }
            $received .= $chunk;
            if (strlen($received) > self::MAX_REPLY_BYTES) {
                throw new SecureSocketConnectionError(
                    'the reply is larger than ' . self::MAX_REPLY_BYTES . ' bytes'
                );
            }
        }
    }
}
