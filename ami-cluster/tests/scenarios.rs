//! The seeds' test list (plan §18) and the node's lifecycle, against simulated
//! servers in virtual time: a flood at ten times the normal load, a reconnect storm of
//! 100 servers, parser corruption, `Command` output in both formats, lazy open, loss
//! of a session with actions in flight, session settings re-applied on reconnect.

#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use ami_cluster::{BackoffConfig, ClusterConfig, Health, ServerId, Transition};
use ami_proto::action::{Action, Command, Ping, QueueStatus};
use ami_proto::{ActionError, Config, SendError, State};
use ami_sim::{CommandFormat, Fault, Flood, SimConfig};
use support::{Net, Record};

fn config(i: usize) -> Config {
    Config::new(format!("node_{i}"), "admin", "amp111")
}

fn net(n: usize, sim: impl Fn(usize) -> SimConfig, seed: u64) -> Net {
    let cluster = ClusterConfig::new((0..n).map(config).collect(), seed, 7);
    Net::new(cluster, (0..n).map(sim).collect(), seed)
}

/// Sends `action` on node `i` and runs until it completes.
fn call(
    net: &mut Net,
    i: usize,
    action: impl Into<Action>,
) -> Result<ami_proto::Reply, ActionError> {
    let now = net.now;
    let id = net
        .cluster
        .node_mut(ServerId(i))
        .send(now, action)
        .expect("ready");
    for _ in 0..600 {
        if let Some(done) = net.completions.get(&id) {
            return done.result.clone();
        }
        net.run_for(Duration::from_millis(100));
    }
    panic!("{id} never completed");
}

#[test]
fn flood_at_ten_times_the_load_drops_oldest_with_exact_counters() {
    // Normal load 1,000 events/s; the flood is 10,000/s for 10 s while the application
    // takes 1 event per millisecond (1,000/s).
    let mut net = net(
        1,
        |_| SimConfig::new().with_flood(Some(Flood::new(10_000))),
        1,
    );
    net.event_budget = Some(1);
    net.cluster.connect_all(net.now);
    net.run_for(Duration::from_secs(10));

    let conn = net
        .cluster
        .node(ServerId(0))
        .connection()
        .expect("connection");
    let stats = conn.stats();
    let sent = net.server_stats(0).events_sent;
    let delivered = net.events[0];
    let queued = conn.queued_events() as u64;
    let capacity = config(0).event_queue_capacity as u64;
    assert!(sent >= 95_000, "the flood ran: {sent}");
    assert_eq!(stats.discards, 0);
    // Every event the server sent is either delivered, still queued, or counted as
    // dropped: nothing is lost silently.
    assert_eq!(
        delivered + queued + stats.events.dropped,
        sent,
        "exact accounting"
    );
    // Full (less the one event the consumer took this millisecond), never fuller.
    assert!(
        queued <= capacity && queued + 1 >= capacity,
        "queued {queued}"
    );
    assert!(
        (9_000..=10_100).contains(&delivered),
        "the consumer's pace: {delivered}"
    );
    assert_eq!(
        net.cluster.node(ServerId(0)).metrics().dropped_events_total,
        stats.events.dropped
    );
    // Heartbeats and actions still complete during the flood.
    assert_eq!(net.cluster.node(ServerId(0)).health(), Health::Healthy);
    net.event_budget = None;
    assert!(call(&mut net, 0, Ping).is_ok());
}

#[test]
fn the_newest_events_survive_a_flood() {
    // Drop-oldest: after the flood stops, the events still queued are the last ones.
    let flood = Flood::new(5_000).with_total(50_000);
    let mut net = net(
        1,
        move |_| SimConfig::new().with_flood(Some(flood.clone())),
        2,
    );
    net.event_budget = Some(0);
    net.cluster.connect_all(net.now);
    net.run_for(Duration::from_secs(12));
    let node = net.cluster.node_mut(ServerId(0));
    let mut seqs = Vec::new();
    while let Some(output) = node.poll() {
        if let ami_cluster::NodeOutput::Connection(ami_proto::Output::Event(e)) = output
            && let Some(seq) = e.message.get("Seq")
        {
            seqs.push(seq.parse::<u64>().unwrap());
        }
    }
    assert_eq!(seqs.len(), 10_000, "a full queue");
    assert_eq!(seqs.first(), Some(&40_000));
    assert_eq!(seqs.last(), Some(&49_999));
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gaps"
    );
}

