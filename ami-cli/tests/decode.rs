//! `ami decode`, run as a process on the real Asterisk 22 capture and on small inputs.
//!
//! The expected counts are derived here without the parser: the capture (every line
//! ends `\r\n`, no bare `\n`, no malformed line) is split on `\r\n\r\n` and each block's
//! lines are looked at directly.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const AMI: &str = env!("CARGO_BIN_EXE_ami");

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/asterisk22-capture.raw")
}

fn run(args: &[&str]) -> Output {
    Command::new(AMI).args(args).output().expect("run ami")
}

/// Runs `ami decode ARGS` with `input` on stdin; returns stdout, checking success.
fn decode_stdin(args: &[&str], input: &[u8]) -> String {
    let mut child = Command::new(AMI)
        .arg("decode")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ami");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("wait");
    writer.join().expect("writer thread").expect("write stdin");
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn stdout_of(args: &[&str]) -> Vec<u8> {
    let output = run(args);
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// What the capture holds, counted without the parser.
#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    banner: u64,
    events: u64,
    responses: u64,
    unknown: u64,
    bytes: u64,
    event_names: BTreeMap<String, u64>,
    /// Every message's headers as (key, value), in order.
    messages: Vec<Vec<(String, String)>>,
}

fn starts_with_key(line: &str, key: &str) -> bool {
    line.len() > key.len()
        && line.as_bytes()[key.len()] == b':'
        && line[..key.len()].eq_ignore_ascii_case(key)
}

fn count_independently(raw: &[u8]) -> Expected {
    let text = std::str::from_utf8(raw).expect("the capture is UTF-8");
    assert!(
        !text.replace("\r\n", "").contains('\n'),
        "the capture has only CRLF line ends"
    );
    let mut expected = Expected {
        bytes: raw.len() as u64,
        ..Expected::default()
    };
    let (first, mut rest) = text.split_once("\r\n").expect("a first line");
    if first.contains(':') {
        rest = text;
    } else {
        expected.banner = 1;
    }
    let rest = rest
        .strip_suffix("\r\n\r\n")
        .expect("the capture ends with a blank line");
    for block in rest.split("\r\n\r\n") {
        assert!(!block.is_empty(), "no empty messages in the capture");
        let lines: Vec<&str> = block.split("\r\n").collect();
        if let Some(event) = lines.iter().find(|line| starts_with_key(line, "Event")) {
            expected.events += 1;
            let name = event["Event:".len()..].trim_start_matches([' ', '\t']);
            *expected.event_names.entry(name.to_owned()).or_default() += 1;
        } else if lines.iter().any(|line| starts_with_key(line, "Response")) {
            expected.responses += 1;
        } else {
            expected.unknown += 1;
        }
        let headers = lines
            .iter()
            .map(|line| {
                let (key, value) = line.split_once(':').expect("every line is a header");
                (
                    key.to_owned(),
                    value.trim_start_matches([' ', '\t']).to_owned(),
                )
            })
            .collect();
        expected.messages.push(headers);
    }
    expected
}

#[test]
fn fixture_counts_match_an_independent_count() {
    let raw = std::fs::read(fixture()).expect("read fixture");
    let expected = count_independently(&raw);
    // Also pinned, so that a change to the fixture or to the counting shows up here.
    assert_eq!(
        (
            expected.banner,
            expected.events,
            expected.responses,
            expected.unknown,
            expected.bytes
        ),
        (1, 18066, 15, 0, 7_138_513)
    );
    assert_eq!(expected.event_names["Newexten"], 12008);
    assert_eq!(expected.event_names["UserEvent"], 3000);
    assert_eq!(expected.event_names["VarSet"], 3010);

    let summary: Value = serde_json::from_slice(&stdout_of(&[
        "decode",
        "--summary",
        fixture().to_str().expect("utf-8 path"),
    ]))
    .expect("summary is JSON");
    let names: BTreeMap<String, u64> = summary["event_names"]
        .as_object()
        .expect("event_names object")
        .iter()
        .map(|(name, count)| (name.clone(), count.as_u64().expect("count")))
        .collect();
    assert_eq!(summary["banner"], expected.banner);
    assert_eq!(summary["events"], expected.events);
    assert_eq!(summary["responses"], expected.responses);
    assert_eq!(summary["unknown"], expected.unknown);
    assert_eq!(summary["errors"], 0);
    assert_eq!(summary["bytes"], expected.bytes);
    assert_eq!(names, expected.event_names);
    let keys: Vec<&str> = summary
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "banner",
            "events",
            "responses",
            "unknown",
            "errors",
            "bytes",
            "event_names"
        ]
    );
}

