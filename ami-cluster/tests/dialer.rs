//! The client core's dialer (call tracking and pacing) against a simulated server, in
//! virtual time: Originates over the limits wait their turn and go out at the rate, a
//! full wait queue refuses with `Paced`, a held Originate past its timeout fails at
//! the `Paced` stage, concurrency holds calls until one ends, and every login reseeds
//! the tracker from `CoreShowChannels`.

#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use ami_cluster::{
    CallEnded, ClientCore, ClientOutput, ClusterConfig, DialerConfig, Outcome, PacingConfig,
    ServerId,
};
use ami_proto::action::Originate;
use ami_proto::{ActionError, Config, Reply, SendError, Stage};
use ami_sim::{SimConfig, SimServer, SimSession};

/// One client core wired to one simulated Asterisk, in virtual time.
struct Net {
    core: ClientCore<u32>,
    server: SimServer,
    link: Option<SimSession>,
    now: Instant,
    start: Instant,
    /// Completions: the payload, when, and the result.
    done: Vec<(u32, Duration, Result<Reply, ActionError>)>,
    calls: Vec<(Duration, CallEnded)>,
}

const ID: ServerId = ServerId(0);

impl Net {
    fn new(sim: SimConfig, config: Config, dialer: DialerConfig) -> Net {
        let start = Instant::now();
        let mut core = ClientCore::new(ClusterConfig::new(vec![config], 1, 7)).expect("core");
        core.track_calls(ID, dialer);
        let mut net = Net {
            core,
            server: SimServer::new(sim, 11),
            link: None,
            now: start,
            start,
            done: Vec::new(),
            calls: Vec::new(),
        };
        net.core.open(ID, start);
        net.run_for(Duration::from_millis(200));
        assert!(net.core.node(ID).state().is_ready(), "logged in");
        net
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Moves bytes and outputs at the current instant until nothing moves.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            if let Some(session) = self.link.as_mut() {
                let out = self.core.poll_transmit(ID);
                if !out.is_empty() && session.wants_input(self.now) {
                    let n = out.len();
                    session.handle_input(self.now, out);
                    self.core.advance_transmit(ID, n);
                    moved = true;
                }
                let data = session.poll_transmit();
                if !data.is_empty() {
                    let n = data.len();
                    self.core.handle_data(ID, self.now, data);
                    session.advance_transmit(n);
                    moved = true;
                }
            }
            while let Some(output) = self.core.poll() {
                moved = true;
                match output {
                    ClientOutput::Connect(_) => {
                        self.link = Some(self.server.accept(self.now).expect("accepts"));
                        self.core.handle_connected(ID, self.now);
                    }
                    ClientOutput::Completed {
                        payload,
                        completion,
                        ..
                    } => self.done.push((payload, self.elapsed(), completion.result)),
                    ClientOutput::CallEnded { call, .. } => {
                        self.calls.push((self.elapsed(), *call));
                    }
                    _ => {}
                }
            }
            if !moved {
                return;
            }
        }
        panic!("never settled");
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.settle();
        while self.now < until {
            let session = self.link.as_ref().and_then(SimSession::poll_timeout);
            let next = [self.core.poll_timeout(), session, Some(until)]
                .into_iter()
                .flatten()
                .min()
                .expect("until")
                .max(self.now);
            self.now = next;
            self.core.handle_timeout(next);
            if let Some(session) = self.link.as_mut()
                && session.poll_timeout().is_some_and(|at| at <= next)
            {
                session.handle_timeout(next);
            }
            self.settle();
        }
    }

    fn originate(&mut self, channel: &str, n: u32) -> Result<(), SendError> {
        let originate = Originate::application(channel, "Wait", "1")
            .with_async(true)
            .with_channel_id(format!("call-{n}"));
        self.core
            .send(ID, self.now, originate, n)
            .map(|_| ())
            .map_err(|refused| refused.error)
    }
}

fn paced(rate: Option<f64>, concurrent: Option<usize>, max_waiting: usize) -> DialerConfig {
    DialerConfig {
        pacing: PacingConfig {
            max_calls_per_second: rate,
            calls_burst: 1,
            max_concurrent_calls: concurrent,
        },
        max_waiting,
        ..DialerConfig::default()
    }
}

fn sim() -> SimConfig {
    SimConfig::new()
        .with_originate_delay(Duration::from_millis(50))
        .with_list_size(0)
}

fn config() -> Config {
    Config::new("pbx", "admin", "amp111")
}