#[test]
fn reconnect_storm_of_100_servers_is_spread_and_bounded() {
    const N: usize = 100;
    let mut net = net(N, |_| SimConfig::new(), 3);
    net.cluster.connect_all(net.now);
    net.run_for(Duration::from_secs(2));
    assert!(
        net.cluster
            .ids()
            .all(|id| net.cluster.node(id).health() == Health::Healthy)
    );

    let down = net.now;
    for i in 0..N {
        net.kill(i);
    }
    net.run_for(Duration::from_secs(60));
    let up = net.now;
    for i in 0..N {
        net.revive(i);
    }
    net.run_for(Duration::from_secs(32));

    let mut attempts: Vec<Duration> = Vec::new();
    for i in 0..N {
        let during: Vec<_> = net
            .connect_times(i)
            .into_iter()
            .filter(|t| *t > down)
            .map(|t| t - down)
            .collect();
        // Five failures open the circuit; then one probe per cooldown (30 s).
        let in_outage = during.iter().filter(|d| **d < up - down).count();
        assert!(in_outage <= 8, "node {i} tried {in_outage} times in 60 s");
        attempts.extend(during);
        assert_eq!(
            net.cluster.node(ServerId(i)).health(),
            Health::Healthy,
            "node {i} back within the cap"
        );
    }
    attempts.sort();
    let window = |w: Duration| {
        (0..attempts.len())
            .map(|i| {
                attempts[i..]
                    .iter()
                    .take_while(|&&t| t < attempts[i] + w)
                    .count()
            })
            .max()
            .unwrap()
    };
    let per_100ms = window(Duration::from_millis(100));
    let per_second = window(Duration::from_secs(1));
    eprintln!(
        "storm: {} attempts by {N} servers over 92 s; busiest 100 ms: {per_100ms}, busiest second: {per_second}",
        attempts.len()
    );
    assert!(per_100ms <= 30, "{per_100ms} attempts in one 100 ms window");
    // Full jitter lets a server's first two retries fall in the same second, never
    // more than that.
    assert!(
        per_second * 2 <= N * 3,
        "{per_second} attempts in one second"
    );
    let first = attempts.first().unwrap();
    assert!(
        *first >= Duration::from_millis(100),
        "no retry sooner than 100 ms"
    );
    let mut distinct = attempts.clone();
    distinct.dedup();
    assert!(
        distinct.len() * 10 >= attempts.len() * 9,
        "jitter spreads the attempts"
    );
}

#[test]
fn garbage_is_skipped_and_the_session_goes_on() {
    let mut net = net(1, |_| SimConfig::new(), 4);
    net.cluster.connect_all(net.now);
    net.run_for(Duration::from_secs(1));
    let now = net.now;
    let session = net.links[0].as_mut().expect("session");
    session.inject(
        now,
        Fault::Garbage(b"\x00\x01\xfe no colon here\r\nnor here\r\n\r\n".to_vec()),
    );
    session.inject(now, Fault::GarbageLen { len: 5_000 });
    session.inject(now, Fault::Oversized { bytes: 100_000 });
    let reply = call(&mut net, 0, Ping).expect("ping after garbage");
    assert_eq!(reply.response.get("Ping"), Some("Pong"));
    let stats = net.cluster.node(ServerId(0)).connection().unwrap().stats();
    assert!(
        stats.discards >= 2,
        "garbage and the oversized event were counted: {stats:?}"
    );
    let metrics = net.cluster.node(ServerId(0)).metrics();
    assert_eq!(metrics.connections_established, 1, "no reconnect needed");
    assert_eq!(metrics.health, Health::Healthy);
}

#[test]
fn command_output_is_the_same_in_both_formats() {
    let mut net = net(
        2,
        |i| {
            SimConfig::new().with_command_format(if i == 0 {
                CommandFormat::Modern
            } else {
                CommandFormat::Legacy
            })
        },
        5,
    );
    net.cluster.connect_all(net.now);
    net.run_for(Duration::from_secs(1));
    for command in ["core show version", "core show help", "sim output 3000"] {
        let modern = call(&mut net, 0, Command::new(command)).expect("modern");
        let legacy = call(&mut net, 1, Command::new(command)).expect("legacy");
        assert_eq!(modern.output(), legacy.output(), "{command}");
        assert!(!modern.output().is_empty(), "{command}");
    }
    let big = call(&mut net, 1, Command::new("sim output 3000")).unwrap();
    assert_eq!(big.output().len(), 3000);
}