#[test]
fn fixture_lines_match_the_capture_for_every_chunk_size() {
    let path = fixture();
    let path = path.to_str().expect("utf-8 path");
    let reference = stdout_of(&["decode", path]);
    for size in ["1", "7", "4096", "65536"] {
        let output = stdout_of(&["decode", "--chunk-size", size, path]);
        assert!(
            output == reference,
            "--chunk-size {size} changes the output"
        );
    }

    let raw = std::fs::read(fixture()).expect("read fixture");
    let expected = count_independently(&raw);
    let text = String::from_utf8(reference).expect("utf-8 output");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + expected.messages.len());
    assert_eq!(
        lines[0],
        r#"{"type":"banner","text":"Asterisk Call Manager/11.0.0"}"#
    );
    assert_eq!(
        lines[1],
        r#"{"type":"response","response":"Success","action_id":"L-1","headers":[["Response","Success"],["ActionID","L-1"],["Message","Authentication accepted"]]}"#
    );
    assert_eq!(
        lines[2],
        r#"{"type":"event","name":"FullyBooted","headers":[["Event","FullyBooted"],["Privilege","system,all"],["Uptime","648"],["LastReload","648"],["Status","Fully Booted"]]}"#
    );
    // The last message: Logoff's Goodbye.
    assert_eq!(
        *lines.last().expect("a line"),
        r#"{"type":"response","response":"Goodbye","action_id":"X-1","headers":[["Response","Goodbye"],["ActionID","X-1"],["Message","Thanks for all the fish."]]}"#
    );

    // Every message's headers, in wire order and case, against the capture's blocks.
    let mut events = 0;
    let mut responses = 0;
    for (line, headers) in lines[1..].iter().zip(&expected.messages) {
        let value: Value = serde_json::from_str(line).expect("JSON line");
        let decoded: Vec<(String, String)> = value["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .map(|pair| {
                (
                    pair[0].as_str().expect("key").to_owned(),
                    pair[1].as_str().expect("value").to_owned(),
                )
            })
            .collect();
        assert_eq!(&decoded, headers, "{line}");
        match value["type"].as_str() {
            Some("event") => events += 1,
            Some("response") => responses += 1,
            other => panic!("unexpected type {other:?} in {line}"),
        }
    }
    assert_eq!((events, responses), (expected.events, expected.responses));
}

#[test]
fn originate_response_is_an_event() {
    // PROTOCOL-NOTES 15: it carries `Response:` too.
    let out = decode_stdin(
        &[],
        b"Event: OriginateResponse\r\nActionID: O-1\r\nResponse: Failure\r\n\r\n",
    );
    assert_eq!(
        out,
        "{\"type\":\"event\",\"name\":\"OriginateResponse\",\"headers\":[[\"Event\",\"OriginateResponse\"],\
         [\"ActionID\",\"O-1\"],[\"Response\",\"Failure\"]]}\n"
    );
}

#[test]
fn legacy_follows_has_output() {
    let input = b"Asterisk Call Manager/1.1\r\nResponse: Follows\r\nPrivilege: Command\r\nActionID: c1\r\n\
                  Channel              Location\r\n\r\n0 active channels\r\n--END COMMAND--\r\n\r\n";
    for size in ["1", "5", "65536"] {
        let out = decode_stdin(&["--chunk-size", size], input);
        assert_eq!(
            out,
            "{\"type\":\"banner\",\"text\":\"Asterisk Call Manager/1.1\"}\n\
             {\"type\":\"response\",\"response\":\"Follows\",\"action_id\":\"c1\",\"headers\":\
             [[\"Response\",\"Follows\"],[\"Privilege\",\"Command\"],[\"ActionID\",\"c1\"]],\
             \"output\":[\"Channel              Location\",\"\",\"0 active channels\"]}\n",
            "--chunk-size {size}"
        );
    }
}