#[test]
fn held_originates_go_out_at_the_rate_and_a_full_queue_refuses_with_paced() {
    let mut net = Net::new(sim(), config(), paced(Some(5.0), None, 3));
    let t0 = net.elapsed();
    for n in 0..4 {
        net.originate("PJSIP/busy", n).expect("sent or held");
    }
    assert_eq!(
        net.originate("PJSIP/busy", 4),
        Err(SendError::Paced { waiting: 3 })
    );
    let status = net.core.dialer_status(ID).expect("tracked");
    assert_eq!((status.waiting, status.refused), (3, 1));
    // Every slot held: the held ones count as pending.
    assert_eq!(net.core.pending(), 4);

    net.run_for(Duration::from_secs(2));
    assert_eq!(net.done.len(), 4, "{:?}", net.done);
    for (i, (payload, at, result)) in net.done.iter().enumerate() {
        assert_eq!(*payload, i as u32, "in order");
        let reply = result.as_ref().expect("completed");
        assert_eq!(reply.events[0].get("Reason"), Some("5"));
        // Sent 200 ms apart (5 per second, a burst of 1), answered 50 ms later.
        let sent = *at - t0 - Duration::from_millis(50);
        let expected = Duration::from_millis(200 * i as u64);
        assert!(
            sent >= expected && sent < expected + Duration::from_millis(20),
            "call {i} sent at {sent:?}"
        );
    }
    assert_eq!(net.calls.len(), 4);
    for (i, (_, call)) in net.calls.iter().enumerate() {
        assert_eq!(call.outcome, Outcome::Busy);
        assert_eq!(call.originate_reason, Some(5));
        assert_eq!(call.registered_as.as_deref(), Some(&*format!("call-{i}")));
        assert!(call.action_id.is_some());
    }
    let status = net.core.dialer_status(ID).expect("tracked");
    assert_eq!(
        (status.admitted, status.waiting, status.live_calls),
        (4, 0, 0)
    );
    assert_eq!(status.waited, Duration::from_millis(200 + 400 + 600));
    assert_eq!(net.core.pending(), 0);
    let text = net.core.render_prometheus();
    assert!(
        text.contains("ami_paced_refused_total{server=\"pbx\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ami_paced_wait_seconds_total{server=\"pbx\"} 1.200"),
        "{text}"
    );
}

#[test]
fn concurrency_holds_an_originate_until_a_call_ends_and_its_timeout_runs_out() {
    let mut config = config();
    config.action_timeout = Duration::from_secs(3);
    let mut net = Net::new(sim(), config, paced(None, Some(1), 10));
    // Answered, and its channels never come from the simulator: the call stays up.
    net.originate("PJSIP/answer", 0).expect("sent");
    net.originate("PJSIP/busy", 1).expect("held");
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.done.len(), 1);
    assert_eq!(net.core.dialer_status(ID).expect("tracked").waiting, 1);

    net.run_for(Duration::from_secs(3));
    let (payload, _, result) = &net.done[1];
    assert_eq!(*payload, 1);
    match result {
        Err(ActionError::Timeout { stage, timeout }) => {
            assert_eq!(*stage, Stage::Paced);
            assert_eq!(*timeout, Duration::from_secs(3));
        }
        other => panic!("expected a paced timeout, got {other:?}"),
    }
    let status = net.core.dialer_status(ID).expect("tracked");
    assert_eq!(
        (status.expired, status.waiting, status.live_calls),
        (1, 0, 1)
    );
    assert_eq!(net.core.pending(), 0);
}

#[test]
fn a_call_that_ends_lets_the_next_one_go() {
    let mut net = Net::new(sim(), config(), paced(None, Some(1), 10));
    let t0 = net.elapsed();
    for n in 0..3 {
        net.originate("PJSIP/congestion", n).expect("sent or held");
    }
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.done.len(), 3);
    // One at a time: each goes out when the previous call's OriginateResponse ended it.
    for (i, (_, at, _)) in net.done.iter().enumerate() {
        assert_eq!(*at - t0, Duration::from_millis(50 * (i as u64 + 1)));
    }
    assert!(
        net.calls
            .iter()
            .all(|(_, c)| c.outcome == Outcome::Congestion)
    );
}

#[test]
fn every_login_reseeds_the_tracker_from_core_show_channels() {
    let sim = SimConfig::new().with_list_size(3);
    let net = Net::new(sim, config(), DialerConfig::default());
    // The simulator lists 3 channels up: the tracker follows them as calls.
    assert_eq!(net.core.dialer_status(ID).expect("tracked").live_calls, 3);
    // The core's own CoreShowChannels is not handed to the application.
    assert!(net.done.is_empty());
}

#[test]
fn new_limits_take_over_the_originates_the_old_ones_held() {
    let mut net = Net::new(sim(), config(), paced(Some(1.0), None, 10));
    for n in 0..3 {
        net.originate("PJSIP/busy", n).expect("sent or held");
    }
    assert_eq!(net.core.dialer_status(ID).expect("tracked").waiting, 2);
    // Faster limits: the two held go out under them, and every slot completes once.
    net.core.track_calls(ID, paced(Some(10.0), None, 10));
    assert_eq!(net.core.dialer_status(ID).expect("tracked").waiting, 2);
    net.run_for(Duration::from_millis(500));
    let payloads: Vec<u32> = net.done.iter().map(|(p, _, _)| *p).collect();
    assert_eq!(payloads, [0, 1, 2]);
    assert!(net.done.iter().all(|(_, _, r)| r.is_ok()), "{:?}", net.done);
    assert_eq!(net.core.pending(), 0);
}
