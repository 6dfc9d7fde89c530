//! `ami listen` end to end against a scripted AMI server: JSON lines on stdout, and a
//! graceful shutdown on SIGTERM (flush, `Logoff`, exit 0).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// A server that logs the client in, sends five events, and reports every action name
/// it receives on `actions`.
fn server(actions: mpsc::Sender<String>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        writer
            .write_all(b"Asterisk Call Manager/11.0.0\r\n")
            .unwrap();
        let (mut name, mut id) = (String::new(), String::new());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            let text = line.trim_end().to_owned();
            line.clear();
            if let Some(v) = text.strip_prefix("Action: ") {
                name = v.to_owned();
            } else if let Some(v) = text.strip_prefix("ActionID: ") {
                id = v.to_owned();
            } else if text.is_empty() {
                let _ = actions.send(name.clone());
                match name.as_str() {
                    "Login" => {
                        write!(writer, "Response: Success\r\nActionID: {id}\r\n\r\n").unwrap();
                        for seq in 0..5 {
                            write!(
                                writer,
                                "Event: UserEvent\r\nPrivilege: user,all\r\nSeq: {seq}\r\n\r\n"
                            )
                            .unwrap();
                        }
                    }
                    "Logoff" => {
                        write!(writer, "Response: Goodbye\r\nActionID: {id}\r\n\r\n").unwrap();
                        return;
                    }
                    _ => write!(writer, "Response: Success\r\nActionID: {id}\r\n\r\n").unwrap(),
                }
            }
        }
    });
    port
}

/// A directory named after `name` and the process, holding a config with the one
/// server `fake` on `port`.
fn config_for(port: u16, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ami.toml");
    std::fs::write(
        &config,
        format!("[servers.fake]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"u\"\nsecret = \"s\"\n"),
    )
    .unwrap();
    (dir, config)
}

