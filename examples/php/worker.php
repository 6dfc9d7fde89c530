<?php
/**
 * A dialer worker that talks to Asterisk through `ami gateway` and Redis Streams.
 *
 * The gateway owns the AMI connections; this worker never connects to Asterisk.
 * It only reads and writes Redis streams:
 *
 *   ami:events:<server>   every AMI event of that server, one entry each, with the
 *                         fields server, name, received_at (unix seconds) and
 *                         headers (a JSON array of [key, value] pairs, wire order).
 *                         Read it with a consumer group of your own.
 *   ami:actions           requests: request_id, reply_to, action, headers (JSON),
 *                         optionally server, route, timeout_ms.
 *   <reply_to>            the completion of each request, exactly one entry:
 *                         request_id, server, status (ok|error), response (JSON
 *                         pairs), originate_response (for an async Originate),
 *                         or error + message.
 *
 * What it does: joins a consumer group on the server's events stream, sends one
 * async Originate, waits for its completion, prints it, then prints the events the
 * call produced. Exit status: 0 when the call was answered (Response Success), 1
 * when the Originate failed, 2 on a Redis problem, 3 when no completion came.
 *
 * Environment:
 *   REDIS_URL          redis://[:password@]host:port[/db]; or REDIS_HOST/REDIS_PORT
 *                      (default 127.0.0.1:6379)
 *   AMI_SERVER         the gateway's server key (a [servers.KEY] of its config),
 *                      default "sandbox"
 *   ORIGINATE_CHANNEL  the channel to call, default Local/answer@test
 *   WORKER_ID          this worker's name (its reply stream and consumer name),
 *                      default php-<host>-<pid>
 *   EVENTS_GROUP       the consumer group on the events stream, default php-worker
 *
 * Requires php-cli and the phpredis extension (Debian: php-cli php-redis).
 */

declare(strict_types=1);

/** How long to wait for the completion of the Originate, in seconds. */
const REPLY_WAIT_SECONDS = 30;
/** How long the gateway may take for the Originate (its timeout_ms): less than the above. */
const GATEWAY_TIMEOUT_MS = 20000;
/** How long to read events after the completion, in seconds, and how many at most. */
const EVENTS_WAIT_SECONDS = 10;
const EVENTS_MAX = 200;

/** OriginateResponse's Reason: Asterisk's control frame of the call's last state. */
const REASONS = [
    0 => 'failed (no such channel or extension)',
    1 => 'hung up',
    3 => 'ringing, no answer',
    4 => 'answered',
    5 => 'busy',
    8 => 'congestion',
];

function env(string $name, string $default): string
{
    $value = getenv($name);
    return ($value === false || $value === '') ? $default : $value;
}

/** Prints $message to stderr and exits with $code. */
function fail(int $code, string $message): never
{
    fwrite(STDERR, "worker.php: $message\n");
    exit($code);
}

/** Connects to Redis as REDIS_URL (or REDIS_HOST/REDIS_PORT) says. */
function connect_redis(): Redis
{
    $url = getenv('REDIS_URL');
    if ($url !== false && $url !== '') {
        $parts = parse_url($url);
        if ($parts === false || !in_array($parts['scheme'] ?? '', ['redis', 'tcp'], true)) {
            fail(2, "REDIS_URL: expected redis://[:password@]host:port[/db], got $url");
        }
        $host = $parts['host'] ?? '127.0.0.1';
        $port = (int) ($parts['port'] ?? 6379);
        $password = isset($parts['pass']) ? rawurldecode($parts['pass']) : null;
        $user = isset($parts['user']) && $parts['user'] !== '' ? rawurldecode($parts['user']) : null;
        $db = (int) trim($parts['path'] ?? '', '/');
    } else {
        $host = env('REDIS_HOST', '127.0.0.1');
        $port = (int) env('REDIS_PORT', '6379');
        $password = $user = null;
        $db = 0;
    }
    $redis = new Redis();
    try {
        $redis->connect($host, $port, 5.0);
        // Longer than any BLOCK below, so that a blocked read is not cut short.
        $redis->setOption(Redis::OPT_READ_TIMEOUT, 10);
        if ($password !== null) {
            $redis->auth($user !== null ? [$user, $password] : $password);
        }
        if ($db !== 0) {
            $redis->select($db);
        }
    } catch (RedisException $e) {
        fail(2, "cannot connect to Redis at $host:$port: " . $e->getMessage());
    }
    return $redis;
}

