//! The connection fed arbitrary bytes, time and actions: it must never panic, every
//! action must complete at most once (exactly once after the connection closed), and no
//! queue or buffer may pass its bound.
//!
//! Input: a login is scripted first; then each op byte picks an operation and takes its
//! operands from the following bytes.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ami_proto::action::{self, Action};
use ami_proto::{Config, Connection, Limits, Output};
use libfuzzer_sys::fuzz_target;

const TEMPLATES: [&str; 6] = [
    "Response: Success\r\nActionID: {id}\r\n\r\n",
    "Response: Error\r\nActionID: {id}\r\nMessage: no\r\n\r\n",
    "Response: Success\r\nActionID: {id}\r\nEventList: start\r\n\r\n",
    "Event: Item\r\nActionID: {id}\r\n\r\n",
    "Event: ItemsComplete\r\nActionID: {id}\r\nEventList: Complete\r\n\r\n",
    "Event: OriginateResponse\r\nActionID: {id}\r\nResponse: Success\r\nReason: 4\r\n\r\n",
];

fuzz_target!(|data: &[u8]| {
    let mut config = Config::new("fuzz", "admin", "secret");
    config.limits = Limits { max_frame_size: 256, max_command_output: 1024 };
    config.event_queue_capacity = 8;
    config.max_pending_actions = 16;
    config.max_list_items = 4;
    config.write_buffer_limit = 4096;
    let start = Instant::now();
    let mut now = start;
    let mut conn = Connection::new(config, 1, 1, now);
    conn.handle_connected(now);
    conn.handle_data(now, b"Asterisk Call Manager/11.0.0\r\n");
    let login = String::from_utf8_lossy(conn.poll_transmit()).into_owned();
    let login_id = login.lines().find_map(|l| l.strip_prefix("ActionID: ")).unwrap_or_default().to_owned();
    conn.advance_transmit(login.len());
    conn.handle_data(now, format!("Response: Success\r\nActionID: {login_id}\r\n\r\n").as_bytes());

    let mut sent: Vec<String> = Vec::new();
    let mut completed: HashMap<String, u32> = HashMap::new();
    let mut closed = false;
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let operand = bytes.next().unwrap_or(0);
        match op % 8 {
            0 => {
                let len = usize::from(operand);
                let chunk: Vec<u8> = bytes.by_ref().take(len).collect();
                conn.handle_data(now, &chunk);
            }
            1 => {
                now += Duration::from_millis(u64::from(operand) * 250);
                conn.handle_timeout(now);
            }
            2 => {
                let action: Action = match operand % 5 {
                    0 => action::Ping.into(),
                    1 => action::QueueStatus::default().into(),
                    2 => action::Command::new("core show uptime").into(),
                    3 => action::Originate::extension("Local/1@test", "1", "test", 1).into(),
                    _ => Action::new("UserEvent").header("UserEvent", "x"),
                };
                if let Ok(id) = conn.send(now, action) {
                    sent.push(id);
                }
            }
            3 if !sent.is_empty() => {
                let id = &sent[usize::from(operand) % sent.len()];
                let template = TEMPLATES[usize::from(bytes.next().unwrap_or(0)) % TEMPLATES.len()];
                conn.handle_data(now, template.replace("{id}", id).as_bytes());
            }
            4 => conn.handle_eof(now),
            5 => conn.close(now),
            6 => {
                let n = usize::from(operand).min(conn.poll_transmit().len());
                conn.advance_transmit(n);
            }
            _ => {
                if let Some(at) = conn.poll_timeout() {
                    now = now.max(at);
                    conn.handle_timeout(now);
                }
            }
        }
        while let Some(output) = conn.poll() {
            match output {
                Output::Completed(done) => {
                    assert!(!closed, "completion after Closed");
                    *completed.entry(done.action_id).or_default() += 1;
                }
                Output::Closed(_) => closed = true,
                _ => assert!(!closed, "output after Closed"),
            }
        }
        assert!(conn.queued_events() <= 8);
        assert!(conn.pending_actions() <= 16);
        assert!(conn.buffered_input() <= 1025);
        assert!(conn.queued_transmit() <= 4096 + 512);
    }
    for (id, count) in &completed {
        assert_eq!(*count, 1, "{id} completed {count} times");
        assert!(sent.contains(id), "{id} was never sent");
    }
    conn.handle_eof(now);
    while let Some(output) = conn.poll() {
        if let Output::Completed(done) = output {
            *completed.entry(done.action_id).or_default() += 1;
        }
    }
    for id in &sent {
        assert_eq!(completed.get(id), Some(&1), "{id} did not complete exactly once");
    }
});
