//! `ami demo`: the client at work against simulated Asterisk nodes, with nothing to
//! install or configure, in about eight seconds.
//!
//! The demo starts two or three simulated Asterisk nodes on loopback
//! ([`ami_sim::TcpSim`], each sending a steady stream of `UserEvent`s), drives them all
//! from one [`ami_mio::Driver`] on this thread, and prints each step with its evidence
//! on stdout, one line each, stamped with the time since the start:
//!
//! 1. connect every node and print its health changes as they happen
//!    (`connecting -> authenticating -> healthy`);
//! 2. count the events streaming in from every node;
//! 3. an async `Originate` and its `OriginateResponse`;
//! 4. a `Command` (`core show version`) and its output;
//! 5. round-robin routing: routed `Ping`s visit the nodes in turn;
//! 6. kill one node: it goes `reconnecting` and, after repeated refused attempts,
//!    `circuit_open`, while the others keep streaming and answering routed `Ping`s
//!    (the dead node is never picked);
//! 7. restart it: the circuit's probe reconnects it and its events flow again;
//! 8. a summary from the driver's metrics, a few Prometheus lines, and a graceful
//!    shutdown.
//!
//! The demo checks itself: it exits 0 only when every step showed what it should, and
//! otherwise prints what failed and exits 1. Every wait has a deadline, and waiting
//! always means ticking the driver. The reconnect policy uses demo timings (backoff
//! 100 ms..1 s, circuit cooldown 2 s, heartbeat every second) so that the circuit
//! opens and closes within the run; the output says so. Logs stay off unless
//! `AMI_LOG` is set.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::io::{self, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ami_mio::{
    BackoffConfig, CircuitConfig, Driver, DriverOptions, Endpoint, Health, Policy, ServerId,
    ServerSpec, Strategy,
};
use ami_proto::{Action, ActionError, Config, Reply, action};
use ami_sim::{Flood, SimConfig, TcpSim};

use crate::CliError;
use crate::worker::init_logging;

/// The jitter seed when `--seed` is not given: runs are reproducible by default.
const DEFAULT_SEED: u64 = 2024;
/// `UserEvent`s each simulated node sends per second.
const EVENTS_PER_SECOND: u64 = 20;
/// The `UserEvent:` value of the simulated nodes' events.
const USER_EVENT: &str = "DemoTick";
/// The longest one tick of the driver waits.
const TICK: Duration = Duration::from_millis(10);
/// Heartbeat interval and Pong deadline of every connection (default 15 s and 5 s).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Backoff between attempts: from 100 ms (the floor), ceiling doubling from 100 ms
/// up to 1 s (default 1 s..30 s).
const BACKOFF: BackoffConfig = BackoffConfig {
    min: Duration::from_millis(100),
    base: Duration::from_millis(100),
    cap: Duration::from_secs(1),
};
/// Failed attempts in a row that open the circuit (the default, 5), and how long it
/// stays open (default 30 s).
const CIRCUIT: CircuitConfig = CircuitConfig {
    failure_threshold: 5,
    cooldown: Duration::from_secs(2),
    half_open_max_probes: 1,
};
/// How long every node has to log in.
const READY_WITHIN: Duration = Duration::from_secs(5);
/// How long events are counted before the first report.
const STREAM_FOR: Duration = Duration::from_secs(2);
/// How long an action has to complete.
const ACTION_WITHIN: Duration = Duration::from_secs(5);
/// The node killed and restarted: the second one.
const VICTIM: usize = 1;
/// Routed Pings in the round-robin step.
const ROUND_ROBIN_PINGS: usize = 6;
/// How long the client has to notice that the killed node is gone.
const LOSS_WITHIN: Duration = Duration::from_secs(3);
/// How long the killed node's circuit has to open.
const CIRCUIT_WITHIN: Duration = Duration::from_secs(8);
/// How long the outage goes on once the circuit is open, before the restart.
const OPEN_FOR: Duration = Duration::from_secs(1);
/// Interval of routed Pings during the outage.
const OUTAGE_PING_EVERY: Duration = Duration::from_millis(250);
/// Interval of progress lines during the outage.
const OUTAGE_REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long the restarted node has to become healthy: the cooldown, the probe's
/// jitter (up to 1 s), and room for one more failed probe.
const RECOVER_WITHIN: Duration = Duration::from_secs(9);
/// How long the restarted node's events are counted.
const RESUME_FOR: Duration = Duration::from_millis(1500);
/// How long the graceful shutdown may take.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(3);