#[test]
fn lazy_open_starts_on_first_use_and_send_never_waits() {
    let mut net = net(2, |_| SimConfig::new(), 6);
    net.run_for(Duration::from_secs(1));
    assert!(net.connect_times(0).is_empty() && net.connect_times(1).is_empty());
    assert_eq!(net.cluster.node(ServerId(0)).health(), Health::Disconnected);

    // First use: refused at once, and the connection starts.
    let now = net.now;
    let refused = net.cluster.node_mut(ServerId(0)).send(now, Ping);
    assert!(
        matches!(refused, Err(SendError::NotReady { .. })),
        "{refused:?}"
    );
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.cluster.node(ServerId(0)).health(), Health::Healthy);
    assert!(
        net.connect_times(1).is_empty(),
        "the other server stays idle"
    );

    // `server(key)` opens lazily too.
    let id = net.cluster.server("node_1", net.now).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.cluster.node(id).health(), Health::Healthy);
    assert!(call(&mut net, 1, Ping).is_ok());
}

#[test]
fn actions_in_flight_fail_once_when_the_session_is_lost_and_are_not_resent() {
    let mut net = net(
        1,
        |_| SimConfig::new().with_response_delay(Duration::from_secs(2)),
        7,
    );
    net.cluster.connect_all(net.now);
    net.run_for(Duration::from_secs(5));
    let now = net.now;
    let ids: Vec<String> = (0..3)
        .map(|_| {
            net.cluster
                .node_mut(ServerId(0))
                .send(now, QueueStatus::default())
                .unwrap()
        })
        .collect();
    net.run_for(Duration::from_millis(500));
    net.cut(0);
    for id in &ids {
        let done = &net.completions[id];
        assert!(
            matches!(done.result, Err(ActionError::ConnectionClosed { .. })),
            "{:?}",
            done.result
        );
    }
    // It reconnects by itself, and the server saw each action once.
    net.run_for(Duration::from_secs(5));
    let node = net.cluster.node(ServerId(0));
    assert_eq!(node.health(), Health::Healthy);
    assert_eq!(node.metrics().connections_lost, 1);
    assert_eq!(node.metrics().connections_established, 2);
    assert_eq!(net.server_stats(0).actions_named("QueueStatus"), 3);
    assert_eq!(node.metrics().actions_failed, 3);
}

#[test]
fn session_actions_are_reapplied_after_every_login() {
    let mut net = net(1, |_| SimConfig::new(), 8);
    net.cluster
        .node_mut(ServerId(0))
        .set_session_actions(vec![Action::new("Events").header("EventMask", "on")]);
    net.cluster.connect_all(net.now);
    net.run_for(Duration::from_secs(1));
    net.cut(0);
    net.run_for(Duration::from_secs(5));
    net.cut(0);
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.server_stats(0).actions_named("Events"), 3);
    let node = net.cluster.node(ServerId(0));
    assert_eq!(node.session_action_failures(), 0);
    assert_eq!(node.metrics().connections_established, 3);
    // Their completions are not the application's.
    assert!(net.completions.is_empty());
}

#[test]
fn a_refusing_server_backs_off_opens_its_circuit_and_probes_after_the_cooldown() {
    let mut net = net(1, |_| SimConfig::new(), 9);
    net.kill(0);
    net.cluster.connect_all(net.now);
    net.run_for(Duration::from_secs(45));
    let log = net.log(0);
    let opened = log
        .iter()
        .find_map(|(t, r)| match r {
            Record::Circuit(Transition::Opened {
                until,
                consecutive_failures,
            }) => Some((
                *t,
                until.expect("a cooldown of 30 s ends"),
                *consecutive_failures,
            )),
            _ => None,
        })
        .expect("the circuit opened");
    assert_eq!(opened.2, 5);
    let attempts = net.connect_times(0);
    assert_eq!(attempts.iter().filter(|t| **t <= opened.0).count(), 5);
    let probe = attempts.iter().find(|t| **t > opened.0).expect("a probe");
    assert!(*probe >= opened.1 && *probe <= opened.1 + Duration::from_secs(1));
    let healths: Vec<Health> = log
        .iter()
        .filter_map(|(_, r)| match r {
            Record::Health(_, to) => Some(*to),
            _ => None,
        })
        .collect();
    assert!(healths.contains(&Health::Reconnecting));
    assert!(healths.contains(&Health::CircuitOpen));
    // Back up: the next probe succeeds and the circuit closes.
    net.revive(0);
    net.run_for(Duration::from_secs(32));
    assert_eq!(net.cluster.node(ServerId(0)).health(), Health::Healthy);
    assert!(
        net.log(0)
            .iter()
            .any(|(_, r)| matches!(r, Record::Circuit(Transition::Closed)))
    );
}

