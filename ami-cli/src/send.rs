//! `ami send` (any action, completion as JSON) and `ami command` (CLI output lines).
//!
//! Every action is checked before a connection is opened. One session per server
//! serves the whole run (`--stdin`: a batch of actions, one login). SIGTERM and SIGINT
//! after the login stop the run with a `Logoff` on every session: the actions not
//! completed by then are reported as `interrupted`, and the exit code is 130.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ami_mio::{Driver, ServerId};
use ami_proto::action::{EventMask, Strategy};
use ami_proto::{Action, ActionError, Message, Reply, SendError};
use serde_json::{Value, json};

use crate::CliError;
use crate::config::FileConfig;
use crate::json::{header_pairs, headers};
use crate::worker::{CallTracking, ConfigArg, driver_for, init_logging, select};

/// Arguments of `ami send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The server (default: the config's default server).
    #[arg(long, value_name = "KEY")]
    pub server: Option<String>,
    /// The action name, e.g. `Ping`, `QueueStatus`, `Originate`.
    #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
    pub action: Option<String>,
    /// Headers as `Key=Value`; repeat a key to repeat the header (e.g. `Variable`).
    #[arg(value_name = "KEY=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Read the actions from stdin, one JSON object per line:
    /// `{"action":NAME,"headers":[[K,V],...],"server":KEY}` (`server` optional); print
    /// one completion per line with the input's 0-based `index`.
    #[arg(long)]
    pub stdin: bool,
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

/// Actions in flight at once in a batch.
const MAX_IN_FLIGHT: usize = 32;

/// The events a one-shot session asks for: none, unless an action completes with an
/// event (an async `Originate`'s `OriginateResponse`, class `call`), which Asterisk
/// sends only to sessions that take that class.
fn events_for(action: &Action) -> EventMask {
    match action.strategy() {
        Strategy::AsyncOriginate { .. } => EventMask::Classes(vec!["call".into()]),
        _ => EventMask::Off,
    }
}

/// One action of a run: its place in the input, its server, the action.
struct Job {
    index: usize,
    server: String,
    action: Action,
}

/// An action from its name and headers, with the strategy of its typed counterpart,
/// checked by the encoder (name a token, no header injection, not too many headers).
fn build(name: &str, headers: &[(String, String)]) -> Result<Action, String> {
    let mut action = Action::new(name);
    for (key, value) in headers {
        action.push_header(key.clone(), value.clone());
    }
    let action = action.with_typed_strategy();
    action
        .encode("0", &mut Vec::new())
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(action)
}

/// The jobs of `--stdin`: every line read and checked before anything connects.
fn jobs_from_stdin(default: &str, file: &FileConfig) -> Result<Vec<Job>, CliError> {
    let mut jobs = Vec::new();
    for (line_number, line) in io::stdin().lines().enumerate() {
        let line = line.map_err(|e| CliError::io("cannot read stdin", e))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| CliError::Usage(format!("stdin line {}: {why}", line_number + 1));
        let value: Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| bad("expected a JSON object".into()))?;
        if let Some(key) = object
            .keys()
            .find(|k| !["action", "headers", "server"].contains(&k.as_str()))
        {
            return Err(bad(format!(
                "unknown field {key:?} (expected action, headers, server)"
            )));
        }
        let name = object
            .get("action")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("\"action\" (a string) is required".into()))?;
        let headers = match object.get("headers") {
            None => Vec::new(),
            Some(headers) => header_pairs(headers).map_err(|e| bad(format!("headers: {e}")))?,
        };
        let server = match object.get("server") {
            None => default.to_owned(),
            Some(Value::String(key)) => {
                file.server(key).map_err(|e| bad(e.to_string()))?;
                key.clone()
            }
            Some(_) => return Err(bad("\"server\" must be a string".into())),
        };
        jobs.push(Job {
            index: jobs.len(),
            server,
            action: build(name, &headers).map_err(bad)?,
        });
    }
    Ok(jobs)
}