/// Arguments of `ami demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Simulated Asterisk nodes to run (2 or 3).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 3,
        value_parser = clap::value_parser!(u8).range(2..=3)
    )]
    pub nodes: u8,
    /// Seed of the reconnect jitter: the same seed draws the same backoff delays.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SEED)]
    pub seed: u64,
}

/// Runs the demo; `Err(CliError::Failed)` names the checks that failed.
pub fn run(args: &DemoArgs) -> Result<(), CliError> {
    if std::env::var_os("AMI_LOG").is_some() {
        init_logging();
    }
    let mut demo = Demo::start(args)?;
    demo.introduce(args.seed)?;
    demo.connect()?;
    demo.stream_events()?;
    demo.originate()?;
    demo.command()?;
    demo.round_robin()?;
    demo.outage()?;
    demo.recovery()?;
    demo.summary()?;
    demo.shutdown()?;
    demo.verdict()
}

/// An action's completion as the demo records it.
#[derive(Debug)]
struct Done {
    result: Result<Reply, ActionError>,
    latency: Duration,
}

/// Where a completion callback leaves its [`Done`] for the demo loop.
type Slot = Rc<RefCell<Option<Done>>>;

/// A completion callback that fills `slot`, timing the action from now.
fn fill(slot: &Slot) -> impl FnOnce(Result<Reply, ActionError>) + 'static {
    let slot = Rc::clone(slot);
    let sent = Instant::now();
    move |result| {
        *slot.borrow_mut() = Some(Done {
            result,
            latency: sent.elapsed(),
        });
    }
}

/// What the driver's listeners saw, shared with the demo loop.
#[derive(Debug, Default)]
struct Observed {
    /// Events received, by server key.
    events: BTreeMap<String, u64>,
    /// The first flood event received, as `key: headers`.
    sample: Option<String>,
    /// Health changes not printed yet: when (since the start), key, from, to.
    health_changes: Vec<(Duration, String, Health, Health)>,
    /// Servers whose health was `CircuitOpen` at some point.
    circuit_opened: BTreeSet<String>,
    /// When each server last became healthy.
    healthy_at: BTreeMap<String, Instant>,
}

/// Routed Pings of the outage step that went to one node.
#[derive(Debug, Default, Clone, Copy)]
struct PingTally {
    sent: u64,
    ok: u64,
    failed: u64,
    max_latency: Duration,
}

/// One simulated node and its server in the driver.
#[derive(Debug)]
struct Node {
    key: String,
    sim: TcpSim,
    id: ServerId,
}

/// The running demo: the simulated nodes, the driver, and what has been seen.
struct Demo {
    start: Instant,
    out: io::Stdout,
    nodes: Vec<Node>,
    driver: Driver,
    observed: Rc<RefCell<Observed>>,
    /// Checks run so far.
    checks: usize,
    /// The checks that failed.
    failures: Vec<String>,
}

impl Demo {
    /// Starts the simulated nodes and a driver with one server per node, listeners
    /// installed, nothing connected yet.
    fn start(args: &DemoArgs) -> Result<Demo, CliError> {
        let options = DriverOptions {
            policy: Policy {
                backoff: BACKOFF,
                circuit: CIRCUIT,
                ..Policy::default()
            },
            seed: Some(args.seed),
            routing: Strategy::RoundRobin,
            ..DriverOptions::default()
        };
        let mut driver =
            Driver::with_options(options).map_err(|e| CliError::io("cannot create the poll", e))?;
        let mut nodes = Vec::new();
        for n in 1..=args.nodes {
            let key = format!("node_{n}");
            let flood = Flood::new(EVENTS_PER_SECOND).with_user_event(USER_EVENT);
            let sim = TcpSim::start(SimConfig::new().with_flood(Some(flood)))
                .map_err(|e| CliError::io(format!("cannot start the simulated {key}"), e))?;
            let addr = sim.addr();
            let mut config = Config::new(key.as_str(), "admin", "amp111");
            config.heartbeat_interval = HEARTBEAT;
            config.heartbeat_timeout = HEARTBEAT;
            let spec = ServerSpec::new(config, Endpoint::new(addr.ip().to_string(), addr.port()));
            let id = driver
                .add_server(spec)
                .map_err(|e| CliError::Failed(format!("cannot add {key}: {e}")))?;
            nodes.push(Node { key, sim, id });
        }
        let start = Instant::now();
        let observed = Rc::new(RefCell::new(Observed::default()));
        let seen = Rc::clone(&observed);
        driver.on_any_event(move |event| {
            let mut seen = seen.borrow_mut();
            *seen
                .events
                .entry(event.server_key().to_string())
                .or_default() += 1;
            if seen.sample.is_none() && event.get("UserEvent") == Some(USER_EVENT) {
                let headers: Vec<String> = event
                    .message
                    .headers()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                seen.sample = Some(format!("{}: {}", event.server_key(), headers.join(", ")));
            }
        });
        let seen = Rc::clone(&observed);
        driver.on_health_change(move |key, from, to| {
            let mut seen = seen.borrow_mut();
            seen.health_changes
                .push((start.elapsed(), key.to_owned(), from, to));
            match to {
                Health::CircuitOpen => {
                    seen.circuit_opened.insert(key.to_owned());
                }
                Health::Healthy => {
                    seen.healthy_at.insert(key.to_owned(), Instant::now());
                }
                _ => {}
            }
        });
        Ok(Demo {
            start,
            out: io::stdout(),
            nodes,
            driver,
            observed,
            checks: 0,
            failures: Vec::new(),
        })
    }

