//! Deterministic simulation: a day in the life of a cluster.
//!
//! Twelve simulated Asterisk servers, a cluster over them, 24 hours of virtual time.
//! The application routes an action every second (round robin over healthy servers)
//! while random faults hit eight of the servers: outages of a second to fifteen
//! minutes, rejected logins, sessions dropped right after every login (flapping),
//! stalls, garbage, messages cut in the middle, oversized messages, delayed and lost
//! responses. The other four are never touched.
//!
//! Afterwards the run must show: every action completed exactly once; no queue or
//! buffer above its bound; every reconnect delay within [100 ms, 30 s] and jittered;
//! circuits opened only at the threshold and probed only after the cooldown; and every
//! action routed to an untouched server succeeded. The seed is printed first, and
//! `AMI_SIM_SEED=N` replays a run.

#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ami_cluster::{ClusterConfig, Health, NodeMetrics, Rng, RouteError, ServerId, Transition};
use ami_proto::Config;
use ami_proto::action::{Action, Command, CoreShowChannels, Ping, QueueStatus};
use ami_sim::{Fault, Flood, SimConfig};
use support::{Net, Record};

const SERVERS: usize = 12;
/// Servers 0..FAULTY get faults; the rest never do.
const FAULTY: usize = 8;
const DAY: Duration = Duration::from_secs(24 * 3600);
const SECRET: &str = "amp111";

/// What the application sent and where.
struct Sent {
    server: ServerId,
    at: Instant,
}

/// A fault in progress that must be undone later.
enum Undo {
    Revive(usize),
    RestoreSecret(usize),
    StopFlapping(usize),
}

