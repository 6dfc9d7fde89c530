//! `ami demo` run as a process: it must finish by itself, exit 0, and print the
//! evidence of every step (events from each node, the OriginateResponse, the killed
//! node's circuit opening, its recovery).

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The demo takes about 10 s; this leaves room for a loaded machine.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `ami demo ARGS`; returns its exit status and stdout, killing it after
/// [`LIMIT`].
fn run_demo(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ami"))
        .arg("demo")
        .args(args)
        .env_remove("AMI_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ami demo");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let err = thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).map(|_| text)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for ami demo") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            let text = out.join().expect("reader").unwrap_or_default();
            panic!("ami demo still running after {LIMIT:?}; output so far:\n{text}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().expect("stdout reader").expect("read stdout");
    let stderr = err.join().expect("stderr reader").expect("read stderr");
    (status, stdout, stderr)
}

/// The events a line `node_N streamed COUNT events so far` reports for `key`.
fn streamed(output: &str, key: &str) -> Option<u64> {
    let prefix = format!("{key} streamed ");
    output.lines().find_map(|line| {
        let rest = &line[line.find(&prefix)? + prefix.len()..];
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn assert_has(output: &str, needle: &str) {
    assert!(output.contains(needle), "missing {needle:?} in:\n{output}");
}

#[test]
fn demo_runs_every_step_and_exits_0() {
    let (status, output, stderr) = run_demo(&[]);
    assert!(status.success(), "{status:?}\n{output}\nstderr:\n{stderr}");
    for key in ["node_1", "node_2", "node_3"] {
        assert!(
            streamed(&output, key).is_some_and(|n| n > 0),
            "no events from {key}:\n{output}"
        );
        assert_has(&output, &format!("{key} health authenticating -> healthy"));
    }
    assert_has(&output, "OriginateResponse: Response=Success");
    assert_has(&output, "| Asterisk 22.10.1");
    for (n, key) in ["node_1", "node_2", "node_3", "node_1", "node_2", "node_3"]
        .iter()
        .enumerate()
    {
        assert_has(&output, &format!("Ping {} -> {key}: Pong", n + 1));
    }
    assert_has(&output, "node_2 health healthy -> reconnecting");
    assert_has(&output, "node_2 health connecting -> circuit_open");
    assert_has(&output, "routing never picked node_2 while it was down");
    assert_has(&output, "node_2 healthy again");
    assert_has(&output, "events from node_2 resumed");
    assert_has(&output, "ami_connection_status{server=\"node_2\"} 1");
    assert_has(&output, "demo passed");
    assert!(!output.contains("FAILED"), "{output}");
}

#[test]
fn demo_with_two_nodes() {
    let (status, output, stderr) = run_demo(&["--nodes", "2", "--seed", "7"]);
    assert!(status.success(), "{status:?}\n{output}\nstderr:\n{stderr}");
    assert!(!output.contains("node_3"), "{output}");
    assert_has(&output, "seed 7");
    assert_has(&output, "node_2 health connecting -> circuit_open");
    assert_has(&output, "demo passed");
}

#[test]
fn demo_refuses_other_node_counts() {
    let (status, output, _) = run_demo(&["--nodes", "4"]);
    assert_eq!(status.code(), Some(2), "{output}");
}
