//! The memory budget: what a connection charges, what happens at the limit, and that
//! the limit holds (`used() <= limit()` after every input) across connections that
//! share one budget and across the events and completions the application holds.

// The simulated clock needs one real starting instant; ami-proto bans `Instant::now`
// (clippy.toml) because the library itself must never read a clock.
#![allow(clippy::disallowed_methods)]

mod support;

use ami_proto::action;
use ami_proto::budget::ACTION_OVERHEAD;
use ami_proto::{
    ActionError, Config, Event, Limits, MemoryBudget, Output, ParseError, Parsed, Parser,
    SendError, State,
};
use proptest::prelude::*;
use support::*;

/// A quiet configuration for `key` charging `budget`, with room in the queue for any
/// flood: only the budget bounds it.
fn config_with(key: &str, budget: &MemoryBudget) -> Config {
    let mut config = quiet_config();
    config.server_key = key.into();
    config.budget = budget.clone();
    config.event_queue_capacity = 10_000_000;
    config
}

/// An event of about `size` bytes carrying its sequence number.
fn big_event(seq: u64, size: usize) -> String {
    let head = format!("Event: Big\r\nSeq: {seq}\r\nData: ");
    let fill = size.saturating_sub(head.len() + 4).max(1);
    format!("{head}{}\r\n\r\n", "x".repeat(fill))
}

fn seq(event: &Event) -> u64 {
    event.get("Seq").unwrap().parse().unwrap()
}

/// Takes every output of `h`; events are kept in `held` (if given) or dropped.
fn drain(h: &mut Harness, mut held: Option<&mut Vec<Event>>) -> (Vec<u64>, Vec<Output>) {
    let mut seqs = Vec::new();
    let mut others = Vec::new();
    while let Some(output) = h.conn.poll() {
        match output {
            Output::Event(event) => {
                seqs.push(seq(&event));
                if let Some(held) = held.as_deref_mut() {
                    held.push(event);
                }
            }
            other => others.push(other),
        }
    }
    (seqs, others)
}