#[test]
fn listen_prints_events_and_logs_off_on_sigterm() {
    let (actions_tx, actions) = mpsc::channel();
    let (dir, config) = config_for(server(actions_tx), "ami-listen-test");

    let mut child = Command::new(env!("CARGO_BIN_EXE_ami"))
        .args(["listen", "--config"])
        .arg(&config)
        .env("AMI_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut lines, mut health) = (Vec::new(), Vec::new());
    while lines.len() < 5 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let record = serde_json::from_str::<serde_json::Value>(&line).unwrap();
        match record["type"].as_str() {
            Some("event") => lines.push(record),
            Some("health") => health.push(record),
            other => panic!("unexpected record {other:?}: {line}"),
        }
    }
    // The health changes come in the same stream, before the first event.
    let last = health.last().expect("health records");
    assert_eq!(last["server"], "fake");
    assert_eq!(last["to"], "healthy");
    assert!(last["at"].as_f64().unwrap() > 1.7e9);
    for (seq, line) in lines.iter().enumerate() {
        assert_eq!(line["server"], "fake");
        assert_eq!(line["name"], "UserEvent");
        assert!(line["received_at"].as_f64().unwrap() > 1.7e9);
        assert_eq!(
            line["headers"][2],
            serde_json::json!(["Seq", seq.to_string()])
        );
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (exit_tx, exit_rx) = mpsc::channel();
    thread::spawn(move || exit_tx.send(child.wait().unwrap()).unwrap());
    let exit = exit_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("ami listen did not exit");
    assert!(exit.success(), "{exit:?}");
    let received: Vec<String> = actions.try_iter().collect();
    assert_eq!(received, ["Login", "Logoff"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unknown_config_keys_are_usage_errors_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("ami-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ami.toml");
    std::fs::write(
        &config,
        "[servers.a]\nhost = \"127.0.0.1\"\nusername = \"u\"\nsecret = \"s\"\nprot = 1\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ami"))
        .args(["listen", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("servers.a.prot"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn send_reaches_a_host_name_when_ip_enforcement_is_off() {
    let (actions, seen) = mpsc::channel();
    let port = server(actions);
    let dir = std::env::temp_dir().join(format!("ami-hostname-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ami.toml");
    std::fs::write(
        &config,
        format!(
            "[servers.a]\nhost = \"localhost\"\nport = {port}\nusername = \"u\"\nsecret = \"s\"\n\
             [options]\nenforce_ip_endpoints = false\n"
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ami"))
        .args(["send", "--config"])
        .arg(&config)
        .arg("Ping")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let names: Vec<String> = seen.try_iter().collect();
    assert!(names.contains(&"Ping".to_owned()), "{names:?} {stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn listen_appends_its_records_to_an_output_file() {
    let (actions_tx, actions) = mpsc::channel();
    let (dir, config) = config_for(server(actions_tx), "ami-listen-output");
    let output = dir.join("events.jsonl");
    std::fs::write(&output, "{\"earlier\":true}\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ami"))
        .args(["listen", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(&output)
        .env("AMI_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The five events reach the file (appended), nothing goes to stdout.
    let events = |text: &str| text.matches("\"type\":\"event\"").count();
    let started = std::time::Instant::now();
    while events(&std::fs::read_to_string(&output).unwrap()) < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the events did not reach the file"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert_eq!(stdout, "", "records go to the file only");
    let text = std::fs::read_to_string(&output).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("{\"earlier\":true}"),
        "appended, not truncated"
    );
    let records: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let seqs: Vec<&str> = records
        .iter()
        .filter(|r| r["type"] == "event")
        .map(|r| r["headers"][2][1].as_str().unwrap())
        .collect();
    assert_eq!(seqs, ["0", "1", "2", "3", "4"]);
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "health" && r["to"] == "healthy")
    );
    assert_eq!(actions.try_iter().collect::<Vec<_>>(), ["Login", "Logoff"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn json_logs_carry_worker_pid_on_every_thread() {
    let (actions_tx, _actions) = mpsc::channel();
    let (dir, config) = config_for(server(actions_tx), "ami-json-logs-test");
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let http_addr = http.local_addr().unwrap();
    drop(http);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ami"))
        .args(["listen", "--config"])
        .arg(&config)
        .args(["--http-addr", &http_addr.to_string()])
        .env("AMI_LOG", "debug")
        .env("AMI_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // The first record: the loop runs, and so does the HTTP endpoint.
    stdout.read_line(&mut line).unwrap();
    // Not HTTP: the endpoint's thread logs the failed connection.
    let mut peer = std::net::TcpStream::connect(http_addr).unwrap();
    peer.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut peer, &mut rest);
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let pid_of = |record: &serde_json::Value| {
        record["spans"]
            .as_array()
            .and_then(|spans| spans.iter().find_map(|s| s["worker_pid"].as_u64()))
    };
    let http_line = lines
        .iter()
        .find(|r| r["message"] == "HTTP connection ended with an error")
        .unwrap_or_else(|| panic!("no line from the HTTP thread: {stderr}"));
    assert_eq!(pid_of(http_line), Some(u64::from(pid)), "{http_line}");
    assert!(
        lines.iter().all(|r| pid_of(r) == Some(u64::from(pid))),
        "a line without worker_pid: {stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Under systemd (`Type=notify`): `READY=1` once the loop runs, `WATCHDOG=1` at half
/// `WATCHDOG_USEC` from the loop, `STOPPING=1` on SIGTERM, on the `NOTIFY_SOCKET`.
#[test]
fn listen_tells_its_service_manager_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let (actions_tx, _actions) = mpsc::channel();
    let (dir, config) = config_for(server(actions_tx), "ami-notify-test");
    let socket_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ami"))
        .args(["listen", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .env("AMI_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let next = || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).trim().to_owned()
    };
    assert_eq!(next(), "READY=1");
    // Pings every 100 ms or so (half of 200 ms), from the loop.
    let started = std::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(next(), "WATCHDOG=1");
    }
    assert!(started.elapsed() >= Duration::from_millis(150), "too fast");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut rest = next();
    while rest == "WATCHDOG=1" {
        rest = next();
    }
    assert_eq!(rest, "STOPPING=1");
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{:?}", output.status);
    let _ = std::fs::remove_dir_all(dir);
}
