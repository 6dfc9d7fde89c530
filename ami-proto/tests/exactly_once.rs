//! Property: whatever the server does and whenever time passes, every action accepted by
//! `send` completes exactly once, nothing completes that was not sent, and every
//! buffer and queue stays within its bound at every step.
//!
//! A random scenario drives a logged-in connection against a scripted server that reads
//! what the connection wrote (all or part of it), answers the actions it read in any
//! order and in any way (success, error, event list, Originate event, garbage, duplicates),
//! interleaves broadcast events and garbage, delivers its bytes in random pieces, and the
//! clock jumps by random amounts. The scenario ends with end of stream or a close.

// The simulated clock needs one real starting instant; ami-proto bans `Instant::now`
// (clippy.toml) because the library itself must never read a clock.
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use ami_proto::action::{self, Originate};
use ami_proto::{Action, Config, Limits, Output, State};
use proptest::prelude::*;
use support::*;

/// What the application sends.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Ping,
    Command,
    QueueStatus,
    Originate,
    Generic,
    /// An action the encoder refuses (never written, never completes).
    Invalid,
}

#[derive(Debug, Clone)]
enum Op {
    /// The application sends an action.
    Send(Kind),
    /// The server reads everything the connection wrote.
    ServerReads,
    /// The socket takes only this many bytes.
    PartialWrite(usize),
    /// The server answers the `pick`-th action it read and has not answered yet, in
    /// the way `variant` says; `n` sizes lists and command output.
    Answer {
        pick: usize,
        variant: u8,
        n: u8,
    },
    /// The server repeats one of its earlier answers.
    Repeat(usize),
    /// A broadcast event.
    Broadcast(u8),
    /// An `OriginateResponse` of another session (or of this one's earlier generation).
    ForeignOriginateResponse(u8),
    /// Garbage between messages.
    Garbage(u8),
    /// The server's pending bytes are delivered in pieces of these sizes.
    Deliver(Vec<usize>),
    /// Time passes, then `handle_timeout`.
    Advance(u64),
    Eof,
    TransportError,
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        Just(Kind::Ping),
        Just(Kind::Command),
        Just(Kind::QueueStatus),
        Just(Kind::Originate),
        Just(Kind::Generic),
        Just(Kind::Invalid),
    ];
    prop_oneof![
        10 => kind.prop_map(Op::Send),
        6 => Just(Op::ServerReads),
        1 => (0usize..200).prop_map(Op::PartialWrite),
        12 => (any::<usize>(), any::<u8>(), 0u8..40)
            .prop_map(|(pick, variant, n)| Op::Answer { pick, variant, n }),
        1 => any::<usize>().prop_map(Op::Repeat),
        2 => any::<u8>().prop_map(Op::Broadcast),
        1 => any::<u8>().prop_map(Op::ForeignOriginateResponse),
        1 => any::<u8>().prop_map(Op::Garbage),
        8 => prop::collection::vec(1usize..200, 1..8).prop_map(Op::Deliver),
        3 => prop_oneof![0u64..2_000, 0u64..60_000].prop_map(Op::Advance),
        // Rare, so that most scenarios run long before the connection ends.
        1 => prop_oneof![
            Just(Op::Close),
            Just(Op::Close),
            Just(Op::Eof),
            Just(Op::TransportError)
        ],
    ]
}

/// How a scenario ends, if it is still open after its operations.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// End of stream (pending server bytes delivered first or not).
    Eof {
        deliver_first: bool,
    },
    TransportError,
    /// `close()`, then time runs until the Logoff deadline.
    Close,
}

fn ending() -> impl Strategy<Value = Ending> {
    prop_oneof![
        any::<bool>().prop_map(|deliver_first| Ending::Eof { deliver_first }),
        Just(Ending::TransportError),
        Just(Ending::Close),
    ]
}

const ALLOWANCE: usize = 512;

fn test_config() -> Config {
    let mut config = config();
    config.max_pending_actions = 8;
    config.event_queue_capacity = 8;
    config.write_buffer_limit = 600;
    config.max_list_items = 4;
    config.limits = Limits {
        max_frame_size: 512,
        max_command_output: 1024,
    };
    config
}

