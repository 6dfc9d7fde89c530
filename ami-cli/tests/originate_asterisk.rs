//! `ami originate` against the real Asterisk 22 (instance `a`): calls paced by the
//! server's `max_calls_per_second` and `max_concurrent_calls`, as Asterisk saw them
//! (the `Newchannel` and `Hangup` of each, read by a session of the test's own).

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use support::{ChannelWatch, Seen, sandbox_config, wait_until};

static TURN: Mutex<()> = Mutex::new(());

/// One test at a time: the concurrency limit counts every call of the server.
fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `ami originate ARGS` with a config whose server has `pacing` lines; returns
/// the exit code and the call records.
fn originate(pacing: &str, args: &[&str]) -> (Option<i32>, Vec<serde_json::Value>) {
    let config = sandbox_config(pacing);
    let output = Command::new(env!("CARGO_BIN_EXE_ami"))
        .args(["originate", "--config"])
        .arg(&config)
        .args(args)
        .output()
        .unwrap();
    let records = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (output.status.code(), records)
}

/// The `Newchannel`s of the calls in `records` (their first channels).
fn first_channels<'a>(seen: &'a [Seen], records: &[serde_json::Value]) -> Vec<&'a Seen> {
    let ids: HashSet<&str> = records
        .iter()
        .map(|r| r["uniqueid"].as_str().unwrap())
        .collect();
    seen.iter()
        .filter(|s| s.event == "Newchannel" && ids.contains(s.uniqueid.as_str()))
        .collect()
}

#[test]
fn twenty_calls_at_five_per_second_take_four_seconds() {
    let _turn = turn();
    let watch = ChannelWatch::start();
    let (code, records) = originate(
        "max_calls_per_second = 5",
        &[
            "Local/answer@test",
            "--app",
            "Wait",
            "--data",
            "1",
            "--count",
            "20",
        ],
    );
    assert_eq!(code, Some(0));
    assert_eq!(records.len(), 20);
    assert!(
        records.iter().all(|r| r["outcome"] == "answered"),
        "{records:?}"
    );
    // Asterisk's Newchannels of the 20 calls.
    let seen = watch.seen();
    let firsts = first_channels(&seen, &records);
    assert_eq!(firsts.len(), 20);
    let spread = firsts.last().unwrap().at - firsts[0].at;
    eprintln!("20 calls at 5/s: Newchannels over {spread:?}");
    // 19 gaps of 200 ms: 3.8 s as Asterisk made them; the watch reads them in ticks
    // of its own, which may shorten what it measures by a little.
    assert!(spread >= Duration::from_millis(3_750), "{spread:?}");
}

#[test]
fn no_more_than_three_calls_are_up_at_once() {
    let _turn = turn();
    let watch = ChannelWatch::start();
    // Calls of 3 s: the far end answers and stays; ours waits 3 s and hangs up.
    let (code, records) = originate(
        "max_concurrent_calls = 3",
        &[
            "Local/wait@test",
            "--app",
            "Wait",
            "--data",
            "3",
            "--count",
            "7",
        ],
    );
    assert_eq!(code, Some(0));
    assert_eq!(records.len(), 7);
    let calls: HashSet<String> = records
        .iter()
        .map(|r| r["linkedid"].as_str().unwrap().to_owned())
        .collect();
    // `originate` ends when its own session has seen every call end; the watch reads
    // the same Hangups on a session of its own, maybe later on a busy machine.
    wait_until(
        Duration::from_secs(10),
        "the watch saw every channel of the calls hang up",
        || replay_calls(&watch, &calls).1.is_empty(),
    );
    let (most, _) = replay_calls(&watch, &calls);
    eprintln!("7 calls of 3 s, max_concurrent_calls 3: at most {most} up at once");
    assert_eq!(most, 3);
}

/// Replays what `watch` saw of the channels of `calls` (by `Linkedid`): the most calls
/// with a channel up at once, and the channels still up at the end.
fn replay_calls(watch: &ChannelWatch, calls: &HashSet<String>) -> (usize, Vec<String>) {
    let mut up: Vec<(String, String)> = Vec::new();
    let mut most = 0;
    for s in watch.seen().iter().filter(|s| calls.contains(&s.linkedid)) {
        match s.event {
            "Newchannel" => up.push((s.uniqueid.clone(), s.linkedid.clone())),
            _ => up.retain(|(u, _)| *u != s.uniqueid),
        }
        let live: HashSet<&String> = up.iter().map(|(_, l)| l).collect();
        most = most.max(live.len());
    }
    (most, up.into_iter().map(|(uniqueid, _)| uniqueid).collect())
}
