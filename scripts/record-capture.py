#!/usr/bin/env python3
"""Records a fresh AMI fixture: every byte a real Asterisk sends during a scripted session.

    scripts/record-capture.py -o capture.bin                 # instance a, from the env
    scripts/record-capture.py -o capture.bin --instance b --count 5000
    scripts/record-capture.py -o capture.bin --tls           # over AMI/TLS (decrypted bytes)

Connection settings come from the arguments, else from the env that
`scripts/asterisk.sh start|env NAME` prints (AMI_ASTERISK_<NAME>_HOST, _PORT, _TLS_PORT,
_TLS_CA, _USER, _SECRET; for instance a also the unprefixed names), else defaults
(127.0.0.1, admin/amp111). Typical use:

    set -a; eval "$(scripts/asterisk.sh start)"; set +a
    scripts/record-capture.py -o tests/fixtures/session.bin

The session (ActionIDs rec-1, rec-2, ...): Login, Command `core show uptime`, an unknown
Command, Status, QueueStatus, SetVar/GetVar of a global variable, Ping, async Originate of
Local/answer@test to Application Wait (until its OriginateResponse), async Originate of
Local/flood@test with Variable COUNT=N (until the dialplan's UserEvent FloodDone and the
OriginateResponse), a short drain, Logoff (until the server closes). The output file gets
the received bytes exactly as read, banner included; a summary goes to stderr.

Python 3 standard library only.
"""

import argparse
import os
import socket
import ssl
import sys
import time


def env(instance, key, default=None):
    """AMI_ASTERISK_<INSTANCE>_<KEY>, then (instance a) AMI_ASTERISK_<KEY>, then default."""
    value = os.environ.get(f"AMI_ASTERISK_{instance.upper()}_{key}")
    if value is None and instance == "a":
        value = os.environ.get(f"AMI_ASTERISK_{key}")
    return default if value is None else value