/// The scripted server and the bookkeeping of the property.
struct World {
    h: Harness,
    config: Config,
    /// Bytes the server has read but not yet split into actions.
    server_read: String,
    /// Actions read and not answered yet.
    unanswered: Vec<WrittenAction>,
    /// Every answer given, for repeats.
    answers: Vec<String>,
    /// Bytes the server has sent that the connection has not received yet.
    inbound: Vec<u8>,
    issued: HashSet<String>,
    completed: HashSet<String>,
    /// `Output::Closed` was polled.
    closed: bool,
    state: State,
    counter: u64,
    /// Sends refused.
    refused: u64,
}

impl World {
    fn new() -> Self {
        let config = test_config();
        World {
            h: Harness::logged_in(config.clone()),
            config,
            server_read: String::new(),
            unanswered: Vec::new(),
            answers: Vec::new(),
            inbound: Vec::new(),
            issued: HashSet::new(),
            completed: HashSet::new(),
            closed: false,
            state: State::Healthy,
            counter: 0,
            refused: 0,
        }
    }

    fn send(&mut self, kind: Kind) {
        let action: Action = match kind {
            Kind::Ping => action::Ping.into(),
            Kind::Command => action::Command::new("core show channels").into(),
            Kind::QueueStatus => action::QueueStatus::default().into(),
            Kind::Originate => Originate::extension("PJSIP/100", "200", "default", 1)
                .with_timeout(Duration::from_secs(20))
                .into(),
            Kind::Generic => Action::new("UserEvent").header("UserEvent", "Test"),
            Kind::Invalid => Action::new("UserEvent").header("UserEvent", "a\r\nAction: Logoff"),
        };
        let before = self.h.conn.queued_transmit();
        match self.h.conn.send(self.h.now, action) {
            Ok(id) => {
                assert!(self.issued.insert(id.clone()), "ActionID {id} issued twice");
                assert!(
                    self.h.conn.queued_transmit() <= self.config.write_buffer_limit,
                    "an accepted send left {} bytes queued",
                    self.h.conn.queued_transmit()
                );
            }
            Err(_) => {
                self.refused += 1;
                assert_eq!(
                    self.h.conn.queued_transmit(),
                    before,
                    "a refused action wrote something"
                );
            }
        }
    }

    /// The socket takes `n` bytes (all with `usize::MAX`); the server reads them.
    fn write_out(&mut self, n: usize) {
        let n = n.min(self.h.conn.queued_transmit());
        let bytes = self.h.conn.poll_transmit()[..n].to_vec();
        self.h.conn.advance_transmit(n);
        self.server_read
            .push_str(std::str::from_utf8(&bytes).expect("written bytes are UTF-8"));
        // Complete actions only; a partial one waits for the rest.
        if let Some(end) = self.server_read.rfind("\r\n\r\n") {
            let complete: String = self.server_read.drain(..end + 4).collect();
            self.unanswered.extend(parse_actions(&complete));
        }
    }

    fn push(&mut self, text: &str) {
        self.inbound.extend_from_slice(text.as_bytes());
    }