    /// Prints what runs where and the demo's reconnect policy.
    fn introduce(&mut self, seed: u64) -> Result<(), CliError> {
        self.say(format!(
            "ami demo: {} simulated Asterisk nodes on loopback, one driver on this thread",
            self.nodes.len()
        ))?;
        let lines: Vec<String> = self
            .nodes
            .iter()
            .map(|node| {
                format!(
                    "{} started: simulated Asterisk on {}, {EVENTS_PER_SECOND} UserEvents/s",
                    node.key,
                    node.sim.addr()
                )
            })
            .collect();
        for line in lines {
            self.say(line)?;
        }
        self.say(format!(
            "policy (demo timings): backoff {}..{} ms with full jitter (seed {seed}), \
             circuit opens after {} failed attempts for {} s, heartbeat every {} s \
             (defaults: 100 ms..30 s, 30 s, 15 s)",
            BACKOFF.min.as_millis(),
            BACKOFF.cap.as_millis(),
            CIRCUIT.failure_threshold,
            CIRCUIT.cooldown.as_secs(),
            HEARTBEAT.as_secs(),
        ))?;
        self.say("routing: round robin over the healthy nodes")
    }

    /// Step 1: connects every node and waits until all are healthy (a failure here
    /// ends the demo: nothing after it could work).
    fn connect(&mut self) -> Result<(), CliError> {
        self.say("step 1: connect every node (connect_all); health changes as they happen:")?;
        self.driver
            .connect_all()
            .map_err(|e| CliError::Failed(format!("cannot connect: {e}")))?;
        let all_healthy = self.tick_until(READY_WITHIN, |demo| {
            demo.nodes
                .iter()
                .all(|node| demo.driver.health(node.id) == Health::Healthy)
        })?;
        let what = format!(
            "every node logged in and healthy within {} s",
            READY_WITHIN.as_secs()
        );
        if !self.check(all_healthy, &what)? {
            return Err(CliError::Failed(format!("demo failed; not shown: {what}")));
        }
        Ok(())
    }

    /// Step 2: lets the events stream for a while and counts them per node.
    fn stream_events(&mut self) -> Result<(), CliError> {
        self.say(format!(
            "step 2: events stream from every node (on_any_event); counting for {} s",
            STREAM_FOR.as_secs()
        ))?;
        let before = self.event_counts();
        self.tick_for(STREAM_FOR)?;
        let after = self.event_counts();
        for (key, count) in self.keys().iter().zip(&after) {
            self.say(format!("  {key} streamed {count} events so far"))?;
        }
        let sample = self.observed.borrow().sample.clone();
        if let Some(sample) = sample {
            self.say(format!("  e.g. {sample}"))?;
        }
        let all_streamed = before.iter().zip(&after).all(|(b, a)| a > b);
        self.check(all_streamed, "events arrived from every node")?;
        Ok(())
    }