/// A driver logged in to every server the jobs name, each session with the events
/// its actions complete with (none for most: one-shot commands want their reply).
fn connect(
    file: &FileConfig,
    jobs: &[Job],
) -> Result<(Driver, HashMap<String, ServerId>), CliError> {
    let mut keys: Vec<String> = jobs.iter().map(|j| j.server.clone()).collect();
    keys.sort();
    keys.dedup();
    let events: HashMap<String, EventMask> = keys
        .iter()
        .map(|key| {
            let needs = jobs
                .iter()
                .filter(|j| &j.server == key)
                .map(|j| events_for(&j.action))
                .find(|e| *e != EventMask::Off)
                .unwrap_or(EventMask::Off);
            (key.clone(), needs)
        })
        .collect();
    let (mut driver, ids) = driver_for(file, &keys, CallTracking::WhereLimited, |c| {
        c.events = events
            .get(&*c.server_key)
            .cloned()
            .unwrap_or(EventMask::Off);
    })?;
    let mut by_key = HashMap::new();
    for (key, id) in keys.into_iter().zip(ids) {
        driver
            .connect(id)
            .map_err(|e| CliError::Failed(e.to_string()))?;
        driver
            .wait_ready(id, LOGIN_WAIT)
            .map_err(|e| CliError::Failed(format!("{key}: {e}")))?;
        by_key.insert(key, id);
    }
    Ok((driver, by_key))
}

/// A flag SIGTERM and SIGINT set from now on. Taken before anything connects, so
/// that a signal during the login still ends the run with a Logoff, not the default
/// kill.
fn stop_on_signals() -> Result<Arc<AtomicBool>, CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| CliError::io("cannot handle signals", e))?;
    }
    Ok(stop)
}