#[test]
fn rejected_logins_count_as_failures_and_never_hammer() {
    let mut net = net(
        1,
        |_| SimConfig::new().with_users(vec![("admin".into(), "other".into())]),
        10,
    );
    net.cluster.connect_all(net.now);
    net.run_for(Duration::from_secs(120));
    let logins = net.server_stats(0).logins_failed;
    let metrics = net.cluster.node(ServerId(0)).metrics();
    assert_eq!(metrics.connection_failures, logins);
    assert!(metrics.circuit_opened_total >= 1);
    // Five attempts, then one probe per 30 s cooldown: 7 or 8 in two minutes.
    assert!((6..=9).contains(&logins), "{logins} logins in 120 s");
    assert_eq!(net.cluster.node(ServerId(0)).state(), State::Closed);
}

#[test]
fn closing_stops_reconnects() {
    let mut net = net(1, |_| SimConfig::new(), 11);
    net.cluster.connect_all(net.now);
    net.run_for(Duration::from_secs(1));
    net.cluster.close_all(net.now);
    net.run_for(Duration::from_secs(60));
    assert_eq!(net.connect_times(0).len(), 1);
    assert_eq!(net.cluster.node(ServerId(0)).health(), Health::Disconnected);
    assert_eq!(net.server_stats(0).actions_named("Logoff"), 1);
}

#[test]
fn round_robin_skips_a_failed_node_and_takes_it_back() {
    let mut net = net(3, |_| SimConfig::new(), 12);
    net.cluster.connect_all(net.now);
    net.run_for(Duration::from_secs(1));
    let picks = |net: &mut Net, n: usize| -> Vec<usize> {
        (0..n)
            .map(|_| net.cluster.select(net.now).unwrap().0)
            .collect()
    };
    assert_eq!(picks(&mut net, 6), [0, 1, 2, 0, 1, 2]);
    net.kill(1);
    assert_eq!(picks(&mut net, 4), [0, 2, 0, 2]);
    net.revive(1);
    net.run_for(Duration::from_secs(2));
    let mut again = picks(&mut net, 3);
    again.sort();
    assert_eq!(again, [0, 1, 2]);
    let _ = BackoffConfig::default();
}

#[test]
fn a_flapping_server_backs_off_and_opens_its_circuit() {
    // The server accepts every login, then the session dies at once. Without a
    // stability window each login would reset the backoff: a reconnect every few
    // hundred ms, for ever. With it, each flap is a failed attempt.
    let mut net = net(1, |_| SimConfig::new(), 13);
    net.cluster.connect_all(net.now);
    let end = net.now + Duration::from_secs(90);
    while net.now < end {
        net.run_for(Duration::from_millis(20));
        if net.cluster.node(ServerId(0)).health() == Health::Healthy {
            net.cut(0);
        }
    }
    let metrics = net.cluster.node(ServerId(0)).metrics();
    assert!(metrics.circuit_opened_total >= 1, "{metrics:?}");
    assert!(
        (5..=9).contains(&metrics.connections_established),
        "{} logins in 90 s",
        metrics.connections_established
    );
    assert_eq!(metrics.connections_lost, metrics.connections_established);
}

#[test]
fn a_session_that_stays_up_resets_the_backoff() {
    let mut net = net(1, |_| SimConfig::new(), 14);
    net.cluster.connect_all(net.now);
    for _ in 0..3 {
        // Up for 11 s (past the 10 s stability window), then lost: every loss is
        // retried within the first backoff step, 1 s, and the circuit never opens.
        net.run_for(Duration::from_secs(11));
        let lost = net.now;
        net.cut(0);
        net.run_for(Duration::from_secs(2));
        let retry = net
            .connect_times(0)
            .into_iter()
            .find(|t| *t > lost)
            .unwrap();
        assert!(retry - lost <= Duration::from_secs(1));
    }
    assert_eq!(
        net.cluster.node(ServerId(0)).metrics().circuit_opened_total,
        0
    );
}