    /// Step 3: an async Originate on the first node and its `OriginateResponse`.
    fn originate(&mut self) -> Result<(), CliError> {
        let key = self.nodes[0].key.clone();
        self.say(format!(
            "step 3: Originate PJSIP/100 -> 200@default on {key} (Async: true; the outcome \
             comes as an OriginateResponse event)"
        ))?;
        let originate = action::Originate::extension("PJSIP/100", "200", "default", 1);
        let done = self.send_and_await(0, originate)?;
        let event = match done {
            Some(Done {
                result: Ok(reply),
                latency,
            }) => {
                let message = reply.response.get("Message").unwrap_or_default().to_owned();
                self.say(format!("  response: Success ({message})"))?;
                match reply.events.first() {
                    Some(event) => {
                        let header = |k: &str| event.get(k).unwrap_or("-").to_owned();
                        let line = format!(
                            "  OriginateResponse: Response={} Reason={}{} Channel={} \
                             Uniqueid={} after {}",
                            header("Response"),
                            header("Reason"),
                            reason_text(&header("Reason")),
                            header("Channel"),
                            header("Uniqueid"),
                            millis(latency)
                        );
                        self.say(line)?;
                        Some(header("Response"))
                    }
                    None => None,
                }
            }
            Some(Done {
                result: Err(error), ..
            }) => {
                self.say(format!("  Originate failed: {error}"))?;
                None
            }
            None => None,
        };
        let what = "OriginateResponse received with Response=Success";
        self.check(event.as_deref() == Some("Success"), what)?;
        Ok(())
    }

    /// Step 4: `core show version` on the second node and its output lines.
    fn command(&mut self) -> Result<(), CliError> {
        let key = self.nodes[1].key.clone();
        self.say(format!("step 4: Command \"core show version\" on {key}"))?;
        let done = self.send_and_await(1, action::Command::new("core show version"))?;
        let mut lines = Vec::new();
        match done {
            Some(Done {
                result: Ok(reply),
                latency,
            }) => {
                lines = reply.output().iter().map(|l| (*l).to_owned()).collect();
                self.say(format!(
                    "  {} output line(s) after {}:",
                    lines.len(),
                    millis(latency)
                ))?;
                for line in &lines {
                    self.say(format!("  | {line}"))?;
                }
            }
            Some(Done {
                result: Err(error), ..
            }) => self.say(format!("  Command failed: {error}"))?,
            None => {}
        }
        self.check(!lines.is_empty(), "command output is not empty")?;
        Ok(())
    }

    /// Step 5: routed Pings, one after the other, visit the nodes in turn.
    fn round_robin(&mut self) -> Result<(), CliError> {
        self.say(format!(
            "step 5: round-robin routing: {ROUND_ROBIN_PINGS} Pings via send_routed"
        ))?;
        let picks = self.routed_pings(ROUND_ROBIN_PINGS)?;
        let n = self.nodes.len();
        let in_turn = picks.len() == ROUND_ROBIN_PINGS
            && picks
                .iter()
                .enumerate()
                .all(|(i, &pick)| pick == Some(i % n));
        self.check(in_turn, "round robin visited every node in turn")?;
        Ok(())
    }

