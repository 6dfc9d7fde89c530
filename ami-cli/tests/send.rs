//! `ami send` against a scripted server that echoes the client's secret back: neither
//! the printed JSON nor any log line (at trace level) may carry it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::thread;

/// The configured secret: distinctive enough that a substring search cannot hit by
/// accident.
const SECRET: &str = "Tr0ub4dor&3";

/// What `ami-proto` shows in place of a masked value.
const MASK: &str = "********";

/// A server for one connection. `login_ok` decides the Login's answer (a rejection
/// quotes the secret); every other action but `Logoff` is refused with an error that
/// quotes it too.
fn server(login_ok: bool) -> u16 {
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
                let reply = match name.as_str() {
                    "Login" if login_ok => format!("Response: Success\r\nActionID: {id}\r\n\r\n"),
                    "Login" => format!(
                        "Response: Error\r\nActionID: {id}\r\n\
                         Message: Authentication failed for secret {SECRET}\r\n\r\n"
                    ),
                    "Logoff" => format!("Response: Goodbye\r\nActionID: {id}\r\n\r\n"),
                    _ => format!(
                        "Response: Error\r\nActionID: {id}\r\n\
                         Message: {SECRET} is not allowed to {name}\r\nOutput: secret={SECRET}\r\n\r\n"
                    ),
                };
                if writer.write_all(reply.as_bytes()).is_err() || name == "Logoff" {
                    return;
                }
                if name == "Login" && !login_ok {
                    // Asterisk hangs up after a rejected login.
                    return;
                }
            }
        }
    });
    port
}

/// Runs `ami send ... Ping` against `port` with trace logging.
fn send_ping(port: u16, test: &str) -> Output {
    let dir = std::env::temp_dir().join(format!("ami-send-test-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ami.toml");
    std::fs::write(
        &config,
        format!(
            "[servers.fake]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"u\"\n\
             secret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ami"))
        .args(["send", "--config"])
        .arg(&config)
        .arg("Ping")
        .env("AMI_LOG", "trace")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    output
}

/// Stdout and stderr as text, after checking that neither holds the secret.
fn no_secret_in(output: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        if let Some(line) = text.lines().find(|l| l.contains(SECRET)) {
            panic!("secret on {name}: {line}");
        }
    }
    // The frames were logged at all (so a silent run cannot pass).
    assert!(stderr.contains("received"), "no trace lines: {stderr}");
    (stdout, stderr)
}

#[test]
fn login_rejection_echoing_the_secret_is_masked_in_output_and_logs() {
    let output = send_ping(server(false), "login");
    assert!(!output.status.success());
    let (_, stderr) = no_secret_in(&output);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("authentication failed") && l.contains(MASK)),
        "{stderr}"
    );
}

#[test]
fn action_error_echoing_the_secret_is_masked_in_json_and_logs() {
    let output = send_ping(server(true), "action");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let (stdout, _) = no_secret_in(&output);
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let error = json["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("{MASK} is not allowed to Ping")),
        "{json}"
    );
    let headers = json["headers"].as_array().unwrap();
    assert!(
        headers.contains(&serde_json::json!(["Output", format!("secret={MASK}")])),
        "{json}"
    );
}
