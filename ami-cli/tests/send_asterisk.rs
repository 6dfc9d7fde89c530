//! `ami send` against the real Asterisk 22 (instance `a`): an async `Originate`
//! completes with its `OriginateResponse` (the one-shot session asks for the `call`
//! class it comes in; with events off it never would).

use std::process::Command;

mod support;

use support::sandbox_config;

#[test]
fn an_async_originate_completes_with_its_originate_response() {
    let config = sandbox_config("");
    let run = |exten: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_ami"))
            .args(["send", "--config"])
            .arg(&config)
            .args([
                "Originate",
                &format!("Channel=Local/{exten}@test"),
                "Application=Wait",
                "Data=1",
                "Async=true",
                "Timeout=5000",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {stdout}\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code(), json)
    };
    let header = |json: &serde_json::Value, key: &str| {
        json["events"][0]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv[0] == key)
            .map(|kv| kv[1].as_str().unwrap().to_owned())
    };
    let (code, answered) = run("answer");
    assert_eq!(code, Some(0), "{answered}");
    assert_eq!(
        answered["events"][0]["name"], "OriginateResponse",
        "{answered}"
    );
    assert_eq!(header(&answered, "Response").as_deref(), Some("Success"));
    assert_eq!(header(&answered, "Reason").as_deref(), Some("4"));
    let (code, busy) = run("busy");
    assert_eq!(
        code,
        Some(0),
        "the exchange worked; the call failed: {busy}"
    );
    assert_eq!(header(&busy, "Response").as_deref(), Some("Failure"));
    assert_eq!(header(&busy, "Reason").as_deref(), Some("5"));
}

#[test]
fn a_batch_on_stdin_takes_one_login_and_answers_each_line_by_index() {
    use std::io::Write;
    use std::process::Stdio;
    let config = sandbox_config("");
    let run = |input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ami"))
            .args(["send", "--stdin", "--config"])
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let output = run(concat!(
        "{\"action\":\"Ping\"}\n",
        "{\"action\":\"Command\",\"headers\":[[\"Command\",\"core show version\"]]}\n",
        "{\"action\":\"NoSuchAction\"}\n",
        "{\"action\":\"QueueStatus\",\"server\":\"pbx\"}\n",
    ));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "one action failed: {stderr}");
    assert_eq!(
        stderr.matches("to=Healthy").count(),
        1,
        "one login: {stderr}"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    let by_index = |i: u64| lines.iter().find(|l| l["index"] == i).unwrap();
    assert_eq!(by_index(0)["response"], "Success");
    assert!(
        by_index(1)["output"][0]
            .as_str()
            .unwrap()
            .starts_with("Asterisk 22")
    );
    assert!(by_index(2)["error"].as_str().unwrap().contains("refused"));
    assert!(!by_index(3)["events"].as_array().unwrap().is_empty());
    // A bad line anywhere refuses the batch before any connection.
    let output = run("{\"action\":\"Ping\"}\n{\"action\":\"Ping: x\"}\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("stdin line 2"), "{stderr}");
    assert!(
        !stderr.contains("Authenticating"),
        "connected anyway: {stderr}"
    );
}

#[test]
fn sigterm_logs_off_and_reports_the_action_interrupted() {
    let config = sandbox_config("");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ami"))
        .args(["send", "--config"])
        .arg(&config)
        .args([
            "Originate",
            "Channel=Local/noanswer@test",
            "Application=Wait",
            "Data=1",
            "Async=true",
            "Timeout=20000",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Logged in and waiting: the Originate rings for 20 s.
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    for line in lines.by_ref() {
        if line.unwrap().contains("to=Healthy") {
            break;
        }
    }
    let started = std::time::Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{rest:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(
        rest.iter().any(|l| l.contains("to=Closing")),
        "no Logoff: {rest:?}"
    );
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(line["error"], "interrupted");
}

/// `tls_roots = "system"` trusts the operating system's store (here: the sandbox's CA,
/// named by `SSL_CERT_FILE`, which the store reader honours); the bundled Mozilla roots
/// do not know that CA, so the same server is refused with them.
#[test]
fn tls_roots_system_trusts_the_os_store_and_bundled_does_not() {
    let a = ami_tests::asterisk::asterisk();
    let dir = std::env::temp_dir().join(ami_tests::asterisk::unique_id("ami-tls-roots"));
    std::fs::create_dir_all(&dir).unwrap();
    let ping = |roots: &str| {
        let path = dir.join(format!("{roots}.toml"));
        std::fs::write(
            &path,
            format!(
                "[servers.pbx]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"admin\"\nsecret = \"{}\"\ntls = true\ntls_roots = \"{roots}\"\n",
                a.tls_port, a.secret
            ),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_ami"))
            .args(["send", "--config"])
            .arg(&path)
            .arg("Ping")
            .env("SSL_CERT_FILE", &a.tls_ca)
            .env("AMI_LOG", "warn")
            .output()
            .unwrap()
    };
    let system = ping("system");
    let stdout = String::from_utf8_lossy(&system.stdout);
    assert_eq!(
        system.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&system.stderr)
    );
    assert!(stdout.contains("Pong"), "{stdout}");
    let bundled = ping("bundled");
    assert_ne!(bundled.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&bundled.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