/// Policy durations too long for a deadline mean "never", as in the core: a session
/// never counts as stable (so its loss is a failed attempt), and a circuit with an
/// endless cooldown stays open and schedules no probe. Nothing panics.
#[test]
fn policy_durations_too_long_for_a_deadline_mean_never() {
    let mut cluster = ClusterConfig::new(vec![config(0)], 15, 7);
    cluster.policy.stable_after = Duration::MAX;
    cluster.policy.circuit.cooldown = Duration::MAX;
    cluster.policy.circuit.failure_threshold = 1;
    let mut net = Net::new(cluster, vec![SimConfig::new()], 15);
    net.cluster.connect_all(net.now);
    net.run_for(Duration::from_secs(20));
    assert_eq!(net.cluster.node(ServerId(0)).health(), Health::Healthy);
    net.cut(0);
    net.run_for(Duration::from_secs(3600));
    let node = net.cluster.node(ServerId(0));
    assert_eq!(node.health(), Health::CircuitOpen);
    assert_eq!(node.poll_timeout(), None, "no probe is ever scheduled");
    assert_eq!(net.connect_times(0).len(), 1, "never reconnected");
    let opened = net.log(0).iter().find_map(|(_, r)| match r {
        Record::Circuit(Transition::Opened { until, .. }) => Some(*until),
        _ => None,
    });
    assert_eq!(opened, Some(None), "opened without an end");
}

/// Bad input the core counts (discarded messages and bytes, unmatched responses, late
/// replies) is in the node's metrics and their Prometheus text, kept across
/// connections like the other counters.
#[test]
fn bad_input_counters_are_kept_across_connections_and_rendered() {
    const GARBAGE: &[u8] = b"no colon here\r\n\r\n";
    let mut net = net(1, |_| SimConfig::new(), 16);
    net.cluster.connect_all(net.now);
    for generation in 1..=2 {
        net.run_for(Duration::from_secs(1));
        let now = net.now;
        let session = net.links[0].as_mut().expect("session");
        session.inject(now, Fault::Garbage(GARBAGE.to_vec()));
        let foreign = b"Response: Success\r\nActionID: foreign-1\r\n\r\n";
        session.inject(now, Fault::Garbage(foreign.to_vec()));
        // The login's ActionID (counter 1): that action completed long ago.
        let late = format!("Response: Success\r\nActionID: node_0-7-{generation}-1\r\n\r\n");
        session.inject(now, Fault::Garbage(late.into_bytes()));
        net.run_for(Duration::from_secs(1));
        let stats = net.cluster.node(ServerId(0)).connection().unwrap().stats();
        assert_eq!(
            (stats.discards, stats.unmatched, stats.late_replies),
            (1, 1, 1),
            "generation {generation}: {stats:?}"
        );
        net.cut(0);
    }
    net.run_for(Duration::from_secs(5));
    let node = net.cluster.node(ServerId(0));
    assert_eq!(
        node.generation(),
        3,
        "a third connection replaced the others"
    );
    let m = node.metrics();
    assert_eq!(m.discarded_messages_total, 2);
    assert_eq!(m.discarded_bytes_total, 2 * GARBAGE.len() as u64);
    assert_eq!(m.unmatched_responses_total, 2);
    assert_eq!(m.late_replies_total, 2);
    let mut text = String::new();
    ami_cluster::render_prometheus(&[("node_0", m)], &mut text);
    for line in [
        "ami_discarded_messages_total{server=\"node_0\"} 2\n".to_owned(),
        format!(
            "ami_discarded_bytes_total{{server=\"node_0\"}} {}\n",
            2 * GARBAGE.len()
        ),
        "ami_unmatched_responses_total{server=\"node_0\"} 2\n".to_owned(),
        "ami_late_replies_total{server=\"node_0\"} 2\n".to_owned(),
    ] {
        assert!(text.contains(&line), "{line:?} missing from:\n{text}");
    }
}

#[test]
fn a_per_call_strategy_overrides_the_configured_one_without_moving_its_cursor() {
    use ami_cluster::Strategy;
    let mut net = net(3, |_| SimConfig::new(), 13);
    net.cluster.connect_all(net.now);
    net.run_for(Duration::from_secs(1));
    net.cluster
        .set_routing(Strategy::Failover(vec!["node_2".into(), "node_0".into()]))
        .unwrap();
    let now = net.now;
    let pick =
        |net: &mut Net, s: Option<&Strategy<String>>| net.cluster.select_with(s, now).unwrap().0;
    let rr = Strategy::RoundRobin;
    assert_eq!(pick(&mut net, None), 2);
    assert_eq!(pick(&mut net, Some(&rr)), 0);
    assert_eq!(pick(&mut net, Some(&rr)), 1);
    assert_eq!(pick(&mut net, Some(&Strategy::HealthAware)), 0);
    assert_eq!(pick(&mut net, Some(&rr)), 2);
    assert_eq!(pick(&mut net, None), 2);
    net.kill(2);
    assert_eq!(pick(&mut net, None), 0);
    // An unknown key finds nothing.
    let unknown = Strategy::Explicit("nope".to_owned());
    assert_eq!(
        net.cluster
            .select_with(Some(&unknown), now)
            .unwrap_err()
            .considered,
        0
    );
}