    /// Step 6: kills one node; prints its health changes until its circuit opens and
    /// shows the others keep streaming and answering routed Pings meanwhile.
    fn outage(&mut self) -> Result<(), CliError> {
        let victim = VICTIM;
        let key = self.nodes[victim].key.clone();
        let id = self.nodes[victim].id;
        self.say(format!(
            "step 6: kill {key}: its port closes and its session is cut"
        ))?;
        self.nodes[victim].sim.kill();
        let lost = self.tick_until(LOSS_WITHIN, |demo| {
            demo.driver.health(id) != Health::Healthy
        })?;
        self.check(lost, &format!("the client noticed that {key} is gone"))?;
        self.say(format!(
            "  routed Pings every {} ms while {key} is down:",
            OUTAGE_PING_EVERY.as_millis()
        ))?;

        let events_before = self.event_counts();
        let mut tally = vec![PingTally::default(); self.nodes.len()];
        let mut pending: Vec<(usize, Slot)> = Vec::new();
        let mut unrouted = 0u64;
        let began = Instant::now();
        let deadline = began + CIRCUIT_WITHIN;
        let mut opened_at: Option<Instant> = None;
        let mut next_ping = began;
        let mut next_report = began + OUTAGE_REPORT_EVERY;
        loop {
            let now = Instant::now();
            if opened_at.is_none() && self.observed.borrow().circuit_opened.contains(&key) {
                opened_at = Some(now);
            }
            if opened_at.is_some_and(|at| now >= at + OPEN_FOR) || now >= deadline {
                break;
            }
            if now >= next_ping {
                next_ping += OUTAGE_PING_EVERY;
                match self.send_routed(action::Ping) {
                    Ok((index, slot)) => {
                        tally[index].sent += 1;
                        pending.push((index, slot));
                    }
                    Err(error) => {
                        unrouted += 1;
                        self.say(format!("  routed Ping not sent: {error}"))?;
                    }
                }
            }
            if now >= next_report {
                next_report += OUTAGE_REPORT_EVERY;
                self.report_outage("so far", began, &events_before, &tally)?;
            }
            self.tick()?;
        }
        self.tick_until(ACTION_WITHIN, |_| {
            pending.iter().all(|(_, slot)| slot.borrow().is_some())
        })?;
        for (index, slot) in &pending {
            match slot.borrow_mut().take() {
                Some(Done {
                    result: Ok(_),
                    latency,
                }) => {
                    tally[*index].ok += 1;
                    tally[*index].max_latency = tally[*index].max_latency.max(latency);
                }
                _ => tally[*index].failed += 1,
            }
        }
        self.report_outage("in all", began, &events_before, &tally)?;

        let opened = self.observed.borrow().circuit_opened.contains(&key);
        self.check(opened, &format!("the circuit of {key} opened"))?;
        let skipped = tally[victim].sent == 0;
        self.check(
            skipped,
            &format!("routing never picked {key} while it was down"),
        )?;
        let others = |i: usize| i != victim;
        let answered = unrouted == 0
            && (0..self.nodes.len())
                .filter(|&i| others(i))
                .all(|i| tally[i].ok > 0 && tally[i].failed == 0);
        self.check(answered, "every routed Ping to the other nodes succeeded")?;
        let events_after = self.event_counts();
        let streaming = (0..self.nodes.len())
            .filter(|&i| others(i))
            .all(|i| events_after[i] > events_before[i]);
        self.check(streaming, "the other nodes kept streaming events")?;
        Ok(())
    }

    /// Prints the outage up to now (`label`: "so far", "in all"): events and routed
    /// Pings per node.
    fn report_outage(
        &mut self,
        label: &str,
        began: Instant,
        events_before: &[u64],
        tally: &[PingTally],
    ) -> Result<(), CliError> {
        let events_now = self.event_counts();
        let mut parts = Vec::new();
        for (i, key) in self.keys().iter().enumerate() {
            let health = self.driver.health(self.nodes[i].id);
            let t = tally[i];
            let pings = if t.sent == 0 {
                "no Pings (skipped)".to_owned()
            } else if t.ok + t.failed == 0 {
                format!("{} Pings", t.sent)
            } else {
                format!(
                    "{} Pings, {} ok, {} failed, max {}",
                    t.sent,
                    t.ok,
                    t.failed,
                    millis(t.max_latency)
                )
            };
            parts.push(format!(
                "{key} [{health}] +{} events, {pings}",
                events_now[i] - events_before[i]
            ));
        }
        self.say(format!(
            "  outage {label}, {:.1} s: {}",
            began.elapsed().as_secs_f64(),
            parts.join("; ")
        ))
    }

    /// Step 7: restarts the killed node and waits until it is healthy and its events
    /// flow again; routing includes it again.
    fn recovery(&mut self) -> Result<(), CliError> {
        let victim = VICTIM;
        let key = self.nodes[victim].key.clone();
        let id = self.nodes[victim].id;
        self.say(format!(
            "step 7: restart {key} on {}; after the {} s cooldown the circuit lets one probe through",
            self.nodes[victim].sim.addr(),
            CIRCUIT.cooldown.as_secs()
        ))?;
        let restarted = Instant::now();
        self.nodes[victim]
            .sim
            .restart()
            .map_err(|e| CliError::io(format!("cannot restart the simulated {key}"), e))?;
        let healthy = self.tick_until(RECOVER_WITHIN, |demo| {
            demo.driver.health(id) == Health::Healthy
        })?;
        if healthy {
            let at = self.observed.borrow().healthy_at.get(&key).copied();
            let took = at.map_or(restarted.elapsed(), |at| {
                at.saturating_duration_since(restarted)
            });
            self.say(format!(
                "  {key} healthy again {:.2} s after the restart",
                took.as_secs_f64()
            ))?;
        }
        self.check(healthy, &format!("{key} reconnected and is healthy again"))?;

        let before = self.event_counts()[victim];
        self.tick_for(RESUME_FOR)?;
        let resumed = self.event_counts()[victim] - before;
        self.say(format!(
            "  {key} events flowing again: +{resumed} in {:.1} s",
            RESUME_FOR.as_secs_f64()
        ))?;
        self.check(resumed > 0, &format!("events from {key} resumed"))?;

        self.say("  routed Pings go to every node again:")?;
        let picks = self.routed_pings(self.nodes.len())?;
        let back = picks.contains(&Some(victim));
        self.check(back, &format!("routing picks {key} again"))?;
        Ok(())
    }