    fn answer(&mut self, pick: usize, variant: u8, n: u8) {
        if self.unanswered.is_empty() {
            return;
        }
        let action = self.unanswered.remove(pick % self.unanswered.len());
        let id = action.id.as_str();
        let text = match action.name.as_str() {
            "Ping" => match variant % 5 {
                0..=2 => success(id, "Ping: Pong\r\nTimestamp: 1700000000.000000\r\n"),
                3 => error(id, "Permission denied"),
                _ => format!("Response: Success\r\nActionID: {id}\r\nnot a header line\r\n\r\n"),
            },
            "Command" => {
                let lines: String = (0..n)
                    .map(|i| format!("line {i:02} of the command output\r\n"))
                    .collect();
                match variant % 4 {
                    0 | 3 => {
                        let body: String = lines
                            .split_inclusive("\r\n")
                            .map(|l| format!("Output: {l}"))
                            .collect();
                        success(id, &format!("Message: Command output follows\r\n{body}"))
                    }
                    1 => format!(
                        "Response: Follows\r\nPrivilege: Command\r\nActionID: {id}\r\n{lines}--END COMMAND--\r\n\r\n"
                    ),
                    _ => format!(
                        "Response: Error\r\nActionID: {id}\r\nMessage: Command output follows\r\nOutput: No such command\r\n\r\n"
                    ),
                }
            }
            "QueueStatus" => {
                let items: String = (0..n % 8)
                    .map(|i| {
                        format!("Event: QueueMember\r\nActionID: {id}\r\nName: PJSIP/{i}\r\n\r\n")
                    })
                    .collect();
                let start = success(
                    id,
                    "EventList: start\r\nMessage: Queue status will follow\r\n",
                );
                let end = format!(
                    "Event: QueueStatusComplete\r\nActionID: {id}\r\nEventList: Complete\r\nListItems: {}\r\n\r\n",
                    n % 8
                );
                match variant % 5 {
                    0 | 1 => format!("{start}{items}{end}"),
                    2 => error(id, "No queues"),
                    // The list never ends.
                    3 => format!("{start}{items}"),
                    // An error in the middle of the list.
                    _ => format!("{start}{items}{}", error(id, "Internal error")),
                }
            }
            "Originate" => {
                let event = |aid: &str| {
                    format!(
                        "Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: {aid}\r\nResponse: Success\r\nChannel: PJSIP/100-1\r\nReason: {}\r\nUniqueid: 1.1\r\n\r\n",
                        [0, 1, 3, 4, 5, 8][usize::from(n) % 6]
                    )
                };
                let queued = success(id, "Message: Originate successfully queued\r\n");
                match variant % 5 {
                    0 | 1 => format!("{queued}{}", event(id)),
                    // No event ever: the event deadline must fire.
                    2 => queued,
                    3 => error(id, "Extension does not exist."),
                    _ => format!("{queued}{}{}", event("elsewhere-9-9-1"), event(id)),
                }
            }
            "Logoff" => format!(
                "Response: Goodbye\r\nActionID: {id}\r\nMessage: Thanks for all the fish.\r\n\r\n"
            ),
            _ => match variant % 2 {
                0 => success(id, ""),
                _ => error(id, "Missing UserEvent"),
            },
        };
        self.push(&text);
        self.answers.push(text);
    }

    fn deliver(&mut self, sizes: &[usize]) {
        for &size in sizes {
            if self.inbound.is_empty() {
                break;
            }
            let chunk: Vec<u8> = self.inbound.drain(..size.min(self.inbound.len())).collect();
            self.h.conn.handle_data(self.h.now, &chunk);
            self.check();
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Send(kind) => self.send(*kind),
            Op::ServerReads => self.write_out(usize::MAX),
            Op::PartialWrite(n) => self.write_out(*n),
            Op::Answer { pick, variant, n } => self.answer(*pick, *variant, *n),
            Op::Repeat(i) => {
                if !self.answers.is_empty() {
                    let text = self.answers[i % self.answers.len()].clone();
                    self.push(&text);
                }
            }
            Op::Broadcast(b) => {
                self.counter += 1;
                let name = ["Newchannel", "Hangup", "VarSet", "QueueMember", "DialBegin"]
                    [usize::from(*b) % 5];
                let text = format!(
                    "Event: {name}\r\nPrivilege: call,all\r\nChannel: PJSIP/100-{}\r\n\r\n",
                    self.counter
                );
                self.push(&text);
            }
            Op::ForeignOriginateResponse(b) => {
                let aid = match b % 3 {
                    0 => "dialer-3-1-2".to_owned(),
                    // This server key and instance, another generation.
                    1 => format!("pbx1-1-2-{:x}", b),
                    // This connection's prefix, a counter far beyond any issued.
                    _ => format!("pbx1-1-1-{:x}", 0xffff_0000u64 + u64::from(*b)),
                };
                self.push(&format!(
                    "Event: OriginateResponse\r\nActionID: {aid}\r\nResponse: Failure\r\nReason: 0\r\n\r\n"
                ));
            }
            Op::Garbage(b) => {
                let text = match b % 4 {
                    0 => "\u{1}junk\r\n\r\n".to_owned(),
                    1 => "\r\n\r\n".to_owned(),
                    2 => "Foo: bar\r\n\r\n".to_owned(),
                    // Over the frame limit.
                    _ => format!("Event: Big\r\nData: {}\r\n\r\n", "x".repeat(600)),
                };
                self.push(&text);
            }
            Op::Deliver(sizes) => self.deliver(sizes),
            Op::Advance(ms) => self.h.advance(Duration::from_millis(*ms)),
            Op::Eof => self.h.conn.handle_eof(self.h.now),
            Op::TransportError => self
                .h
                .conn
                .handle_transport_error(self.h.now, &"connection reset by peer"),
            Op::Close => self.h.conn.close(self.h.now),
        }
        self.check();
    }

