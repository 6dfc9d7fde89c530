//! `ami send` (any action, completion as JSON) and `ami command` (CLI output lines).

use std::io::{self, Write};
use std::time::Duration;

use ami_mio::{Driver, ServerId, WaitError};
use ami_proto::action::{EventMask, Strategy};
use ami_proto::{Action, ActionError, Message, Reply};
use serde_json::{Value, json};

use crate::CliError;
use crate::json::headers;
use crate::worker::{ConfigArg, driver_for, init_logging, select};

/// Arguments of `ami send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The server (default: the config's default server).
    #[arg(long, value_name = "KEY")]
    pub server: Option<String>,
    /// The action name, e.g. `Ping`, `QueueStatus`, `Originate`.
    pub action: String,
    /// Headers as `Key=Value`; repeat a key to repeat the header (e.g. `Variable`).
    #[arg(value_name = "KEY=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The config file.
    #[command(flatten)]
    pub config: ConfigArg,
}

/// Arguments of `ami command`.
#[derive(Debug, clap::Args)]
pub struct CommandArgs {
    /// The server (default: the config's default server).
    #[arg(long, value_name = "KEY")]
    pub server: Option<String>,
    /// The CLI command, e.g. "core show channels".
    pub command: String,
    /// The config file.
    #[command(flatten)]
    pub config: ConfigArg,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))?;
    if key.is_empty() {
        return Err(format!("empty key in {text:?}"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// How long a one-shot command waits for the login.
const LOGIN_WAIT: Duration = Duration::from_secs(30);

/// The events a one-shot session asks for: none, unless the action completes with an
/// event (an async `Originate`'s `OriginateResponse`, class `call`), which Asterisk
/// sends only to sessions that take that class.
fn events_for(action: &Action) -> EventMask {
    match action.strategy() {
        Strategy::AsyncOriginate { .. } => EventMask::Classes(vec!["call".into()]),
        _ => EventMask::Off,
    }
}

/// Connects to one server with the events `events` and waits for the login.
fn connect(
    config: &ConfigArg,
    server: Option<&str>,
    events: EventMask,
) -> Result<(Driver, ServerId, String), CliError> {
    init_logging();
    let file = config.load()?;
    let keys = select(&file, server, false)?;
    // One-shot commands want their reply, not the event stream.
    let (mut driver, ids) = driver_for(&file, &keys, |c| c.events = events.clone())?;
    let id = ids[0];
    driver
        .connect(id)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    driver
        .wait_ready(id, LOGIN_WAIT)
        .map_err(|e| CliError::Failed(format!("{}: {e}", keys[0])))?;
    Ok((driver, id, keys[0].clone()))
}

fn message_json(message: &Message) -> Value {
    match message.event_name() {
        Some(name) => json!({ "name": name, "headers": headers(message) }),
        None => json!({ "headers": headers(message) }),
    }
}

fn reply_json(server: &str, reply: &Reply) -> Value {
    let mut value = json!({
        "server": server,
        "response": reply.response.response(),
        "headers": headers(&reply.response),
        "events": reply.events.iter().map(message_json).collect::<Vec<_>>(),
    });
    if let Some(end) = &reply.list_end {
        value["list_end"] = message_json(end);
    }
    if reply.response.is_follows() {
        value["output"] = json!(reply.output());
    }
    value
}

fn error_json(server: &str, error: &WaitError) -> Value {
    let mut value = json!({ "server": server, "error": error.to_string() });
    if let WaitError::Failed(ActionError::Rejected { response, .. }) = error {
        value["response"] = json!(response.response());
        value["headers"] = headers(response);
    }
    value
}

fn finish(driver: &mut Driver) {
    driver.shutdown(Duration::from_secs(5));
}

/// Runs `ami send`: prints the completion as one JSON object; exits non-zero on an
/// error response, a timeout, or a refusal.
pub fn run_send(args: &SendArgs) -> Result<(), CliError> {
    let mut action = Action::new(args.action.clone());
    for (key, value) in &args.headers {
        action.push_header(key.clone(), value.clone());
    }
    // The strategy the typed action of that name would use.
    let action = action.with_typed_strategy();
    // Refused here, before any connection (and login) is spent on it.
    action
        .encode("0", &mut Vec::new())
        .map_err(|e| CliError::Usage(format!("{}: {e}", args.action)))?;
    let (mut driver, id, server) =
        connect(&args.config, args.server.as_deref(), events_for(&action))?;
    let result = driver.send_and_wait(id, action);
    finish(&mut driver);
    let (value, failed) = match &result {
        Ok(reply) => (reply_json(&server, reply), false),
        Err(error) => (error_json(&server, error), true),
    };
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, &value)
        .map_err(io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|e| CliError::io("cannot write to stdout", e))?;
    match result {
        Err(error) if failed => Err(CliError::Failed(error.to_string())),
        _ => Ok(()),
    }
}

/// Runs `ami command`: prints the output lines; exits non-zero on an error.
pub fn run_command(args: &CommandArgs) -> Result<(), CliError> {
    let (mut driver, id, _) = connect(&args.config, args.server.as_deref(), EventMask::Off)?;
    let result = driver.send_and_wait(id, ami_proto::action::Command::new(args.command.clone()));
    finish(&mut driver);
    // An unknown command is a `Response: Error` whose output says why: show it.
    if let Err(WaitError::Failed(ActionError::Rejected { response, .. })) = &result {
        for line in response.output_lines() {
            eprintln!("{line}");
        }
    }
    let reply = result.map_err(|e| CliError::Failed(e.to_string()))?;
    let mut out = io::stdout().lock();
    for line in reply.output() {
        writeln!(out, "{line}").map_err(|e| CliError::io("cannot write to stdout", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_action_completed_by_an_event_asks_for_events() {
        let originate = Action::new("Originate")
            .header("Async", "true")
            .with_typed_strategy();
        assert_eq!(
            events_for(&originate),
            EventMask::Classes(vec!["call".into()])
        );
        let sync = Action::new("Originate").with_typed_strategy();
        assert_eq!(events_for(&sync), EventMask::Off);
        assert_eq!(events_for(&Action::new("Ping")), EventMask::Off);
    }

    #[test]
    fn headers_parse_as_key_equals_value() {
        assert_eq!(
            parse_header("Variable=a=b"),
            Ok(("Variable".into(), "a=b".into()))
        );
        assert_eq!(
            parse_header("Channel="),
            Ok(("Channel".into(), String::new()))
        );
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("=x").is_err());
    }
}