/** The first value of header $key in a list of [key, value] pairs (AMI keys ignore case). */
function header_value(array $pairs, string $key): ?string
{
    foreach ($pairs as [$k, $v]) {
        if (strcasecmp($k, $key) === 0) {
            return $v;
        }
    }
    return null;
}

/**
 * Whether an event belongs to the call whose first channel has Uniqueid $callId:
 * every channel of a call carries that id as its Linkedid (Linkedid, DestLinkedid,
 * LocalOneLinkedid, ... for the events about several channels).
 */
function of_call(array $pairs, string $callId): bool
{
    foreach ($pairs as [$k, $v]) {
        if ($v === $callId && str_ends_with(strtolower($k), 'linkedid')) {
            return true;
        }
    }
    return false;
}

$server = env('AMI_SERVER', 'sandbox');
$channel = env('ORIGINATE_CHANNEL', 'Local/answer@test');
$workerId = env('WORKER_ID', 'php-' . gethostname() . '-' . getmypid());
$group = env('EVENTS_GROUP', 'php-worker');
$eventsStream = "ami:events:$server";
$replyStream = "ami:replies:$workerId";

$redis = connect_redis();

try {
    // 1. Our own consumer group on the events stream. "$": the group starts at the
    //    stream's end, so it gets the events from now on (the Originate's included).
    //    MKSTREAM creates the stream if the gateway has not written one yet. The group
    //    remembers its position: the next run goes on where this one stopped.
    //    BUSYGROUP means the group exists already (an earlier run): fine.
    if (!$redis->xGroup('CREATE', $eventsStream, $group, '$', true)) {
        $error = (string) $redis->getLastError();
        if (!str_starts_with($error, 'BUSYGROUP')) {
            fail(2, "XGROUP CREATE $eventsStream $group: $error");
        }
        $redis->clearLastError();
    }

    // 2. Where our reply stream ends now: we read it from there, so that only
    //    completions written after our request are looked at. Entry IDs grow; "0-0"
    //    is before any entry (the stream does not exist yet).
    $newest = $redis->xRevRange($replyStream, '+', '-', 1);
    $cursor = $newest ? (string) array_key_first($newest) : '0-0';

    // 3. The request. request_id is ours (unique, at most 128 characters); the
    //    gateway echoes it in the completion it writes to reply_to. headers is a
    //    JSON array of [key, value] pairs (a key may repeat, e.g. Variable); an
    //    object {"Channel": "..."} works too. Async=true: the completion comes once
    //    the call is answered or fails, with the OriginateResponse event in
    //    originate_response. timeout_ms bounds the whole action in the gateway.
    $requestId = $workerId . '-' . bin2hex(random_bytes(8));
    $headers = [
        ['Channel', $channel],
        ['Application', 'Wait'],
        ['Data', '1'],
        ['Async', 'true'],
        ['Timeout', '10000'], // ring for at most 10 s
    ];
    $redis->xAdd('ami:actions', '*', [
        'request_id' => $requestId,
        'reply_to' => $replyStream,
        'server' => $server,
        'action' => 'Originate',
        'headers' => json_encode($headers),
        'timeout_ms' => (string) GATEWAY_TIMEOUT_MS,
    ]);
    echo "sent Originate $channel on $server (request_id $requestId), waiting on $replyStream\n";

    // 4. Wait for the completion: XREAD BLOCK on the reply stream from the cursor,
    //    a few seconds at a time, until the entry with our request_id (others are
    //    completions of earlier requests of this worker id) or the deadline.
    $completion = null;
    $deadline = microtime(true) + REPLY_WAIT_SECONDS;
    while ($completion === null) {
        $left = $deadline - microtime(true);
        if ($left <= 0) {
            fail(3, "no completion for $requestId on $replyStream within "
                . REPLY_WAIT_SECONDS . " s: is `ami gateway` running on this Redis?");
        }
        $block = (int) max(1, min(5000, $left * 1000));
        $read = $redis->xRead([$replyStream => $cursor], 10, $block);
        foreach ($read[$replyStream] ?? [] as $id => $fields) {
            $cursor = (string) $id;
            if (($fields['request_id'] ?? '') === $requestId) {
                $completion = $fields;
                break;
            }
        }
    }

    // The completion's JSON fields (response, originate_response, ...) decoded, the
    // whole printed as one JSON line.
    $printed = [];
    foreach ($completion as $key => $value) {
        $decoded = in_array($key, ['response', 'originate_response', 'events', 'list_end', 'output'], true)
            ? json_decode($value, true) : null;
        $printed[$key] = $decoded ?? $value;
    }
    echo 'completion: ' . json_encode($printed, JSON_UNESCAPED_SLASHES) . "\n";

    $ok = false;
    $callId = null; // the Uniqueid of the call's first channel (see of_call)
    if (($completion['status'] ?? '') !== 'ok') {
        // error is a name (timeout, refused, no_server, not_ready, invalid, ...),
        // message says more.
        $outcome = 'the gateway answered error ' . ($completion['error'] ?? '?') . ': '
            . ($completion['message'] ?? '');
    } elseif (!isset($completion['originate_response'])) {
        $outcome = 'the completion has no originate_response';
    } else {
        $event = json_decode($completion['originate_response'], true) ?? [];
        $response = header_value($event, 'Response') ?? '?';
        $reason = header_value($event, 'Reason') ?? '?';
        $callId = header_value($event, 'Uniqueid');
        $meaning = REASONS[(int) $reason] ?? 'unknown';
        echo "OriginateResponse: Response=$response Reason=$reason ($meaning)\n";
        $ok = $response === 'Success';
        $outcome = $ok ? "the call was answered" : "the call failed: $meaning";
    }

    // 5. The events since the request, read in our group: XREADGROUP ">" gives each
    //    entry to one consumer of the group once; XACK marks it handled (until then
    //    it is pending, and XPENDING / XAUTOCLAIM could hand it to another consumer).
    //    A real worker loops here forever; this one stops when the stream has been
    //    quiet for a second, or at EVENTS_MAX, or after EVENTS_WAIT_SECONDS.
    $seen = $callEvents = 0;
    $until = microtime(true) + EVENTS_WAIT_SECONDS;
    while ($seen < EVENTS_MAX && microtime(true) < $until) {
        $read = $redis->xReadGroup($group, $workerId, [$eventsStream => '>'], min(100, EVENTS_MAX - $seen), 1000);
        if ($read === false) {
            fail(2, "XREADGROUP $eventsStream: " . $redis->getLastError());
        }
        $entries = $read[$eventsStream] ?? [];
        if (!$entries) {
            if ($seen > 0) {
                break; // quiet for a second
            }
            continue;
        }
        foreach ($entries as $id => $fields) {
            $eventHeaders = json_decode($fields['headers'] ?? '[]', true) ?? [];
            $line = "event: {$fields['name']} (entry $id, received_at {$fields['received_at']})";
            $eventChannel = header_value($eventHeaders, 'Channel');
            if ($eventChannel !== null) {
                $line .= " Channel=$eventChannel";
            }
            if ($callId !== null && of_call($eventHeaders, $callId)) {
                $line .= ' [this call]';
                $callEvents++;
            }
            echo "$line\n";
            $seen++;
        }
        $redis->xAck($eventsStream, $group, array_map('strval', array_keys($entries)));
    }
    echo "read $seen events from $eventsStream (group $group), $callEvents of this call\n";
} catch (RedisException $e) {
    fail(2, 'Redis: ' . $e->getMessage());
}

if (!$ok) {
    fail(1, $outcome);
}
echo "ok: $outcome\n";
exit(0);
