//! `ami send` against the real Asterisk 22 (instance `a`): an async `Originate`
//! completes with its `OriginateResponse` (the one-shot session asks for the `call`
//! class it comes in; with events off it never would).

use std::process::Command;

use ami_tests::asterisk::{asterisk, unique_id};

#[test]
fn an_async_originate_completes_with_its_originate_response() {
    let a = asterisk();
    let dir = std::env::temp_dir().join(unique_id("ami-send-asterisk"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ami.toml");
    std::fs::write(
        &config,
        format!(
            "[servers.pbx]\nhost = \"{}\"\nport = {}\nusername = \"admin\"\nsecret = \"{}\"\n",
            a.host, a.port, a.secret
        ),
    )
    .unwrap();
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
    let _ = std::fs::remove_dir_all(dir);
}