    /// Step 8: per-node metrics and the `ami_connection_status` lines of the
    /// Prometheus text.
    fn summary(&mut self) -> Result<(), CliError> {
        self.say("step 8: summary (Driver::metrics)")?;
        self.say(format!(
            "  {:<8} {:>7} {:>10} {:>7} {:>9} {:>8} {:>13} {:>8}",
            "node", "events", "completed", "failed", "attempts", "lost", "circuit_open", "dropped"
        ))?;
        let counts = self.event_counts();
        let rows: Vec<String> = self
            .nodes
            .iter()
            .zip(&counts)
            .map(|(node, count)| {
                let m = self.driver.metrics(node.id);
                format!(
                    "  {:<8} {:>7} {:>10} {:>7} {:>9} {:>8} {:>13} {:>8}",
                    node.key,
                    count,
                    m.actions_completed,
                    m.actions_failed,
                    m.reconnect_attempts,
                    m.connections_lost,
                    m.circuit_opened_total,
                    m.dropped_events_total
                )
            })
            .collect();
        for row in rows {
            self.say(row)?;
        }
        self.say("  (attempts: connection attempts, the first one included)")?;
        self.say("  Prometheus text (Driver::render_prometheus), ami_connection_status:")?;
        let text = self.driver.render_prometheus();
        for line in text
            .lines()
            .filter(|l| l.starts_with("ami_connection_status"))
        {
            self.say(format!("  | {line}"))?;
        }
        Ok(())
    }

    /// Logs off every node and waits until all sessions are closed.
    fn shutdown(&mut self) -> Result<(), CliError> {
        self.say("shutdown: Logoff to every node")?;
        let began = Instant::now();
        let closed = self.driver.shutdown(SHUTDOWN_WITHIN);
        self.print_health_changes()?;
        if closed {
            self.say(format!(
                "  every session closed in {}",
                millis(began.elapsed())
            ))?;
        }
        self.check(closed, "graceful shutdown")?;
        Ok(())
    }

    /// The exit: `Ok` when every check passed.
    fn verdict(mut self) -> Result<(), CliError> {
        if self.failures.is_empty() {
            let line = format!("demo passed: all {} checks ok", self.checks);
            return self.say(line);
        }
        let line = format!(
            "demo FAILED: {} of {} checks failed",
            self.failures.len(),
            self.checks
        );
        self.say(line)?;
        Err(CliError::Failed(format!(
            "demo failed; not shown: {}",
            self.failures.join("; ")
        )))
    }

    /// Sends `count` routed Pings one after the other; prints where each went and
    /// returns the node index of each (`None`: not routed or failed).
    fn routed_pings(&mut self, count: usize) -> Result<Vec<Option<usize>>, CliError> {
        let mut picks = Vec::new();
        for n in 1..=count {
            let (index, slot) = match self.send_routed(action::Ping) {
                Ok(sent) => sent,
                Err(error) => {
                    self.say(format!("  Ping {n}: not sent: {error}"))?;
                    picks.push(None);
                    continue;
                }
            };
            let key = self.nodes[index].key.clone();
            match self.await_slot(&slot, ACTION_WITHIN)? {
                Some(Done {
                    result: Ok(_),
                    latency,
                }) => {
                    self.say(format!("  Ping {n} -> {key}: Pong in {}", millis(latency)))?;
                    picks.push(Some(index));
                }
                Some(Done {
                    result: Err(error), ..
                }) => {
                    self.say(format!("  Ping {n} -> {key}: failed: {error}"))?;
                    picks.push(None);
                }
                None => {
                    self.say(format!("  Ping {n} -> {key}: no answer"))?;
                    picks.push(None);
                }
            }
        }
        Ok(picks)
    }

