#!/usr/bin/env python3
"""A dialer worker that talks to Asterisk through `ami gateway` and Redis Streams.

The gateway owns the AMI connections; this worker never connects to Asterisk. It
only reads and writes Redis streams:

  ami:events:<server>   every AMI event of that server, one entry each, with the
                        fields server, name, received_at (unix seconds) and headers
                        (a JSON array of [key, value] pairs, in wire order). Read it
                        with a consumer group of your own.
  ami:actions           requests: request_id, reply_to, action, headers (JSON),
                        optionally server, route, timeout_ms.
  <reply_to>            the completion of each request, exactly one entry:
                        request_id, server, status (ok|error), response (JSON pairs),
                        originate_response (for an async Originate), or error +
                        message.

What it does: joins a consumer group on the server's events stream, sends one async
Originate, waits for its completion, prints it, then prints the events the call
produced. Exit status: 0 when the call was answered (Response Success), 1 when the
Originate failed, 2 on a Redis problem, 3 when no completion came.

Environment:
  REDIS_URL          redis://[:password@]host:port[/db]; or REDIS_HOST/REDIS_PORT
                     (default 127.0.0.1:6379)
  AMI_SERVER         the gateway's server key (a [servers.KEY] of its config),
                     default "sandbox"
  ORIGINATE_CHANNEL  the channel to call, default Local/answer@test
  WORKER_ID          this worker's name (its reply stream and consumer name),
                     default py-<host>-<pid>
  EVENTS_GROUP       the consumer group on the events stream, default py-worker

Requires redis-py (pip install 'redis>=5').
"""

import json
import os
import socket
import sys
import time
import uuid

import redis

# How long to wait for the completion of the Originate, in seconds.
REPLY_WAIT_SECONDS = 30
# How long the gateway may take for the Originate (its timeout_ms): less than the above.
GATEWAY_TIMEOUT_MS = 20000
# How long to read events after the completion, in seconds, and how many at most.
EVENTS_WAIT_SECONDS = 10
EVENTS_MAX = 200

# OriginateResponse's Reason: Asterisk's control frame of the call's last state.
REASONS = {
    0: "failed (no such channel or extension)",
    1: "hung up",
    3: "ringing, no answer",
    4: "answered",
    5: "busy",
    8: "congestion",
}


def env(name, default):
    return os.environ.get(name) or default