/// How a job ended: the reply, or why there is none (and the action's error, when it
/// was sent).
type Outcome<'a> = Result<&'a Reply, (String, Option<&'a ActionError>)>;

/// Sends the jobs (at most [`MAX_IN_FLIGHT`] at once) and calls `done` with each
/// completion as it comes. Returns `false` when SIGTERM or SIGINT stopped the run:
/// the jobs not completed then are reported as `interrupted`. Every session gets its
/// `Logoff`.
fn run_jobs(
    mut driver: Driver,
    ids: &HashMap<String, ServerId>,
    jobs: Vec<Job>,
    stop: &AtomicBool,
    mut done: impl FnMut(usize, &str, Outcome<'_>) -> Result<(), CliError>,
) -> Result<bool, CliError> {
    let servers: Vec<String> = jobs.iter().map(|j| j.server.clone()).collect();
    let total = jobs.len();
    type Completed = Rc<RefCell<Vec<(usize, Result<Reply, ActionError>)>>>;
    let completed: Completed = Rc::default();
    let mut pending = jobs.into_iter().peekable();
    let (mut in_flight, mut finished) = (0usize, 0usize);
    let mut reported = vec![false; total];
    let mut interrupted = false;
    while finished < total {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        while in_flight < MAX_IN_FLIGHT {
            let Some(job) = pending.peek() else { break };
            let (id, index) = (ids[&job.server], job.index);
            let slot = completed.clone();
            let sent = driver.send(id, job.action.clone(), move |result| {
                slot.borrow_mut().push((index, result));
            });
            match sent {
                Ok(_) => {
                    pending.next();
                    in_flight += 1;
                }
                // Asterisk has enough of ours: the rest wait for completions.
                Err(SendError::TooManyPending { .. } | SendError::Backpressure { .. })
                    if in_flight > 0 =>
                {
                    break;
                }
                Err(error) => {
                    pending.next();
                    finished += 1;
                    reported[index] = true;
                    done(index, &servers[index], Err((error.to_string(), None)))?;
                }
            }
        }
        driver.tick_all(Duration::from_millis(20));
        let batch: Vec<_> = completed.borrow_mut().drain(..).collect();
        for (index, result) in batch {
            in_flight -= 1;
            finished += 1;
            reported[index] = true;
            let outcome = match &result {
                Ok(reply) => Ok(reply),
                Err(error) => Err((error.to_string(), Some(error))),
            };
            done(index, &servers[index], outcome)?;
        }
    }
    if !driver.shutdown(Duration::from_secs(5)) {
        tracing::warn!("some servers did not acknowledge the logoff in time");
    }
    if interrupted {
        tracing::warn!("signal received: logged off");
        for index in (0..total).filter(|&i| !reported[i]) {
            done(index, &servers[index], Err(("interrupted".into(), None)))?;
        }
    }
    Ok(!interrupted)
}

fn write_line(out: &mut impl Write, value: &Value) -> Result<(), CliError> {
    serde_json::to_writer(&mut *out, value)
        .map_err(io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| CliError::io("cannot write to stdout", e))
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
    // Command output in either form: `Output:` headers (Asterisk 14+) or a legacy
    // `Follows` body.
    let output = reply.output();
    if !output.is_empty() {
        value["output"] = json!(output);
    }
    value
}

fn error_json(server: &str, message: &str, error: Option<&ActionError>) -> Value {
    let mut value = json!({ "server": server, "error": message });
    if let Some(ActionError::Rejected { response, .. }) = error {
        value["response"] = json!(response.response());
        value["headers"] = headers(response);
    }
    value
}

/// Runs `ami send`: prints each completion as one JSON object (with the input's
/// `index` under `--stdin`); exits 0 only when every action succeeded.
pub fn run_send(args: &SendArgs) -> Result<(), CliError> {
    init_logging();
    let file = args.config.load()?;
    let default = select(&file, args.server.as_deref(), false)?.remove(0);
    let jobs = if args.stdin {
        jobs_from_stdin(&default, &file)?
    } else {
        let name = args.action.as_deref().unwrap_or_default();
        vec![Job {
            index: 0,
            server: default,
            action: build(name, &args.headers).map_err(CliError::Usage)?,
        }]
    };
    if jobs.is_empty() {
        return Ok(());
    }
    let total = jobs.len();
    let stop = stop_on_signals()?;
    let (driver, ids) = connect(&file, &jobs)?;
    let mut out = io::stdout().lock();
    let mut failures = 0usize;
    let finished = run_jobs(driver, &ids, jobs, &stop, |index, server, outcome| {
        let mut value = match outcome {
            Ok(reply) => reply_json(server, reply),
            Err((message, error)) => {
                failures += 1;
                error_json(server, &message, error)
            }
        };
        if args.stdin {
            value["index"] = json!(index);
        }
        write_line(&mut out, &value)
    })?;
    if !finished {
        return Err(CliError::Interrupted);
    }
    match failures {
        0 => Ok(()),
        _ if total == 1 => Err(CliError::Failed("the action failed".into())),
        n => Err(CliError::Failed(format!("{n} of {total} actions failed"))),
    }
}

/// Runs `ami command`: prints the output lines; exits non-zero on an error.
pub fn run_command(args: &CommandArgs) -> Result<(), CliError> {
    init_logging();
    let file = args.config.load()?;
    let server = select(&file, args.server.as_deref(), false)?.remove(0);
    let jobs = vec![Job {
        index: 0,
        server,
        action: ami_proto::action::Command::new(args.command.clone()).into(),
    }];
    let stop = stop_on_signals()?;
    let (driver, ids) = connect(&file, &jobs)?;
    let mut out = io::stdout().lock();
    let mut failure = None;
    let finished = run_jobs(driver, &ids, jobs, &stop, |_, _, outcome| {
        match outcome {
            Ok(reply) => {
                for line in reply.output() {
                    writeln!(out, "{line}")
                        .map_err(|e| CliError::io("cannot write to stdout", e))?;
                }
            }
            Err((message, error)) => {
                // An unknown command is a `Response: Error` whose output says why.
                if let Some(ActionError::Rejected { response, .. }) = error {
                    for line in response.output_lines() {
                        eprintln!("{line}");
                    }
                }
                failure = Some(message);
            }
        }
        Ok(())
    })?;
    if !finished {
        return Err(CliError::Interrupted);
    }
    failure.map_or(Ok(()), |why| Err(CliError::Failed(why)))
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