class Session:
    """An AMI connection that logs every received byte and parses messages."""

    def __init__(self, sock, out, timeout):
        self.sock = sock
        self.out = out
        self.timeout = timeout
        self.buf = b""
        self.eof = False
        self.bytes = 0
        self.messages = 0
        self.events = {}
        self.next_id = 0
        # Every message read, headers lower-cased, so that a wait can look back at what
        # arrived while waiting for something else (an OriginateResponse can precede the
        # Originate's own response).
        self.history = []

    def _fill(self, deadline):
        """Reads what is available (waiting until deadline); False on timeout."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 16)
        except (socket.timeout, TimeoutError):
            return False
        except ssl.SSLError as err:
            # A server closing without close_notify: treat as EOF.
            sys.stderr.write(f"record-capture: TLS: {err}\n")
            data = b""
        if not data:
            self.eof = True
            return True
        self.out.write(data)
        self.bytes += len(data)
        self.buf += data
        return True

    def read_line(self, deadline):
        """One line without its end (\\n, optional \\r), or None on timeout/EOF."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 1 :]
                return line.rstrip(b"\r").decode("utf-8", "replace")
            if self.eof or not self._fill(deadline):
                return None

    def read_message(self, deadline):
        """The next message as a list of (key, value), or None on timeout/EOF."""
        headers = []
        while True:
            line = self.read_line(deadline)
            if line is None:
                return None
            if line == "":
                if headers:
                    self.messages += 1
                    event = first(headers, "Event")
                    if event is not None:
                        self.events[event] = self.events.get(event, 0) + 1
                    self.history.append({k.lower(): v for k, v in headers})
                    return headers
                continue  # empty messages are skipped
            key, _, value = line.partition(":")
            headers.append((key, value.lstrip(" ")))

    def send(self, action, *headers):
        self.next_id += 1
        action_id = f"rec-{self.next_id}"
        lines = [f"Action: {action}", f"ActionID: {action_id}"]
        lines += [f"{k}: {v}" for k, v in headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return action_id

    def wait_for(self, what, predicate, since=None, timeout=None, required=True):
        """The first message from history[since:] on (default: from now) for which
        predicate(headers) holds, reading more as needed. On timeout or EOF: dies, or
        returns None when not required."""
        for headers in self.history[len(self.history) if since is None else since :]:
            if predicate(headers):
                return headers
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            if self.read_message(deadline) is None:
                state = "connection closed" if self.eof else "timed out"
                if required or self.eof:
                    die(f"{state} waiting for {what}")
                sys.stderr.write(f"record-capture: note: {state} waiting for {what}\n")
                return None
            if predicate(self.history[-1]):
                return self.history[-1]

    def request(self, action, *headers, list_end=None):
        """Sends an action and reads up to its response (or its list's completion event).
        Returns (ActionID, response, index in history where messages after the send start)."""
        since = len(self.history)
        action_id = self.send(action, *headers)

        def mine(h):
            return h.get("actionid") == action_id

        response = self.wait_for(
            f"the response to {action}", lambda h: mine(h) and "event" not in h, since
        )
        if list_end and response.get("response", "").lower() == "success":
            self.wait_for(list_end, lambda h: mine(h) and h.get("event") == list_end, since)
        return action_id, response, since

    def drain(self, seconds):
        """Keeps reading (and recording) for a while."""
        deadline = time.monotonic() + seconds
        while not self.eof and self.read_message(deadline) is not None:
            pass


def first(headers, key):
    for k, v in headers:
        if k.lower() == key.lower():
            return v
    return None


def die(message):
    sys.stderr.write(f"record-capture: error: {message}\n")
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-o", "--output", required=True, help="file for the received bytes")
    parser.add_argument("--instance", default="a", help="asterisk.sh instance whose env to use (a)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--user")
    parser.add_argument("--secret")
    parser.add_argument("--tls", action="store_true", help="use AMI over TLS (TLS_PORT, TLS_CA)")
    parser.add_argument("--ca", help="CA file for --tls")
    parser.add_argument("--count", type=int, default=1000, help="UserEvents in the flood (1000)")
    parser.add_argument("--events", default="on", help="Events header of the Login (on)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per step (30)")
    args = parser.parse_args()

    inst = args.instance
    host = args.host or env(inst, "HOST", "127.0.0.1")
    port = args.port or env(inst, "TLS_PORT" if args.tls else "PORT")
    if port is None:
        die(f"no port: pass --port or start the instance (eval \"$(scripts/asterisk.sh start {inst})\")")
    user = args.user or env(inst, "USER", "admin")
    secret = args.secret or env(inst, "SECRET", "amp111")

    try:
        sock = socket.create_connection((host, int(port)), timeout=args.timeout)
    except OSError as err:
        die(f"cannot connect to {host}:{port}: {err}")
    # Read promptly: Asterisk drops a client that does not take a write within 100 ms.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    if args.tls:
        ca = args.ca or env(inst, "TLS_CA")
        if not ca:
            die("--tls needs --ca or AMI_ASTERISK_TLS_CA")
        context = ssl.create_default_context(cafile=ca)
        try:
            sock = context.wrap_socket(sock, server_hostname=host)
        except (OSError, ssl.SSLError) as err:
            die(f"TLS handshake with {host}:{port} failed: {err}")

    with open(args.output, "wb") as out:
        s = Session(sock, out, args.timeout)
        started = time.monotonic()
        banner = s.read_line(time.monotonic() + args.timeout)
        if banner is None or not banner.startswith("Asterisk Call Manager/"):
            die(f"no AMI banner from {host}:{port} (got {banner!r})")

        _, r, _ = s.request("Login", ("Username", user), ("Secret", secret), ("Events", args.events))
        if r.get("response") != "Success":
            die(f"login as {user} failed: {r.get('message')}")
        s.request("Command", ("Command", "core show uptime"))
        s.request("Command", ("Command", "core show no-such-thing"))
        s.request("Status", list_end="StatusComplete")
        s.request("QueueStatus", list_end="QueueStatusComplete")
        s.request("SetVar", ("Variable", "AMI_RS_CAPTURE"), ("Value", "recorded value"))
        s.request("GetVar", ("Variable", "AMI_RS_CAPTURE"))
        s.request("Ping")

        # OriginateResponse only arrives with events on and `call` read permission (the
        # `nocall` user has not got it): a short, optional wait. The flood's end is seen by
        # its UserEvent FloodDone (class `user`).
        want_events = args.events.lower() != "off"
        short = min(args.timeout, 5.0)
        aid, r, since = s.request(
            "Originate",
            ("Channel", "Local/answer@test"),
            ("Application", "Wait"),
            ("Data", "1"),
            ("Async", "true"),
        )
        if r.get("response") != "Success":
            die(f"Originate Local/answer@test failed: {r.get('message')}")
        if want_events:
            s.wait_for(
                "OriginateResponse of Local/answer@test",
                lambda h: h.get("event") == "OriginateResponse" and h.get("actionid") == aid,
                since,
                timeout=short,
                required=False,
            )

        aid, r, since = s.request(
            "Originate",
            ("Channel", "Local/flood@test"),
            ("Application", "Wait"),
            ("Data", "1"),
            ("Async", "true"),
            ("Variable", f"COUNT={args.count}"),
        )
        if r.get("response") != "Success":
            die(f"Originate Local/flood@test failed: {r.get('message')}")
        if want_events:
            s.wait_for(
                f"the flood of {args.count} UserEvents (UserEvent FloodDone)",
                lambda h: h.get("event") == "UserEvent" and h.get("userevent") == "FloodDone",
                since,
                timeout=args.timeout + args.count / 1000,
            )
            # Sent when the flood channel answered, so before FloodDone.
            s.wait_for(
                "OriginateResponse of Local/flood@test",
                lambda h: h.get("event") == "OriginateResponse" and h.get("actionid") == aid,
                since,
                timeout=short,
                required=False,
            )
        # The flood's channels hang up a moment later (Wait 1): record that too.
        s.drain(1.5)

        s.send("Logoff")
        s.drain(args.timeout)  # until the server closes after Goodbye
        if not s.eof:
            die("the server did not close the connection after Logoff")
        elapsed = time.monotonic() - started

    flood = s.events.get("UserEvent", 0)
    sys.stderr.write(
        f"record-capture: wrote {s.bytes} bytes ({s.messages} messages, {flood} UserEvents, "
        f"{len(s.events)} event types) to {args.output} in {elapsed:.1f} s\n"
    )


if __name__ == "__main__":
    main()
