//! `ami gateway` against the real Asterisk 22 (instance `a` of the suite) and a real
//! Redis 7 of the test's own:
//!
//! - the 100,000-UserEvent flood lands in the server's events stream, every `Seq`
//!   exactly once, nothing dropped;
//! - Redis stopped for 10 s during a flood: the AMI session stays up, the drops in
//!   the status stream and `/metrics` are exactly the events missing from the stream,
//!   and events flow again once Redis is back;
//! - round trips through Redis: `Ping`, `Command`, `QueueStatus`, async `Originate`
//!   answered and busy, an invalid request, an unknown server, a server that is down;
//! - a gateway killed with requests in flight: after its restart each has exactly one
//!   completion, `gateway_restarted`, and Asterisk saw each action once;
//! - two gateways with disjoint servers on one Redis, requests forwarded to the owner,
//!   and a third gateway refused a server another owns.
//!
//! The tests take turns: Asterisk broadcasts a flood to every session.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use ami_tests::asterisk::{Flooder, asterisk, unique_id};
use ami_tests::redis::{Entry, RedisServer, entries, field, read_all as read_entries, text, xlen};
use redis::{Commands, Value};
use support::{Ami, ChannelWatch, free_port, wait_until};

/// UserEvents of the flood that must arrive whole.
const COUNT: u64 = 100_000;

