//! `ami calls` against the real Asterisk 22 (instance `a`): calls answered, busy,
//! unanswered, congested, rejected (`Hangup(21)`), and one we hang up ourselves while
//! it rings, each end in one `call` record with the outcome and cause Asterisk gave.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ami_mio::{Driver, ServerSpec};
use ami_proto::action::EventMask;
use ami_proto::{Action, Config};
use ami_tests::asterisk::{asterisk, unique_id};
use support::{Ami, sandbox_config};

/// The test's own session, to originate and hang up.
fn session() -> (Driver, ami_mio::ServerId) {
    let mut driver = Driver::new().unwrap();
    let mut config = Config::new("caller", "admin", asterisk().secret.clone());
    config.events = EventMask::Off;
    let id = driver
        .add_server(ServerSpec::new(config, asterisk().endpoint()))
        .unwrap();
    driver.connect(id).unwrap();
    driver.wait_ready(id, Duration::from_secs(15)).unwrap();
    (driver, id)
}

#[test]
fn each_call_ends_in_one_record_with_its_outcome_and_cause() {
    let config = sandbox_config("events = \"call\"");
    let mut calls = Ami::start(
        [
            "calls".as_ref(),
            "--all".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ],
        &[],
    );
    let (tx, records) = mpsc::channel::<serde_json::Value>();
    let stdout = calls.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let record: serde_json::Value = serde_json::from_str(&line).unwrap();
            if record["type"] == "call" && tx.send(record).is_err() {
                return;
            }
        }
    });
    calls.wait_healthy(&["pbx"]);
    let (mut driver, id) = session();
    let wait = |driver: &mut Driver, action: Action| {
        driver
            .send_and_wait(id, action)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    // An extension that rejects (the sandbox's dialplan has none): Hangup(21).
    wait(
        &mut driver,
        Action::new("DialplanExtensionAdd")
            .header("Context", "test")
            .header("Extension", "reject")
            .header("Priority", "1")
            .header("Application", "Hangup")
            .header("ApplicationData", "21")
            .header("Replace", "yes"),
    );
    // One that rings until hung up, under a name of its own.
    for (priority, app, data) in [("1", "Ringing", ""), ("2", "Wait", "30")] {
        wait(
            &mut driver,
            Action::new("DialplanExtensionAdd")
                .header("Context", "test")
                .header("Extension", "ringing")
                .header("Priority", priority)
                .header("Application", app)
                .header("ApplicationData", data)
                .header("Replace", "yes"),
        );
    }
    let originate = |exten: &str, timeout_ms: u64, channel_id: &str| {
        Action::new("Originate")
            .header("Channel", format!("Local/{exten}@test"))
            .header("Application", "Wait")
            .header("Data", "1")
            .header("Async", "true")
            .header("Timeout", timeout_ms.to_string())
            .header("ChannelId", channel_id)
    };
    for (exten, timeout) in [
        ("answer", 5000),
        ("busy", 5000),
        ("congestion", 5000),
        ("noanswer", 2000),
        ("reject", 5000),
    ] {
        driver
            .send(id, originate(exten, timeout, &unique_id(exten)), |_| {})
            .unwrap();
    }
    // One more that rings until we hang it up.
    let ours = unique_id("ours");
    driver
        .send(id, originate("ringing", 20_000, &ours), |_| {})
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(800) {
        driver.tick_all(Duration::from_millis(20));
    }
    wait(
        &mut driver,
        Action::new("Hangup")
            .header("Channel", "/^Local\\/ringing@test-/")
            .header("Cause", "16"),
    );
    let mut by_exten: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while by_exten.values().map(Vec::len).sum::<usize>() < 6 {
        let left = deadline.saturating_duration_since(Instant::now());
        let record = records
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("6 call records within 30 s: {by_exten:?}"));
        let channel = record["channel"].as_str().unwrap_or_default();
        let exten = channel
            .strip_prefix("Local/")
            .and_then(|c| c.split('@').next())
            .unwrap_or(channel)
            .to_owned();
        by_exten.entry(exten).or_default().push(record);
        driver.tick_all(Duration::ZERO);
    }
    eprintln!("{by_exten:#?}");
    let one = |exten: &str| by_exten[exten][0].clone();
    let outcome = |r: &serde_json::Value| (r["outcome"].clone(), r["cause"].clone());
    assert_eq!(outcome(&one("answer")).0, "answered");
    assert!(one("answer")["talk_ms"].as_u64().unwrap() > 0);
    assert!(one("answer")["answered_at"].is_f64());
    assert_eq!(outcome(&one("busy")), ("busy".into(), 17.into()));
    assert_eq!(
        outcome(&one("congestion")),
        ("congestion".into(), 34.into())
    );
    assert_eq!(outcome(&one("reject")), ("rejected".into(), 21.into()));
    // Ours was cancelled while ringing; the other rang out.
    assert_eq!(one("ringing")["uniqueid"], ours.as_str());
    assert_eq!(outcome(&one("ringing")).0, "cancelled", "{by_exten:?}");
    assert_eq!(outcome(&one("noanswer")), ("no_answer".into(), 19.into()));
    assert_eq!(one("noanswer")["answered_at"], serde_json::Value::Null);
    calls.terminate();
    let (code, _) = calls.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0));
}