#[test]
fn modern_command_output_has_no_output_key() {
    let out = decode_stdin(
        &[],
        b"Response: Success\r\nMessage: Command output follows\r\nOutput: a\r\n\r\n",
    );
    assert_eq!(
        out,
        "{\"type\":\"response\",\"response\":\"Success\",\"action_id\":null,\"headers\":\
         [[\"Response\",\"Success\"],[\"Message\",\"Command output follows\"],[\"Output\",\"a\"]]}\n"
    );
}

#[test]
fn unknown_message() {
    let out = decode_stdin(&[], b"Ping: Pong\r\nTimestamp: 1.5 \r\n\r\n");
    assert_eq!(
        out,
        "{\"type\":\"unknown\",\"headers\":[[\"Ping\",\"Pong\"],[\"Timestamp\",\"1.5 \"]]}\n"
    );
}

#[test]
fn error_lines() {
    // A malformed line discards its message (22 bytes, blank line included), parsing
    // resumes; then the input ends inside a message (10 bytes).
    let out = decode_stdin(
        &["--chunk-size", "2"],
        b"Event: A\r\nno colon\r\n\r\nEvent: B\r\n\r\nEvent: C\r\n",
    );
    assert_eq!(
        out,
        "{\"type\":\"error\",\"error\":\"malformed_line\",\"discarded_bytes\":22}\n\
         {\"type\":\"event\",\"name\":\"B\",\"headers\":[[\"Event\",\"B\"]]}\n\
         {\"type\":\"error\",\"error\":\"truncated\",\"discarded_bytes\":10}\n"
    );
    // A message over the 64 KiB frame limit.
    let mut big = b"Event: Big\r\nData: ".to_vec();
    big.extend(std::iter::repeat_n(b'x', 70_000));
    big.extend_from_slice(b"\r\n\r\nEvent: After\r\n\r\n");
    let out = decode_stdin(&[], &big);
    assert_eq!(
        out,
        format!(
            "{{\"type\":\"error\",\"error\":\"frame_too_large\",\"discarded_bytes\":{}}}\n\
             {{\"type\":\"event\",\"name\":\"After\",\"headers\":[[\"Event\",\"After\"]]}}\n",
            big.len() - "Event: After\r\n\r\n".len()
        )
    );
}

#[test]
fn summary_from_stdin_counts_errors_and_bytes() {
    let input = b"Event: A\r\n\r\nbad\r\n\r\nResponse: Error\r\n\r\nX: y\r\n\r\nEvent: A\r\n";
    let out = decode_stdin(&["--summary", "--chunk-size", "3"], input);
    assert_eq!(
        out,
        format!(
            "{{\"banner\":0,\"events\":1,\"responses\":1,\"unknown\":1,\"errors\":2,\"bytes\":{},\
             \"event_names\":{{\"A\":1}}}}\n",
            input.len()
        )
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["decode", "--chunk-size", "0"][..],
        &["decode", "--chunk-size", "x"],
        &["decode", "a", "b"],
    ] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty());
        assert!(!output.stderr.is_empty());
    }
}

#[test]
fn missing_file_exits_1_with_a_message() {
    let output = run(&["decode", "/nonexistent/capture.raw"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot open /nonexistent/capture.raw"),
        "{stderr}"
    );
}

#[test]
fn closed_stdout_ends_quietly() {
    let mut child = Command::new(AMI)
        .args(["decode", fixture().to_str().expect("utf-8 path")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ami");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    assert!(first.starts_with(r#"{"type":"banner""#), "{first}");
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    assert_eq!(stderr, "");
}