static TURN: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A config file: `servers` (key, event classes, port: the sandbox's when `None`),
/// `memory_limit`, and more `[gateway]` lines.
fn config(servers: &[(&str, &str, Option<u16>)], memory_limit: u64, gateway: &str) -> PathBuf {
    let a = asterisk();
    let dir = std::env::temp_dir().join(unique_id("ami-gateway-asterisk"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ami.toml");
    let mut text = String::new();
    for (key, events, port) in servers {
        text.push_str(&format!(
            "[servers.{key}]\nhost = \"{}\"\nport = {}\nusername = \"admin\"\nsecret = \"{}\"\n\
             events = \"{events}\"\nconnect_timeout = 2\n",
            a.host,
            port.unwrap_or(a.port),
            a.secret
        ));
    }
    text.push_str(&format!(
        "[options]\nmemory_limit = {memory_limit}\n[gateway]\n{gateway}\n"
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// `ami gateway --config PATH ARGS...` on `redis`.
fn gateway(path: &std::path::Path, redis: &RedisServer, args: &[&str]) -> Ami {
    let mut all = vec![
        "gateway".to_owned(),
        "--config".to_owned(),
        path.display().to_string(),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    Ami::start(all, &[("AMI_GATEWAY_REDIS_URL", &redis.url())])
}

/// A stream entry's fields.
type Fields = HashMap<String, String>;

/// Every entry of `stream`, oldest first, its fields by name.
fn read_all(conn: &mut redis::Connection, stream: &str) -> Vec<(String, Fields)> {
    read_entries(conn, stream)
        .into_iter()
        .map(|(id, fields): Entry| (id, fields.into_iter().collect()))
        .collect()
}

/// A header of an event entry (its `headers` JSON).
fn header(fields: &Fields, key: &str) -> Option<String> {
    header_in(fields.get("headers")?, key)
}

/// A header in the `headers` JSON of an event entry.
fn header_in(headers: &str, key: &str) -> Option<String> {
    let headers: serde_json::Value = serde_json::from_str(headers).ok()?;
    headers
        .as_array()?
        .iter()
        .find(|kv| kv[0] == key)
        .and_then(|kv| kv[1].as_str().map(str::to_owned))
}

/// Puts a request on `stream` (request_id and reply_to added) and returns its id.
fn request(
    conn: &mut redis::Connection,
    stream: &str,
    reply_to: &str,
    fields: &[(&str, &str)],
) -> String {
    let request_id = unique_id("req");
    let mut command = redis::cmd("XADD");
    command
        .arg(stream)
        .arg("*")
        .arg("request_id")
        .arg(&request_id)
        .arg("reply_to")
        .arg(reply_to);
    for (key, value) in fields {
        command.arg(*key).arg(*value);
    }
    let _: String = command.query(conn).unwrap();
    request_id
}

/// Waits (at most `limit`) until `reply_to` holds a completion for each of `ids`;
/// returns them by request id, failing on a second completion of one.
fn completions(
    conn: &mut redis::Connection,
    reply_to: &str,
    ids: &[String],
    limit: Duration,
) -> HashMap<String, Fields> {
    let started = Instant::now();
    loop {
        let mut found: HashMap<String, Fields> = HashMap::new();
        for (_, fields) in read_all(conn, reply_to) {
            let id = fields["request_id"].clone();
            assert!(
                found.insert(id.clone(), fields).is_none(),
                "two completions for {id}"
            );
        }
        if ids.iter().all(|id| found.contains_key(id)) {
            return found;
        }
        assert!(
            started.elapsed() < limit,
            "completions on {reply_to}: {} of {} within {limit:?}: {found:?}",
            found.len(),
            ids.len()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of `count` of the `dropped` records of `server` for `reason`.
fn dropped_in_status(conn: &mut redis::Connection, server: &str, reason: &str) -> u64 {
    read_all(conn, "ami:status")
        .into_iter()
        .filter(|(_, f)| {
            f.get("type").map(String::as_str) == Some("dropped")
                && f.get("server").map(String::as_str) == Some(server)
                && f.get("reason").map(String::as_str) == Some(reason)
        })
        .map(|(_, f)| f["count"].parse::<u64>().unwrap())
        .sum()
}

/// The `Seq`s of the flood's UserEvents in `stream`, and whether its FloodDone is
/// there.
fn flood_in(conn: &mut redis::Connection, stream: &str) -> (Vec<u64>, bool) {
    let mut seqs = Vec::new();
    let mut done = false;
    for (_, fields) in read_all(conn, stream) {
        match header(&fields, "UserEvent").as_deref() {
            Some("Flood") => seqs.push(header(&fields, "Seq").unwrap().parse().unwrap()),
            Some("FloodDone") => done = true,
            _ => {}
        }
    }
    (seqs, done)
}

#[test]
fn the_flood_lands_in_the_events_stream_exactly_once() {
    let _turn = turn();
    let redis = RedisServer::start();
    let path = config(&[("pbx", "user", None)], 2 << 30, "");
    let gw = gateway(&path, &redis, &[]);
    gw.wait_healthy(&["pbx"]);
    let started = Instant::now();
    Flooder::new().flood(COUNT);
    let mut conn = redis.connect();
    wait_until(Duration::from_secs(60), "FloodDone in the stream", || {
        let last: Value = redis::cmd("XREVRANGE")
            .arg("ami:events:pbx")
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut conn)
            .unwrap();
        entries(&last)
            .first()
            .and_then(|(_, f)| header_in(field(f, "headers")?, "UserEvent"))
            .is_some_and(|name| name == "FloodDone")
    });
    let elapsed = started.elapsed();
    let (mut seqs, done) = flood_in(&mut conn, "ami:events:pbx");
    let in_stream = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    let dropped = gw.metric_sum("ami_dropped_events_total");
    let lost = gw.metric_sum("ami_connections_lost_total");
    eprintln!(
        "flood through the gateway: {in_stream} Flood entries in {:.1} s, dropped {dropped}, \
         sessions lost {lost}",
        elapsed.as_secs_f64()
    );
    assert!(done);
    assert_eq!(in_stream as u64, COUNT, "every Seq once, none twice");
    assert_eq!(seqs, (0..COUNT).collect::<Vec<_>>());
    assert_eq!(dropped, 0.0);
    let (_, entry) = read_all(&mut conn, "ami:events:pbx").swap_remove(0);
    let mut keys: Vec<&str> = entry.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["headers", "name", "received_at", "server"]);
    assert_eq!(entry["server"], "pbx");
    assert!(entry["received_at"].parse::<f64>().unwrap() > 1.7e9);
}

#[test]
fn redis_stopped_for_ten_seconds_costs_counted_events_only() {
    let _turn = turn();
    let mut redis = RedisServer::start();
    // A small budget: the queue in front of Redis (half of it) cannot hold the
    // flood, so the outage costs events.
    let path = config(&[("pbx", "user", None)], 16 << 20, "");
    let gw = gateway(&path, &redis, &[]);
    gw.wait_healthy(&["pbx"]);
    let mut conn = redis.connect();
    let flooding = thread::spawn(|| Flooder::new().flood(COUNT));
    wait_until(Duration::from_secs(30), "the flood under way", || {
        xlen(&mut conn, "ami:events:pbx") >= 2_000
    });
    redis.stop();
    let stopped = Instant::now();
    // The outage itself: ten seconds, as the issue asks.
    while stopped.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(100));
    }
    redis.start_again();
    flooding.join().unwrap();
    let mut conn = redis.connect();
    // Events flow again: the FloodDone that Asterisk sent after the flood.
    wait_until(Duration::from_secs(60), "events after the restart", || {
        flood_in(&mut conn, "ami:events:pbx").1
    });
    let received = || {
        gw.status().unwrap()["pbx"]["events_total"]
            .as_u64()
            .unwrap()
    };
    // Every event the gateway received is in the stream or in a dropped record (the
    // last one comes within a second).
    let mut last = (0, 0, 0);
    let settled = (0..200).any(|_| {
        let got = received();
        let stored = xlen(&mut conn, "ami:events:pbx");
        let dropped = dropped_in_status(&mut conn, "pbx", "redis");
        last = (got, stored, dropped);
        if stored + dropped == got {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
        false
    });
    let (got, stored, dropped) = last;
    let (mut seqs, _) = flood_in(&mut conn, "ami:events:pbx");
    let flood_entries = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    let metric = gw.metric("ami_dropped_events_total", "reason=\"redis\"");
    let lost = gw.metric_sum("ami_connections_lost_total");
    eprintln!(
        "redis outage: received {got}, in the stream {stored}, dropped {dropped} \
         (metrics {metric}), Flood entries {flood_entries}, sessions lost {lost}"
    );
    assert!(
        settled,
        "received {got} != stored {stored} + dropped {dropped}"
    );
    assert_eq!(seqs.len(), flood_entries, "an event stored twice");
    assert!(
        dropped > 0,
        "the outage cost nothing: the test tests nothing"
    );
    assert_eq!(metric, dropped as f64);
    assert_eq!(lost, 0.0, "the AMI session was cut");
    assert_eq!(
        gw.metric("ami_dropped_events_total", "reason=\"memory_limit\""),
        0.0
    );
}

#[test]
fn actions_round_trip_through_redis() {
    let _turn = turn();
    let redis = RedisServer::start();
    // `down` never answers; `pbx` is the sandbox. Failover tries `down` first.
    let closed = free_port();
    let path = config(
        &[("down", "call", Some(closed)), ("pbx", "call", None)],
        128 << 20,
        "route = \"failover\"",
    );
    let gw = gateway(&path, &redis, &[]);
    gw.wait_healthy(&["pbx"]);
    let mut conn = redis.connect();
    let reply = unique_id("replies");
    let mut send = |fields: &[(&str, &str)]| request(&mut conn, "ami:actions", &reply, fields);
    let ping = send(&[("action", "Ping"), ("server", "pbx")]);
    let version = send(&[
        ("action", "Command"),
        ("server", "pbx"),
        ("headers", r#"[["Command","core show version"]]"#),
    ]);
    let queues = send(&[("action", "QueueStatus"), ("server", "pbx")]);
    let originate = |exten: &str| {
        format!(
            r#"[["Channel","Local/{exten}@test"],["Application","Wait"],["Data","1"],["Async","true"],["Timeout","5000"]]"#
        )
    };
    let answered = send(&[("action", "Originate"), ("headers", &originate("answer"))]);
    let busy = send(&[
        ("action", "Originate"),
        ("server", "pbx"),
        ("headers", &originate("busy")),
    ]);
    let bad_json = send(&[("action", "Ping"), ("headers", "{not json")]);
    let injection = send(&[
        ("action", "Ping"),
        ("headers", r#"[["Data","x\r\nAction: Logoff"]]"#),
    ]);
    let unknown = send(&[("action", "Ping"), ("server", "nope")]);
    let down = send(&[("action", "Ping"), ("server", "down")]);
    let routed = send(&[("action", "Ping"), ("timeout_ms", "5000")]);
    // No reply_to: nothing to answer to; acknowledged and counted.
    let _: String = redis::cmd("XADD")
        .arg("ami:actions")
        .arg("*")
        .arg("request_id")
        .arg("lost")
        .arg("action")
        .arg("Ping")
        .query(&mut conn)
        .unwrap();
    let ids = [
        &ping, &version, &queues, &answered, &busy, &bad_json, &injection, &unknown, &down, &routed,
    ]
    .map(|id| id.to_owned());
    let done = completions(&mut conn, &reply, &ids, Duration::from_secs(40));
    let get = |id: &String, field: &str| done[id].get(field).cloned().unwrap_or_default();
    let json = |id: &String, field: &str| -> serde_json::Value {
        serde_json::from_str(&get(id, field))
            .unwrap_or_else(|e| panic!("{field} of {:?}: {e}", done[id]))
    };
    let pair = |value: &serde_json::Value, key: &str| {
        value
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv[0] == key)
            .map(|kv| kv[1].as_str().unwrap().to_owned())
    };

    assert_eq!(get(&ping, "status"), "ok", "{:?}", done[&ping]);
    assert_eq!(get(&ping, "server"), "pbx");
    assert_eq!(
        pair(&json(&ping, "response"), "Ping").as_deref(),
        Some("Pong")
    );
    let output = json(&version, "output");
    assert!(
        output[0].as_str().unwrap().starts_with("Asterisk 22"),
        "{output}"
    );
    let events = json(&queues, "events");
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "QueueParams"),
        "{events}"
    );
    let answer = json(&answered, "originate_response");
    assert_eq!(get(&answered, "server"), "pbx", "failover skipped `down`");
    assert_eq!(pair(&answer, "Response").as_deref(), Some("Success"));
    assert_eq!(pair(&answer, "Reason").as_deref(), Some("4"));
    let busy_answer = json(&busy, "originate_response");
    assert_eq!(pair(&busy_answer, "Response").as_deref(), Some("Failure"));
    assert_eq!(pair(&busy_answer, "Reason").as_deref(), Some("5"));
    for (id, field) in [
        (&bad_json, "headers"),
        (&injection, "headers"),
        (&unknown, "server"),
    ] {
        assert_eq!(get(id, "status"), "error");
        assert_eq!(get(id, "error"), "invalid", "{:?}", done[id]);
        assert_eq!(get(id, "field"), field, "{:?}", done[id]);
    }
    assert_eq!(get(&down, "error"), "not_ready", "{:?}", done[&down]);
    assert_eq!(get(&down, "server"), "down");
    assert_eq!(get(&routed, "status"), "ok");
    assert_eq!(get(&routed, "server"), "pbx");
    // Every request was acknowledged: nothing pending in the group.
    wait_until(Duration::from_secs(5), "nothing pending", || {
        pending_count(&mut conn, "ami:actions") == 0
    });
    let pending: Value = redis::cmd("XPENDING")
        .arg("ami:actions")
        .arg("ami-gateway")
        .query(&mut conn)
        .unwrap();
    let Value::Array(summary) = pending else {
        panic!("{pending:?}")
    };
    assert_eq!(text(&summary[0]), "0", "pending requests left: {summary:?}");
    gw.wait_metric("ami_gateway_requests_total", "outcome=\"invalid\"", 4.0);
    // The calls the Originates placed, in the server's calls stream.
    wait_until(
        Duration::from_secs(20),
        "the answered and busy calls",
        || {
            let outcomes: Vec<String> = read_all(&mut conn, "ami:calls:pbx")
                .into_iter()
                .filter_map(|(_, f)| f.get("outcome").cloned())
                .collect();
            outcomes.contains(&"answered".to_owned()) && outcomes.contains(&"busy".to_owned())
        },
    );
    assert!(
        gw.log().contains("request without reply_to"),
        "{}",
        gw.log()
    );
}

/// Requests taken and not acknowledged on `stream` (the group's `XPENDING` count).
fn pending_count(conn: &mut redis::Connection, stream: &str) -> u64 {
    let summary: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("ami-gateway")
        .query(conn)
        .unwrap();
    match summary {
        Value::Array(parts) => text(&parts[0]).parse().unwrap_or(0),
        _ => 0,
    }
}

#[test]
fn requests_beyond_max_in_flight_wait_in_redis() {
    let _turn = turn();
    let redis = RedisServer::start();
    let path = config(&[("pbx", "call", None)], 128 << 20, "max_in_flight = 2");
    let gw = gateway(&path, &redis, &[]);
    gw.wait_healthy(&["pbx"]);
    let mut conn = redis.connect();
    let reply = unique_id("replies");
    // Calls that ring 2 s unanswered: each holds its slot that long.
    let headers = r#"[["Channel","Local/noanswer@test"],["Application","Wait"],["Data","1"],["Async","true"],["Timeout","2000"]]"#;
    let ids: Vec<String> = (0..5)
        .map(|_| {
            request(
                &mut conn,
                "ami:actions",
                &reply,
                &[("action", "Originate"), ("headers", headers)],
            )
        })
        .collect();
    let mut most = 0;
    let started = Instant::now();
    while read_all(&mut conn, &reply).len() < ids.len() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not all completed"
        );
        // What the gateway took and has not answered: never more than 2.
        let taken = pending_count(&mut conn, "ami:actions");
        assert!(taken <= 2, "{taken} requests taken with max_in_flight = 2");
        most = most.max(taken);
        thread::sleep(Duration::from_millis(20));
    }
    let done = completions(&mut conn, &reply, &ids, Duration::from_secs(1));
    eprintln!(
        "max_in_flight 2: 5 requests in {:.1} s, at most {most} taken at once",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(most, 2);
    for id in &ids {
        let response: serde_json::Value =
            serde_json::from_str(&done[id]["originate_response"]).unwrap();
        let reason = response
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv[0] == "Reason")
            .map(|kv| kv[1].clone());
        assert_eq!(reason, Some(serde_json::json!("3")), "{:?}", done[id]);
    }
}

#[test]
fn a_killed_gateway_answers_its_requests_in_flight_once_after_a_restart() {
    let _turn = turn();
    let redis = RedisServer::start();
    let path = config(
        &[("pbx", "call", None)],
        128 << 20,
        "consumer = \"gw-kill\"",
    );
    let watch = ChannelWatch::start();
    let mut gw = gateway(&path, &redis, &[]);
    gw.wait_healthy(&["pbx"]);
    let mut conn = redis.connect();
    let reply = unique_id("replies");
    // Calls that ring unanswered for 20 s: in flight until the gateway dies.
    let channels: Vec<String> = (0..5).map(|i| unique_id(&format!("kill{i}"))).collect();
    let ids: Vec<String> = channels
        .iter()
        .map(|channel| {
            let headers = format!(
                r#"[["Channel","Local/noanswer@test"],["Application","Wait"],["Data","1"],["Async","true"],["Timeout","20000"],["ChannelId","{channel}"]]"#
            );
            request(
                &mut conn,
                "ami:actions",
                &reply,
                &[("action", "Originate"), ("headers", &headers)],
            )
        })
        .collect();
    wait_until(
        Duration::from_secs(20),
        "Asterisk placed every call",
        || channels.iter().all(|c| watch.count(c) == 1),
    );
    gw.wait_metric("ami_gateway_requests_in_flight", "", 5.0);
    gw.kill_hard();
    gw.wait_exit(Duration::from_secs(5));
    let restarted_at = Instant::now();
    let again = gateway(&path, &redis, &[]);
    let done = completions(&mut conn, &reply, &ids, Duration::from_secs(30));
    eprintln!(
        "killed gateway: {} completions {:.1} s after the restart",
        done.len(),
        restarted_at.elapsed().as_secs_f64()
    );
    for id in &ids {
        assert_eq!(done[id]["error"], "gateway_restarted", "{:?}", done[id]);
        assert_eq!(done[id]["status"], "error");
    }
    assert_eq!(done.len(), ids.len(), "a completion for another request");
    // A moment later: still one completion each, and no call placed twice.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(2) {
        thread::sleep(Duration::from_millis(100));
    }
    completions(&mut conn, &reply, &ids, Duration::from_secs(1));
    for channel in &channels {
        assert_eq!(watch.count(channel), 1, "Asterisk saw {channel} again");
    }
    again.wait_metric(
        "ami_gateway_requests_total",
        "outcome=\"gateway_restarted\"",
        5.0,
    );
}

#[test]
fn two_gateways_split_the_servers_and_forward_to_each_other() {
    let _turn = turn();
    let redis = RedisServer::start();
    let path = config(
        &[("east", "user", None), ("west", "user", None)],
        128 << 20,
        "",
    );
    let east = gateway(&path, &redis, &["--server", "east"]);
    let path_west = {
        // Each gateway its own consumer name (the host name is the same).
        let text = std::fs::read_to_string(&path).unwrap();
        let other = path.with_file_name("west.toml");
        std::fs::write(
            &other,
            text.replace("[gateway]\n", "[gateway]\nconsumer = \"west\"\n"),
        )
        .unwrap();
        other
    };
    let west = gateway(&path_west, &redis, &["--server", "west"]);
    east.wait_healthy(&["east"]);
    west.wait_healthy(&["west"]);
    let mut conn = redis.connect();
    wait_until(Duration::from_secs(20), "both own their server", || {
        conn.exists::<_, bool>("ami-gateway:ami-gateway:owner:east")
            .unwrap()
            && conn
                .exists::<_, bool>("ami-gateway:ami-gateway:owner:west")
                .unwrap()
    });
    let reply = unique_id("replies");
    let mut ids: BTreeMap<String, &str> = BTreeMap::new();
    // Ten for one server, then ten for the other: Redis hands new entries to the
    // blocked readers in turn, so some land on the gateway that does not own them.
    for i in 0..20 {
        let server = if i < 10 { "west" } else { "east" };
        let id = request(
            &mut conn,
            "ami:actions",
            &reply,
            &[("action", "Ping"), ("server", server)],
        );
        ids.insert(id, server);
    }
    let direct = request(&mut conn, "ami:actions:west", &reply, &[("action", "Ping")]);
    ids.insert(direct, "west");
    let keys: Vec<String> = ids.keys().cloned().collect();
    let done = completions(&mut conn, &reply, &keys, Duration::from_secs(30));
    for (id, server) in &ids {
        assert_eq!(done[id]["status"], "ok", "{:?}", done[id]);
        assert_eq!(done[id]["server"], *server, "{:?}", done[id]);
    }
    // Each request read by the gateway that does not own its server was forwarded:
    // together they handled 21, and every forward is one more.
    let handled = |gw: &Ami, outcome: &str| {
        gw.metric(
            "ami_gateway_requests_total",
            &format!("outcome=\"{outcome}\""),
        )
    };
    wait_until(
        Duration::from_secs(10),
        "the metrics count every request",
        || handled(&east, "ok") + handled(&west, "ok") == 21.0,
    );
    let forwarded = handled(&east, "forwarded") + handled(&west, "forwarded");
    eprintln!("two gateways: 21 requests, {forwarded} forwarded to the owner");
    assert!(forwarded > 0.0, "no request took the forwarding path");
    // A third gateway may not take a server another owns.
    let third_path = {
        let text = std::fs::read_to_string(&path).unwrap();
        let other = path.with_file_name("third.toml");
        std::fs::write(
            &other,
            text.replace("[gateway]\n", "[gateway]\nconsumer = \"third\"\n"),
        )
        .unwrap();
        other
    };
    let mut third = gateway(&third_path, &redis, &["--server", "west"]);
    let (code, _) = third.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(2), "{}", third.log());
    assert!(
        third.log().contains("owned by the live gateway"),
        "{}",
        third.log()
    );
}

/// The gateway paces workers' Originates by the server's limits (here 2 per second, a
/// burst of one): four requests put at once leave 500 ms apart, as the calls'
/// `created_at` in `ami:calls:pbx` show, and each completes with its
/// `OriginateResponse`.
#[test]
fn workers_originates_are_paced_by_the_servers_limits() {
    let _turn = turn();
    let redis = RedisServer::start();
    let path = config(&[("pbx", "call", None)], 128 << 20, "");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("[options]\n", "[options]\nmax_calls_per_second = 2\n"),
    )
    .unwrap();
    let gw = gateway(&path, &redis, &[]);
    gw.wait_healthy(&["pbx"]);
    let mut conn = redis.connect();
    let reply = unique_id("paced");
    let channel_ids: Vec<String> = (0..4).map(|i| unique_id(&format!("paced{i}"))).collect();
    let ids: Vec<String> = channel_ids
        .iter()
        .map(|channel_id| {
            let headers = format!(
                r#"[["Channel","Local/busy@test"],["Application","Wait"],["Data","1"],["Async","true"],["Timeout","5000"],["ChannelId","{channel_id}"]]"#
            );
            request(
                &mut conn,
                "ami:actions",
                &reply,
                &[("action", "Originate"), ("server", "pbx"), ("headers", &headers)],
            )
        })
        .collect();
    let done = completions(&mut conn, &reply, &ids, Duration::from_secs(30));
    for id in &ids {
        assert_eq!(done[id]["status"], "ok", "{:?}", done[id]);
        assert!(
            done[id]["originate_response"].contains("\"5\""),
            "{:?}",
            done[id]
        );
    }
    let mut created = Vec::new();
    wait_until(Duration::from_secs(20), "the four call records", || {
        created = read_all(&mut conn, "ami:calls:pbx")
            .into_iter()
            .filter(|(_, f)| channel_ids.iter().any(|c| f.get("uniqueid") == Some(c)))
            .map(|(_, f)| f["created_at"].parse::<f64>().unwrap())
            .collect();
        created.len() == channel_ids.len()
    });
    created.sort_by(f64::total_cmp);
    for pair in created.windows(2) {
        assert!(
            pair[1] - pair[0] >= 0.49,
            "calls not 500 ms apart: {created:?}"
        );
    }
    gw.wait_metric("ami_paced_admitted_total", "server=\"pbx\"", 4.0);
}