    /// Drains `poll` and checks every property that must hold after any step.
    fn check(&mut self) {
        let conn = &self.h.conn;
        assert!(
            conn.queued_events() <= self.config.event_queue_capacity,
            "{} events queued",
            conn.queued_events()
        );
        assert!(
            conn.buffered_input() <= self.config.limits.max_command_output + 1,
            "{} bytes of input buffered",
            conn.buffered_input()
        );
        assert!(
            conn.queued_transmit() <= self.config.write_buffer_limit + ALLOWANCE,
            "{} bytes queued for the socket",
            conn.queued_transmit()
        );
        assert!(conn.pending_actions() <= self.config.max_pending_actions);
        assert_eq!(conn.stats().refused, self.refused);
        if let Some(deadline) = conn.poll_timeout() {
            // Time only moves with `handle_timeout`: nothing due may be left behind.
            assert!(
                deadline > self.h.now,
                "a deadline at or before now survived handle_timeout"
            );
        }
        let outputs = self.h.outputs();
        self.observe(&outputs);
    }

    /// Checks a batch of outputs against the bookkeeping.
    fn observe(&mut self, outputs: &[Output]) {
        if self.closed {
            assert_eq!(outputs, [], "output after Closed");
        }
        for output in outputs {
            // Closed is the very last output, also within one batch.
            assert!(!self.closed, "{output:?} after Closed");
            match output {
                Output::Completed(done) => {
                    assert!(
                        self.issued.contains(&done.action_id),
                        "completion of an action never sent: {}",
                        done.action_id
                    );
                    assert!(
                        self.completed.insert(done.action_id.clone()),
                        "{} completed twice",
                        done.action_id
                    );
                    assert_eq!(done.completed_at, self.h.now);
                    assert!(done.sent_at <= done.completed_at);
                    if let Ok(reply) = &done.result {
                        assert!(reply.events.len() <= self.config.max_list_items);
                    }
                    assert!(!self.closed);
                }
                Output::StateChanged { from, to } => {
                    assert_eq!(*from, self.state, "state chain broken");
                    assert_ne!(from, to);
                    self.state = *to;
                }
                Output::Closed(_) => {
                    assert!(!self.closed, "Closed twice");
                    assert_eq!(self.state, State::Closed);
                    self.closed = true;
                }
                Output::Event(_) | Output::Unmatched(_) | Output::Discarded(_) => {}
            }
        }
        assert_eq!(self.state, self.h.conn.state());
        let pending = self.issued.len() - self.completed.len();
        assert_eq!(
            self.h.conn.pending_actions(),
            pending,
            "pending_actions() disagrees with sends minus completions"
        );
    }