    /// Sends an action to node `index` and waits for its completion (`None`: refused
    /// or not completed in time; a refusal is printed).
    fn send_and_await(
        &mut self,
        index: usize,
        action: impl Into<Action>,
    ) -> Result<Option<Done>, CliError> {
        let slot = Slot::default();
        if let Err(error) = self.driver.send(self.nodes[index].id, action, fill(&slot)) {
            self.say(format!("  refused: {error}"))?;
            return Ok(None);
        }
        let done = self.await_slot(&slot, ACTION_WITHIN)?;
        if done.is_none() {
            self.say(format!(
                "  no completion within {} s",
                ACTION_WITHIN.as_secs()
            ))?;
        }
        Ok(done)
    }

    /// Sends an action where the routing strategy says; returns the node's index and
    /// the slot its completion will fill.
    fn send_routed(&mut self, action: impl Into<Action>) -> Result<(usize, Slot), String> {
        let slot = Slot::default();
        let id = self
            .driver
            .send_routed(action, fill(&slot))
            .map_err(|e| e.to_string())?
            .server;
        let index = self
            .nodes
            .iter()
            .position(|node| node.id == id)
            .ok_or_else(|| format!("routed to an unknown server {id:?}"))?;
        Ok((index, slot))
    }

    /// Ticks until `slot` is filled, at most `within`.
    fn await_slot(&mut self, slot: &Slot, within: Duration) -> Result<Option<Done>, CliError> {
        self.tick_until(within, |_| slot.borrow().is_some())?;
        Ok(slot.borrow_mut().take())
    }

    /// Ticks until `done` holds (true) or `within` has passed (false).
    fn tick_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&Demo) -> bool,
    ) -> Result<bool, CliError> {
        let deadline = Instant::now() + within;
        loop {
            if done(self) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.tick()?;
        }
    }

    /// Ticks for `period`.
    fn tick_for(&mut self, period: Duration) -> Result<(), CliError> {
        self.tick_until(period, |_| false).map(|_| ())
    }

    /// One tick of the driver, then the health changes it reported.
    fn tick(&mut self) -> Result<(), CliError> {
        self.driver.tick_all(TICK);
        self.print_health_changes()
    }

    /// Prints the health changes the listener recorded since the last call.
    fn print_health_changes(&mut self) -> Result<(), CliError> {
        let changes = std::mem::take(&mut self.observed.borrow_mut().health_changes);
        for (at, key, from, to) in changes {
            self.say_at(at, format!("{key} health {from} -> {to}"))?;
        }
        Ok(())
    }

    /// Records a check and prints its outcome; returns `ok`.
    fn check(&mut self, ok: bool, what: &str) -> Result<bool, CliError> {
        self.checks += 1;
        if ok {
            self.say(format!("  ok: {what}"))?;
        } else {
            self.failures.push(what.to_owned());
            self.say(format!("  FAILED: {what}"))?;
        }
        Ok(ok)
    }

    /// Prints one line stamped with the time since the start.
    fn say(&mut self, text: impl Display) -> Result<(), CliError> {
        let at = self.start.elapsed();
        self.say_at(at, text)
    }

    /// Prints one line stamped with `at` (time since the start).
    fn say_at(&mut self, at: Duration, text: impl Display) -> Result<(), CliError> {
        writeln!(self.out, "[{:>6.2}s] {text}", at.as_secs_f64())
            .and_then(|()| self.out.flush())
            .map_err(|e| CliError::io("cannot write to stdout", e))
    }

    /// The nodes' keys, in order.
    fn keys(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.key.clone()).collect()
    }

    /// Events received so far from each node, in order.
    fn event_counts(&self) -> Vec<u64> {
        let observed = self.observed.borrow();
        self.nodes
            .iter()
            .map(|node| observed.events.get(&node.key).copied().unwrap_or(0))
            .collect()
    }
}

/// What an `OriginateResponse` `Reason` code means, as ` (text)`.
fn reason_text(code: &str) -> &'static str {
    match code {
        "3" => " (no answer)",
        "4" => " (answered)",
        "5" => " (busy)",
        "8" => " (congestion)",
        _ => "",
    }
}

/// A short duration for people: `85 µs` below a millisecond, else `12.3 ms`.
fn millis(duration: Duration) -> String {
    if duration < Duration::from_millis(1) {
        format!("{} µs", duration.as_micros())
    } else {
        format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
    }
}