#[test]
fn a_flood_of_large_events_stays_within_a_small_budget() {
    let budget = MemoryBudget::new(256 * 1024);
    let mut h = Harness::logged_in(config_with("pbx1", &budget));
    assert_eq!(budget.used(), 0, "the login was written and answered");

    // 3,000 events of 4 KiB (12 MB) against a 256 KiB budget, three per read, cut at
    // odd places so that the parser holds a part of one after most reads; the
    // application polls a little after every tenth read.
    let stream: String = (0..3000).map(|i| big_event(i, 4096)).collect();
    let bytes = stream.as_bytes();
    let mut delivered = Vec::new();
    for (read, piece) in bytes.chunks(3 * 4096 + 1000).enumerate() {
        h.reply_bytes(piece);
        assert!(
            budget.used() <= budget.limit(),
            "{} > {} after read {read}",
            budget.used(),
            budget.limit()
        );
        if read % 10 == 9 {
            for _ in 0..5 {
                match h.conn.poll() {
                    Some(Output::Event(event)) => delivered.push(seq(&event)),
                    Some(other) => panic!("unexpected {other:?}"),
                    None => break,
                }
            }
        }
    }
    let stats = h.conn.stats();
    assert!(stats.events.dropped_memory > 0, "{stats:?}");
    assert_eq!(stats.events.dropped, 0, "the capacity never ran out");
    let (rest, others) = drain(&mut h, None);
    assert!(others.is_empty(), "{others:?}");
    delivered.extend(&rest);
    // Each event was delivered or dropped for memory, once; the oldest went first, so
    // what was delivered is in order and ends with the newest.
    assert_eq!(delivered.len() as u64 + stats.events.dropped_memory, 3000);
    assert!(delivered.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(delivered.last(), Some(&2999));
    // Queued = delivered + dropped out of the queue; the rest of the memory drops
    // were events dropped on arrival, never queued.
    assert!(stats.events.queued >= delivered.len() as u64);
    assert!(3000 - stats.events.queued <= stats.events.dropped_memory);
    assert_eq!(
        budget.used(),
        0,
        "every event was dropped, nothing is buffered"
    );
    drop(h);
    assert_eq!(budget.used(), 0);
}

/// The charge of an event made by [`big_event`] with `size` bytes of text: the text
/// but its final blank line, its three headers' table (8 bytes each) and the fixed
/// overhead.
fn charge_of(size: usize) -> usize {
    size - 2 + 3 * 8 + ami_proto::budget::MESSAGE_OVERHEAD
}

/// Fills what is left of `budget` with events to `h`'s queue, to the byte if it can.
fn fill(h: &mut Harness, budget: &MemoryBudget, seq: u64) {
    let available = budget.available();
    if available >= charge_of(64) {
        let text = big_event(seq, available + 2 - charge_of(2));
        assert_eq!(charge_of(text.len()), available);
        h.reply(&text);
        assert_eq!(budget.available(), 0);
    }
}

#[test]
fn a_send_at_the_limit_is_refused_and_accepted_once_events_are_dropped() {
    let budget = MemoryBudget::new(64 * 1024);
    let mut h = Harness::logged_in(config_with("pbx1", &budget));
    for i in 0..40 {
        h.reply(&big_event(i, 2048));
    }
    fill(&mut h, &budget, 40);
    let refused = h.conn.send(h.now, action::Ping);
    assert_eq!(
        refused,
        Err(SendError::MemoryLimit {
            used: budget.used(),
            limit: 64 * 1024
        })
    );
    assert_eq!(h.conn.stats().refused, 1);
    assert_eq!(h.conn.pending_actions(), 0);
    assert_eq!(h.written(), "", "a refused action is never written");

    // The application polls every event and keeps them: still charged, still refused.
    let mut held = Vec::new();
    drain(&mut h, Some(&mut held));
    assert_eq!(budget.available(), 0);
    assert!(matches!(
        h.conn.send(h.now, action::Ping),
        Err(SendError::MemoryLimit { .. })
    ));
    // Letting go of one is enough for a Ping.
    held.truncate(held.len() - 1);
    let id = h.conn.send(h.now, action::Ping).unwrap();
    h.written();
    h.reply(&success(&id, "Ping: Pong\r\n"));
    let done = h.one_completion();
    assert_eq!(
        done.result.as_ref().unwrap().response.get("Ping"),
        Some("Pong")
    );
    assert_eq!(h.conn.stats().refused, 2);
    drop((held, done));
    drop(h);
    assert_eq!(budget.used(), 0);
}

#[test]
fn two_connections_share_one_cap() {
    let budget = MemoryBudget::new(64 * 1024);
    let mut a = Harness::logged_in(config_with("pbx1", &budget));
    let mut b = Harness::logged_in(config_with("pbx2", &budget));

    // B's flood fills the budget, dropping B's own oldest events; nobody polls B.
    for i in 0..100 {
        b.reply(&big_event(i, 2048));
        assert!(budget.used() <= budget.limit());
    }
    fill(&mut b, &budget, 100);
    let b_dropped = b.conn.stats().events.dropped_memory;
    assert!(b_dropped > 0);

    // A's event cannot fit even with A's queue empty: it is dropped, B keeps its own.
    a.reply(&big_event(0, 512));
    assert_eq!(a.conn.stats().events.dropped_memory, 1);
    assert_eq!(a.conn.stats().events.queued, 0);
    assert_eq!(b.conn.stats().events.dropped_memory, b_dropped);
    assert!(a.conn.poll().is_none());
    // And A's actions are refused.
    assert!(matches!(
        a.conn.send(a.now, action::Ping),
        Err(SendError::MemoryLimit { .. })
    ));

    // B's application takes the events and holds them: the bytes stay charged.
    let mut held = Vec::new();
    let (seqs, _) = drain(&mut b, Some(&mut held));
    assert_eq!(seqs.last(), Some(&100), "the newest survived");
    assert_eq!(budget.available(), 0);
    let charged: usize = held.iter().map(Event::charged).sum();
    assert_eq!(charged, budget.used());
    assert!(matches!(
        a.conn.send(a.now, action::Ping),
        Err(SendError::MemoryLimit { .. })
    ));
    a.reply(&big_event(1, 512));
    assert_eq!(a.conn.stats().events.dropped_memory, 2);

    // Once B's application drops them, A works again.
    drop(held);
    assert_eq!(budget.used(), 0);
    a.reply(&big_event(2, 512));
    let (seqs, _) = drain(&mut a, None);
    assert_eq!(seqs, [2]);
    let id = a.conn.send(a.now, action::Ping).unwrap();
    a.written();
    a.reply(&success(&id, "Ping: Pong\r\n"));
    assert!(a.one_completion().result.is_ok());
    drop((a, b));
    assert_eq!(budget.used(), 0);
}

#[test]
fn an_event_list_the_budget_cannot_take_fails_its_action_at_once() {
    let budget = MemoryBudget::new(32 * 1024);
    let mut h = Harness::logged_in(config_with("pbx1", &budget));
    let id = h.conn.send(h.now, action::QueueStatus::default()).unwrap();
    h.written();
    assert_eq!(budget.used(), ACTION_OVERHEAD);
    h.reply(&success(&id, "EventList: start\r\n"));
    let item = |i: usize| {
        format!(
            "Event: QueueMember\r\nActionID: {id}\r\nName: m{i}\r\nData: {}\r\n\r\n",
            "y".repeat(1024)
        )
    };
    let mut failed_at = None;
    for i in 0..100 {
        h.reply(&item(i));
        assert!(budget.used() <= budget.limit());
        if h.conn.has_pending_outputs() {
            failed_at = Some(i);
            break;
        }
    }
    let failed_at = failed_at.expect("the list outgrew the budget");
    assert!(failed_at > 10, "{failed_at} items fit");
    // The action failed at once, before the list ended; what it had collected is
    // given back, only its completion is held.
    assert_eq!(h.conn.pending_actions(), 0);
    assert_eq!(budget.used(), ACTION_OVERHEAD);
    let done = h.one_completion();
    assert_eq!(done.action_id, id);
    assert!(
        matches!(
            failure(&done),
            ActionError::MemoryLimit { limit, .. } if *limit == 32 * 1024
        ),
        "{done:?}"
    );
    assert_eq!(done.charged(), ACTION_OVERHEAD);
    // The rest of the list is counted as late, never delivered as events.
    for i in failed_at + 1..failed_at + 4 {
        h.reply(&item(i));
    }
    h.reply(&format!(
        "Event: QueueStatusComplete\r\nActionID: {id}\r\nEventList: Complete\r\n\r\n"
    ));
    assert_eq!(h.conn.stats().late_replies, 4);
    assert_eq!(h.conn.stats().events.queued, 0);
    assert!(h.outputs().is_empty());
    assert_eq!(h.conn.stats().failed, 1);
    drop(done);
    assert_eq!(budget.used(), 0);
}

#[test]
fn a_completion_holds_its_charge_until_it_is_dropped() {
    let budget = MemoryBudget::new(1024 * 1024);
    let mut h = Harness::logged_in(config_with("pbx1", &budget));
    let id = h.conn.send(h.now, action::QueueStatus::default()).unwrap();
    h.written();
    h.reply(&success(&id, "EventList: start\r\n"));
    for i in 0..3 {
        h.reply(&format!(
            "Event: QueueMember\r\nActionID: {id}\r\nName: m{i}\r\n\r\n"
        ));
    }
    h.reply(&format!(
        "Event: QueueStatusComplete\r\nActionID: {id}\r\nEventList: Complete\r\n\r\n"
    ));
    let waiting = budget.used();
    assert!(waiting > ACTION_OVERHEAD + 5 * 128, "{waiting}");
    let done = h.one_completion();
    assert_eq!(done.charged(), waiting, "the completion carries it all");
    assert_eq!(done.result.as_ref().unwrap().events.len(), 3);
    let copy = done.clone();
    assert_eq!(copy, done);
    assert_eq!(copy.charged(), 0, "a clone holds no charge");
    assert_eq!(budget.used(), waiting);
    drop(done);
    assert_eq!(budget.used(), 0);
    drop(copy);
    assert_eq!(budget.used(), 0);
}

#[test]
fn input_the_budget_cannot_hold_is_discarded_and_fails_its_action() {
    let budget = MemoryBudget::new(2048);
    let mut h = Harness::logged_in(config_with("pbx1", &budget));
    let id = h
        .conn
        .send(h.now, action::Command::new("core show help"))
        .unwrap();
    h.written();
    // 3 KiB of command output, cut before its end: more than the budget can hold.
    let body: String = (0..150)
        .map(|i| format!("Output: line {i:03}\r\n"))
        .collect();
    let head = format!("Response: Success\r\nActionID: {id}\r\n{body}");
    assert!(head.len() > 2048);
    h.reply(&head);
    assert_eq!(h.conn.buffered_input(), 0, "dropped at once");
    assert!(budget.used() <= budget.limit());
    assert!(h.outputs().is_empty(), "reported when the message ends");
    h.reply("Output: last\r\n\r\nEvent: After\r\nSeq: 1\r\n\r\n");
    let outputs = h.outputs();
    let error = ParseError::MemoryLimit {
        used: ACTION_OVERHEAD,
        limit: 2048,
    };
    let [
        Output::Completed(done),
        Output::Discarded(discard),
        Output::Event(after),
    ] = &outputs[..]
    else {
        panic!("expected the failure, the discard and the next event: {outputs:?}");
    };
    assert_eq!(done.result, Err(ActionError::Discarded(error.clone())));
    assert_eq!(discard.error, error);
    assert_eq!(discard.action_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        discard.bytes,
        (head.len() + "Output: last\r\n\r\n".len()) as u64
    );
    assert_eq!(after.name(), "After", "parsing goes on");
    drop(outputs);
    assert_eq!(budget.used(), 0);
}

#[test]
fn the_parser_gives_up_a_held_message_up_to_its_end() {
    let mut parser = Parser::new(Limits::default());
    let mut items = Vec::new();
    let first = b"Event: Cut\r\nActionID: x-1\r\nData: abc";
    parser.feed(first, &mut |item| items.push(item));
    assert_eq!(parser.buffered(), first.len());
    let error = ParseError::MemoryLimit { used: 1, limit: 2 };
    parser.discard_held(error.clone());
    assert_eq!(parser.buffered(), 0);
    parser.discard_held(error.clone());
    let rest = b"def\r\nMore: 1\r\n\r\nEvent: Next\r\n\r\n";
    parser.feed(rest, &mut |item| items.push(item));
    let [Parsed::Discarded(discard), Parsed::Message(next)] = &items[..] else {
        panic!("expected one discard, then the next message: {items:?}");
    };
    assert_eq!(
        discard,
        &ami_proto::Discard {
            error,
            bytes: (first.len() + rest.len() - "Event: Next\r\n\r\n".len()) as u64,
            action_id: Some("x-1".into()),
        }
    );
    assert_eq!(next.event_name(), Some("Next"));
}

#[test]
fn the_connections_own_actions_work_without_any_budget() {
    let budget = MemoryBudget::new(0);
    let mut cfg = config();
    cfg.budget = budget.clone();
    let mut h = Harness::new(cfg);
    h.conn.handle_connected(h.now);
    h.reply(BANNER);
    let login = h.written_actions();
    assert_eq!(
        login[0].name, "Login",
        "written although nothing can be charged"
    );
    assert_eq!(budget.used(), 0);
    // The reply cut in pieces: its start is held although the budget is empty.
    let reply = success(&login[0].id, "Message: Authentication accepted\r\n");
    for piece in reply.as_bytes().chunks(7) {
        h.reply_bytes(piece);
    }
    assert_eq!(h.conn.state(), State::Healthy);
    assert_eq!(budget.used(), 0);
    // The heartbeat too.
    h.outputs();
    h.jump();
    let ping = h.written_actions();
    assert_eq!(ping[0].name, "Ping");
    let pong = success(&ping[0].id, "Ping: Pong\r\n");
    for piece in pong.as_bytes().chunks(5) {
        h.reply_bytes(piece);
    }
    assert_eq!(h.conn.stats().heartbeat_misses, 0);
    assert_eq!(h.conn.state(), State::Healthy);
    // The application gets nothing: its actions are refused, its events dropped.
    assert_eq!(
        h.conn.send(h.now, action::Ping),
        Err(SendError::MemoryLimit { used: 0, limit: 0 })
    );
    h.reply("Event: Hangup\r\nChannel: A\r\n\r\n");
    assert_eq!(h.conn.stats().events.dropped_memory, 1);
    // And the Logoff goes out.
    h.conn.close(h.now);
    assert_eq!(h.written_actions()[0].name, "Logoff");
    assert_eq!(budget.used(), 0);
}

/// One step of the property test: two connections share one budget.
#[derive(Debug, Clone)]
enum Op {
    /// The server sends connection `to` an event of `size` bytes, cut at `cut`
    /// (per mille of its length) into two reads.
    Event { to: usize, size: usize, cut: u16 },
    /// The application polls up to `n` outputs of `from`, keeping or dropping them.
    Poll { from: usize, n: usize, keep: bool },
    /// The application drops the oldest `n` of what it keeps.
    Release(usize),
    /// The application sends a Ping on `to`.
    Send(usize),
    /// The socket of `to` takes what it has to write, and the server answers.
    Answer(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..2usize, 20..9000usize, 0..1000u16).prop_map(|(to, size, cut)| Op::Event { to, size, cut }),
        3 => (0..2usize, 1..50usize, any::<bool>()).prop_map(|(from, n, keep)| Op::Poll { from, n, keep }),
        2 => (1..50usize).prop_map(Op::Release),
        2 => (0..2usize).prop_map(Op::Send),
        2 => (0..2usize).prop_map(Op::Answer),
    ]
}