def fail(code, message):
    """Prints message to stderr and exits with code."""
    print(f"worker.py: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def connect_redis():
    """Connects to Redis as REDIS_URL (or REDIS_HOST/REDIS_PORT) says."""
    # socket_timeout: longer than any BLOCK below, so a blocked read is not cut short.
    options = dict(decode_responses=True, socket_connect_timeout=5, socket_timeout=10)
    url = os.environ.get("REDIS_URL")
    if url:
        client = redis.Redis.from_url(url, **options)
        where = url
    else:
        host = env("REDIS_HOST", "127.0.0.1")
        port = int(env("REDIS_PORT", "6379"))
        client = redis.Redis(host=host, port=port, **options)
        where = f"{host}:{port}"
    try:
        client.ping()
    except redis.RedisError as e:
        fail(2, f"cannot connect to Redis at {where}: {e}")
    return client


def header_value(pairs, key):
    """The first value of header key in a list of [key, value] pairs (AMI keys ignore case)."""
    for k, v in pairs:
        if k.lower() == key.lower():
            return v
    return None


def of_call(pairs, call_id):
    """Whether an event belongs to the call whose first channel has Uniqueid call_id:
    every channel of a call carries that id as its Linkedid (Linkedid, DestLinkedid,
    LocalOneLinkedid, ... for the events about several channels)."""
    return any(v == call_id and k.lower().endswith("linkedid") for k, v in pairs)


def main():
    server = env("AMI_SERVER", "sandbox")
    channel = env("ORIGINATE_CHANNEL", "Local/answer@test")
    worker_id = env("WORKER_ID", f"py-{socket.gethostname()}-{os.getpid()}")
    group = env("EVENTS_GROUP", "py-worker")
    events_stream = f"ami:events:{server}"
    reply_stream = f"ami:replies:{worker_id}"

    r = connect_redis()

    # 1. Our own consumer group on the events stream. "$": the group starts at the
    #    stream's end, so it gets the events from now on (the Originate's included).
    #    mkstream creates the stream if the gateway has not written one yet. The group
    #    remembers its position: the next run goes on where this one stopped.
    #    BUSYGROUP means the group exists already (an earlier run): fine.
    try:
        r.xgroup_create(events_stream, group, id="$", mkstream=True)
    except redis.ResponseError as e:
        if not str(e).startswith("BUSYGROUP"):
            raise

    # 2. Where our reply stream ends now: we read it from there, so that only
    #    completions written after our request are looked at. Entry IDs grow; "0-0"
    #    is before any entry (the stream does not exist yet).
    newest = r.xrevrange(reply_stream, count=1)
    cursor = newest[0][0] if newest else "0-0"

    # 3. The request. request_id is ours (unique, at most 128 characters); the
    #    gateway echoes it in the completion it writes to reply_to. headers is a JSON
    #    array of [key, value] pairs (a key may repeat, e.g. Variable); an object
    #    {"Channel": "..."} works too. Async=true: the completion comes once the call
    #    is answered or fails, with the OriginateResponse event in
    #    originate_response. timeout_ms bounds the whole action in the gateway.
    request_id = f"{worker_id}-{uuid.uuid4().hex}"
    headers = [
        ["Channel", channel],
        ["Application", "Wait"],
        ["Data", "1"],
        ["Async", "true"],
        ["Timeout", "10000"],  # ring for at most 10 s
    ]
    r.xadd(
        "ami:actions",
        {
            "request_id": request_id,
            "reply_to": reply_stream,
            "server": server,
            "action": "Originate",
            "headers": json.dumps(headers),
            "timeout_ms": str(GATEWAY_TIMEOUT_MS),
        },
    )
    print(f"sent Originate {channel} on {server} (request_id {request_id}), "
          f"waiting on {reply_stream}", flush=True)

    # 4. Wait for the completion: XREAD BLOCK on the reply stream from the cursor, a
    #    few seconds at a time, until the entry with our request_id (others are
    #    completions of earlier requests of this worker id) or the deadline.
    completion = None
    deadline = time.monotonic() + REPLY_WAIT_SECONDS
    while completion is None:
        left = deadline - time.monotonic()
        if left <= 0:
            fail(3, f"no completion for {request_id} on {reply_stream} within "
                    f"{REPLY_WAIT_SECONDS} s: is `ami gateway` running on this Redis?")
        block = int(max(1, min(5000, left * 1000)))
        for _stream, entries in r.xread({reply_stream: cursor}, count=10, block=block):
            for entry_id, fields in entries:
                cursor = entry_id
                if fields.get("request_id") == request_id:
                    completion = fields
                    break
            if completion is not None:
                break

    # The completion's JSON fields (response, originate_response, ...) decoded, the
    # whole printed as one JSON line.
    printed = {
        key: json.loads(value)
        if key in ("response", "originate_response", "events", "list_end", "output")
        else value
        for key, value in completion.items()
    }
    print("completion: " + json.dumps(printed), flush=True)

    ok = False
    call_id = None  # the Uniqueid of the call's first channel (see of_call)
    if completion.get("status") != "ok":
        # error is a name (timeout, refused, no_server, not_ready, invalid, ...),
        # message says more.
        outcome = (f"the gateway answered error {completion.get('error', '?')}: "
                   f"{completion.get('message', '')}")
    elif "originate_response" not in completion:
        outcome = "the completion has no originate_response"
    else:
        event = json.loads(completion["originate_response"])
        response = header_value(event, "Response") or "?"
        reason = header_value(event, "Reason") or "?"
        call_id = header_value(event, "Uniqueid")
        meaning = REASONS.get(int(reason) if reason.isdigit() else -1, "unknown")
        print(f"OriginateResponse: Response={response} Reason={reason} ({meaning})", flush=True)
        ok = response == "Success"
        outcome = "the call was answered" if ok else f"the call failed: {meaning}"

    # 5. The events since the request, read in our group: XREADGROUP ">" gives each
    #    entry to one consumer of the group once; XACK marks it handled (until then it
    #    is pending, and XPENDING / XAUTOCLAIM could hand it to another consumer). A
    #    real worker loops here forever; this one stops when the stream has been quiet
    #    for a second, or at EVENTS_MAX, or after EVENTS_WAIT_SECONDS.
    seen = call_events = 0
    until = time.monotonic() + EVENTS_WAIT_SECONDS
    while seen < EVENTS_MAX and time.monotonic() < until:
        read = r.xreadgroup(group, worker_id, {events_stream: ">"},
                            count=min(100, EVENTS_MAX - seen), block=1000)
        entries = [entry for _stream, batch in read for entry in batch]
        if not entries:
            if seen > 0:
                break  # quiet for a second
            continue
        for entry_id, fields in entries:
            event_headers = json.loads(fields.get("headers", "[]"))
            line = (f"event: {fields.get('name')} (entry {entry_id}, "
                    f"received_at {fields.get('received_at')})")
            event_channel = header_value(event_headers, "Channel")
            if event_channel is not None:
                line += f" Channel={event_channel}"
            if call_id is not None and of_call(event_headers, call_id):
                line += " [this call]"
                call_events += 1
            print(line, flush=True)
            seen += 1
        r.xack(events_stream, group, *[entry_id for entry_id, _ in entries])
    print(f"read {seen} events from {events_stream} (group {group}), {call_events} of this call",
          flush=True)

    if not ok:
        fail(1, outcome)
    print(f"ok: {outcome}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except redis.RedisError as e:
        fail(2, f"Redis: {e}")