fn seed() -> u64 {
    std::env::var("AMI_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00C0_FFEE)
}

fn client_config(i: usize) -> Config {
    Config::new(format!("node_{i}"), "admin", SECRET)
}

fn sim_config() -> SimConfig {
    // A light steady event stream on every server (one event every 2 s).
    SimConfig::new()
        .with_users(vec![("admin".into(), SECRET.into())])
        .with_flood(Some(Flood::new(1).with_user_event("Tick")))
}

fn action_for(n: u64) -> Action {
    match n % 4 {
        0 => Ping.into(),
        1 => Command::new("core show version").into(),
        2 => QueueStatus::default().into(),
        _ => CoreShowChannels.into(),
    }
}

#[test]
fn a_day_of_random_faults() {
    let seed = seed();
    eprintln!("simulation seed = {seed} (replay with AMI_SIM_SEED={seed})");
    let configs: Vec<Config> = (0..SERVERS).map(client_config).collect();
    let limits = configs[0].clone();
    let cluster = ClusterConfig::new(configs, seed, 0xA5);
    let mut net = Net::new(cluster, (0..SERVERS).map(|_| sim_config()).collect(), seed);
    let mut rng = Rng::new(seed ^ 0xFA17);
    net.cluster.connect_all(net.now);
    net.run_for(Duration::from_secs(1));

    let end = net.start + DAY;
    let mut sent: HashMap<String, Sent> = HashMap::new();
    let mut no_server = 0u64;
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut next_fault = net.now + Duration::from_secs(rng.range_inclusive(60, 600));
    let mut undo: Vec<(Instant, Undo)> = Vec::new();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut flapping = [false; SERVERS];
    let mut n = 0u64;
    while net.now < end {
        for (i, flaps) in flapping.iter().enumerate() {
            if *flaps && net.cluster.node(ServerId(i)).health() == Health::Healthy {
                net.cut(i);
            }
        }
        // One routed action per second.
        n += 1;
        match net.cluster.send_routed(net.now, action_for(n)) {
            Ok((server, id)) => {
                sent.insert(
                    id,
                    Sent {
                        server,
                        at: net.now,
                    },
                );
            }
            Err(RouteError::NoServer(_)) => no_server += 1,
            Err(RouteError::Refused { error, .. }) => {
                *refused.entry(format!("{error:?}")).or_default() += 1
            }
            Err(other) => panic!("unexpected routing error: {other}"),
        }
        // Undo faults whose time has come.
        let now = net.now;
        for (_, u) in undo.extract_if(.., |(at, _)| *at <= now) {
            match u {
                Undo::StopFlapping(i) => flapping[i] = false,
                Undo::Revive(i) => net.revive(i),
                Undo::RestoreSecret(i) => {
                    net.servers[i].config_mut().users = vec![("admin".into(), SECRET.into())]
                }
            }
        }
        // Inject a new fault now and then.
        if net.now >= next_fault {
            let i = rng.range_inclusive(0, FAULTY as u64 - 1) as usize;
            let kind = rng.range_inclusive(0, 9);
            let name = if kind == 9 {
                flapping[i] = true;
                let lasts = Duration::from_secs(rng.range_inclusive(60, 300));
                undo.push((net.now + lasts, Undo::StopFlapping(i)));
                "flapping"
            } else {
                inject(&mut net, &mut rng, &mut undo, i, kind)
            };
            *faults.entry(name).or_default() += 1;
            next_fault = net.now + Duration::from_secs(rng.range_inclusive(60, 900));
        }
        net.run_for(Duration::from_secs(1));
    }
    // Everything back up, then a graceful stop: whatever is in flight completes.
    for (_, u) in undo.drain(..) {
        match u {
            Undo::StopFlapping(i) => flapping[i] = false,
            Undo::Revive(i) => net.revive(i),
            Undo::RestoreSecret(i) => {
                net.servers[i].config_mut().users = vec![("admin".into(), SECRET.into())]
            }
        }
    }
    net.run_for(Duration::from_secs(60));
    net.cluster.close_all(net.now);
    net.run_for(Duration::from_secs(60));

    let metrics: Vec<(String, NodeMetrics)> = net
        .cluster
        .metrics()
        .into_iter()
        .map(|(k, m)| (k.to_owned(), m))
        .collect();
    eprintln!(
        "seed {seed}: {} actions sent, faults {faults:?}",
        sent.len()
    );
    for (key, m) in &metrics {
        eprintln!(
            "  {key}: established {} lost {} failures {} circuit_opened {} completed {} failed {} refused {} dropped {} p99<= {:?} ms",
            m.connections_established,
            m.connections_lost,
            m.connection_failures,
            m.circuit_opened_total,
            m.actions_completed,
            m.actions_failed,
            m.actions_refused,
            m.dropped_events_total,
            m.action_latency.quantile_bound_ms(0.99)
        );
    }

    // 1. Every action completed exactly once (a second completion panics in the net).
    for (id, s) in &sent {
        let done = net.completions.get(id).unwrap_or_else(|| {
            panic!(
                "seed {seed}: {id} sent at {:?} never completed",
                s.at - net.start
            )
        });
        assert_eq!(
            done.server, s.server,
            "seed {seed}: {id} completed elsewhere"
        );
    }
    assert_eq!(
        net.completions.len(),
        sent.len(),
        "seed {seed}: completions for actions never sent"
    );

    // 2. No queue or buffer above its bound.
    for (i, &(events, transmit, input, pending)) in net.high_water.iter().enumerate() {
        assert!(
            events <= limits.event_queue_capacity,
            "seed {seed}: node {i} events {events}"
        );
        assert!(
            transmit <= limits.write_buffer_limit,
            "seed {seed}: node {i} transmit {transmit}"
        );
        assert!(
            input <= limits.limits.max_command_output,
            "seed {seed}: node {i} input {input}"
        );
        assert!(
            pending <= limits.max_pending_actions,
            "seed {seed}: node {i} pending {pending}"
        );
    }

    // 3 and 4. Reconnect delays, circuits.
    let mut delays: Vec<Duration> = Vec::new();
    let mut opened = 0;
    for i in 0..SERVERS {
        let log = net.log(i);
        let mut open_until: Option<Instant> = None;
        let mut lost_at: Option<Instant> = None;
        for (t, record) in log {
            match record {
                Record::Connect | Record::Refused => {
                    // An attempt: when a circuit was open it must come after the
                    // cooldown (at most 1 s of probe jitter later); otherwise within
                    // the backoff range after the loss or failure that preceded it.
                    if let Some(until) = open_until.take() {
                        assert!(
                            *t >= until && *t <= until + Duration::from_secs(1),
                            "seed {seed}: node {i} probed at {:?}, cooldown ended {:?}",
                            *t - net.start,
                            until - net.start
                        );
                    } else if let Some(lost) = lost_at {
                        let delay = *t - lost;
                        assert!(
                            (Duration::from_millis(100)..=Duration::from_secs(30)).contains(&delay),
                            "seed {seed}: node {i} retried after {delay:?}"
                        );
                        delays.push(delay);
                    }
                    lost_at = matches!(record, Record::Refused).then_some(*t);
                }
                Record::Closed(_) => lost_at = Some(*t),
                Record::Circuit(Transition::Opened {
                    until,
                    consecutive_failures,
                }) => {
                    assert_eq!(
                        *consecutive_failures, 5,
                        "seed {seed}: node {i} opened early"
                    );
                    open_until = *until;
                    opened += 1;
                }
                Record::Circuit(Transition::Reopened { until }) => open_until = *until,
                _ => {}
            }
        }
    }
    assert!(
        delays.len() >= 20,
        "seed {seed}: only {} reconnects",
        delays.len()
    );
    delays.sort();
    delays.dedup();
    assert!(
        delays.len() >= 10,
        "seed {seed}: reconnect delays are not jittered: {delays:?}"
    );
    assert!(opened >= 1, "seed {seed}: no circuit ever opened");

    // 5. Untouched servers never failed an action, and routing always found one.
    for (id, s) in &sent {
        if s.server.0 >= FAULTY {
            let done = &net.completions[id];
            assert!(
                done.result.is_ok(),
                "seed {seed}: {id} on untouched {} failed: {:?}",
                s.server,
                done.result
            );
        }
    }
    assert_eq!(no_server, 0, "seed {seed}: routing found no healthy server");
    for (i, (_, m)) in metrics.iter().enumerate().skip(FAULTY) {
        assert_eq!(
            m.connections_lost, 0,
            "seed {seed}: untouched node {i} lost its session"
        );
        assert_eq!(m.health, Health::Disconnected, "closed at the end");
    }
    let routed_to_faulty = sent.values().filter(|s| s.server.0 < FAULTY).count();
    assert!(
        routed_to_faulty > 0,
        "seed {seed}: faulty servers were never used"
    );
    eprintln!("refused at send: {refused:?}");
}

/// Injects fault `kind` into server `i`; returns its name.
fn inject(
    net: &mut Net,
    rng: &mut Rng,
    undo: &mut Vec<(Instant, Undo)>,
    i: usize,
    kind: u64,
) -> &'static str {
    let now = net.now;
    let session = net.links[i].as_mut();
    match (kind, session) {
        (0 | 1, _) => {
            // An outage of 1 s to 15 min.
            let down = Duration::from_millis(rng.range_inclusive(1_000, 900_000));
            net.kill(i);
            undo.push((now + down, Undo::Revive(i)));
            "outage"
        }
        (2, _) => {
            // Logins rejected for 1 to 5 minutes: the circuit must open, not hammer.
            net.servers[i].config_mut().users = vec![("admin".into(), "changed".into())];
            net.cut(i);
            let down = Duration::from_secs(rng.range_inclusive(60, 300));
            undo.push((now + down, Undo::RestoreSecret(i)));
            "auth_rejected"
        }
        (3, Some(s)) => {
            s.inject(now, Fault::Stall);
            "stall"
        }
        (4, Some(s)) => {
            s.inject(
                now,
                Fault::Garbage(b"\x00\xffnot: ami\r\n\r\ngarbage without colon\r\n\r\n".to_vec()),
            );
            "garbage"
        }
        (5, Some(s)) => {
            s.inject(now, Fault::CloseMidMessage);
            "close_mid_message"
        }
        (6, Some(s)) => {
            s.inject(now, Fault::Oversized { bytes: 100_000 });
            "oversized"
        }
        (7, Some(s)) => {
            s.inject(
                now,
                Fault::DelayResponses(Duration::from_secs(rng.range_inclusive(1, 10))),
            );
            "delayed_responses"
        }
        (8, Some(s)) => {
            s.inject(now, Fault::DropResponses { every_nth: 2 });
            "dropped_responses"
        }
        _ => "none_(server_down)",
    }
}