/// What the application keeps.
#[derive(Default)]
struct Kept {
    events: Vec<Event>,
    completions: Vec<ami_proto::Completion>,
}

impl Kept {
    fn charged(&self) -> usize {
        self.events.iter().map(Event::charged).sum::<usize>()
            + self.completions.iter().map(|c| c.charged()).sum::<usize>()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever arrives and whatever the application keeps: the budget is never
    /// exceeded, what the application keeps is part of it, every event sent is
    /// delivered, dropped for memory or still queued, and everything is given back once
    /// it is all dropped.
    #[test]
    fn the_budget_holds(limit in 2048..200_000usize, ops in proptest::collection::vec(op(), 1..300)) {
        let budget = MemoryBudget::new(limit);
        let mut conns = [
            Harness::logged_in(config_with("pbx1", &budget)),
            Harness::logged_in(config_with("pbx2", &budget)),
        ];
        let mut sent = [0u64; 2];
        let mut delivered = [0u64; 2];
        let mut kept = Kept::default();
        let mut to_answer: [Vec<String>; 2] = Default::default();
        for op in ops {
            match op {
                Op::Event { to, size, cut } => {
                    let text = big_event(sent[to], size);
                    sent[to] += 1;
                    let at = text.len() * cut as usize / 1000;
                    conns[to].reply_bytes(&text.as_bytes()[..at]);
                    prop_assert!(budget.used() <= limit);
                    conns[to].reply_bytes(&text.as_bytes()[at..]);
                }
                Op::Poll { from, n, keep } => {
                    for _ in 0..n {
                        match conns[from].conn.poll() {
                            Some(Output::Event(event)) => {
                                delivered[from] += 1;
                                if keep {
                                    kept.events.push(event);
                                }
                            }
                            Some(Output::Completed(done)) => {
                                if keep {
                                    kept.completions.push(*done);
                                }
                            }
                            // An event larger than the budget can hold, cut in two.
                            Some(Output::Discarded(discard)) => {
                                let memory = matches!(discard.error, ParseError::MemoryLimit { .. });
                                prop_assert!(memory, "{:?}", discard);
                            }
                            Some(other) => prop_assert!(false, "unexpected {other:?}"),
                            None => break,
                        }
                    }
                }
                Op::Release(n) => {
                    let n = n.min(kept.events.len());
                    kept.events.drain(..n);
                    let n = n.min(kept.completions.len());
                    kept.completions.drain(..n);
                }
                Op::Send(to) => {
                    let h = &mut conns[to];
                    match h.conn.send(h.now, action::Ping) {
                        Ok(id) => to_answer[to].push(id),
                        Err(SendError::MemoryLimit { limit: l, .. }) => prop_assert_eq!(l, limit),
                        Err(other) => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
                Op::Answer(to) => {
                    conns[to].written();
                    for id in std::mem::take(&mut to_answer[to]) {
                        conns[to].reply(&success(&id, "Ping: Pong\r\n"));
                    }
                }
            }
            prop_assert!(budget.used() <= limit, "{} > {limit} after a step", budget.used());
            prop_assert!(kept.charged() <= budget.used());
        }
        for (i, h) in conns.iter_mut().enumerate() {
            let stats = h.conn.stats();
            prop_assert_eq!(stats.events.dropped, 0);
            // Every event was delivered, dropped for memory (on arrival or out of the
            // queue), discarded while the parser held its start, or is still queued.
            let queued = h.conn.queued_events() as u64;
            prop_assert_eq!(
                sent[i],
                delivered[i] + stats.events.dropped_memory + stats.discards + queued
            );
        }
        drop(conns);
        prop_assert_eq!(budget.used(), kept.charged());
        drop(kept);
        prop_assert_eq!(budget.used(), 0);
    }
}