    /// Ends the scenario: every issued action must have completed.
    fn finish(&mut self, ending: Ending) {
        if !self.closed {
            match ending {
                Ending::Eof { deliver_first } => {
                    if deliver_first {
                        self.deliver(&[usize::MAX]);
                    }
                    self.h.conn.handle_eof(self.h.now);
                }
                Ending::TransportError => self
                    .h
                    .conn
                    .handle_transport_error(self.h.now, &"broken pipe"),
                Ending::Close => {
                    self.deliver(&[usize::MAX]);
                    self.h.conn.close(self.h.now);
                    self.check();
                    self.write_out(usize::MAX);
                    for _ in 0..100 {
                        if self.closed {
                            break;
                        }
                        self.h.jump();
                        self.write_out(usize::MAX);
                        self.check();
                    }
                }
            }
            self.check();
        }
        assert!(self.closed, "not closed at the end");
        assert_eq!(self.h.conn.state(), State::Closed);
        assert_eq!(self.h.conn.pending_actions(), 0);
        assert_eq!(self.h.conn.poll_timeout(), None);
        let issued: BTreeSet<&String> = self.issued.iter().collect();
        let completed: BTreeSet<&String> = self.completed.iter().collect();
        assert_eq!(issued, completed, "some actions never completed");
    }
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N runs more.
    #[test]
    fn every_action_completes_exactly_once(
        ops in prop::collection::vec(op(), 1..80),
        ending in ending(),
    ) {
        let mut world = World::new();
        world.check();
        for op in &ops {
            world.apply(op);
        }
        world.finish(ending);
    }
}

/// A world with one Ping sent and answered: one real completion in hand.
fn world_with_one_completion() -> (World, Output) {
    let mut world = World::new();
    world.send(Kind::Ping);
    world.write_out(usize::MAX);
    world.answer(0, 0, 0);
    let chunk = std::mem::take(&mut world.inbound);
    world.h.conn.handle_data(world.h.now, &chunk);
    let outputs = world.h.outputs();
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    world.observe(&outputs);
    let output = outputs.into_iter().next().unwrap();
    (world, output)
}

// The property's checker must be able to fail: fed a second completion, or one for an
// action never sent, it panics.

#[test]
#[should_panic(expected = "completed twice")]
fn checker_catches_a_double_completion() {
    let (mut world, output) = world_with_one_completion();
    world.observe(&[output]);
}

#[test]
#[should_panic(expected = "completion of an action never sent")]
fn checker_catches_a_completion_never_sent() {
    let (mut world, output) = world_with_one_completion();
    let Output::Completed(mut done) = output else {
        unreachable!()
    };
    done.action_id.push('0');
    world.observe(&[Output::Completed(done)]);
}

#[test]
#[should_panic(expected = "some actions never completed")]
fn checker_catches_an_action_that_never_completes() {
    let (mut world, _) = world_with_one_completion();
    world.issued.insert("pbx1-1-1-ffff".into());
    world.h.conn.handle_eof(world.h.now);
    let outputs = world.h.outputs();
    world.closed = true;
    world.state = State::Closed;
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    world.finish(Ending::Eof {
        deliver_first: false,
    });
}

/// A few hand-written scenarios through the same machinery, so that the property's
/// plumbing (server reads, answers, splits) is known to reach the interesting paths.
#[test]
fn scripted_scenario_reaches_lists_commands_originates_and_timeouts() {
    let mut world = World::new();
    for kind in [
        Kind::Ping,
        Kind::Command,
        Kind::QueueStatus,
        Kind::Originate,
    ] {
        world.apply(&Op::Send(kind));
    }
    world.apply(&Op::ServerReads);
    assert_eq!(world.unanswered.len(), 4);
    // Command with 30 lines: over 1024 bytes, discarded.
    world.apply(&Op::Answer {
        pick: 1,
        variant: 0,
        n: 30,
    });
    // List with 6 items: over the cap of 4.
    world.apply(&Op::Answer {
        pick: 1,
        variant: 0,
        n: 6,
    });
    // Originate without its event.
    world.apply(&Op::Answer {
        pick: 1,
        variant: 2,
        n: 0,
    });
    world.apply(&Op::Deliver(vec![7; 2000]));
    assert!(world.inbound.is_empty());
    assert_eq!(world.completed.len(), 2);
    world.apply(&Op::Advance(59_000));
    world.apply(&Op::Advance(59_000));
    assert_eq!(world.completed.len(), 4, "Ping and Originate timed out");
    world.finish(Ending::Close);
}
