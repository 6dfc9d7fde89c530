//! The requests workers put on the action streams, and the completions the gateway
//! answers them with (the README's "ami gateway" section is the schema).
//!
//! Pure functions: a request's fields in, a [`Request`] or an [`Invalid`] out; a
//! reply or an error in, a completion's fields out. The threads that move them
//! through Redis are in [`actions`](super::actions).

use std::time::Duration;

use ami_mio::{Strategy, SubmitError};
use ami_proto::action::Strategy as ActionStrategy;
use ami_proto::{Action, ActionError, Message, Reply, SendError};
use serde_json::{Value, json};

use crate::config::Route;
use crate::json::headers;

/// Longest `request_id`, in characters.
pub const MAX_REQUEST_ID: usize = 128;

/// Longest `timeout_ms`: one day.
const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// The fields a request may have.
const FIELDS: [&str; 8] = [
    "request_id",
    "reply_to",
    "action",
    "headers",
    "server",
    "route",
    "timeout_ms",
    "forwarded_by",
];

/// A valid request, ready to be sent.
#[derive(Debug)]
pub struct Request {
    /// The worker's id for it, echoed in the completion.
    pub request_id: String,
    /// The stream the completion goes to.
    pub reply_to: String,
    /// The action, with the strategy its typed counterpart would use.
    pub action: Action,
    /// The server named, if any.
    pub server: Option<String>,
    /// How to pick a server when none is named (the config's `route` when absent).
    pub route: Option<Route>,
}

/// Why a request cannot be sent: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field, e.g. `headers`.
    pub field: String,
    /// What is wrong, for the worker's log.
    pub message: String,
    /// The request's `request_id`, when it had a usable one.
    pub request_id: Option<String>,
    /// The request's `reply_to`, when it had one: where the `invalid` completion goes.
    pub reply_to: Option<String>,
}

/// The text of field `name`, if present.
fn text<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Reads a request from the fields of its stream entry.
pub fn parse(fields: &[(String, String)]) -> Result<Request, Invalid> {
    let reply_to = text(fields, "reply_to")
        .filter(|r| !r.is_empty())
        .map(str::to_owned);
    let request_id = text(fields, "request_id")
        .filter(|id| !id.is_empty() && id.chars().count() <= MAX_REQUEST_ID)
        .filter(|id| !id.chars().any(char::is_control))
        .map(str::to_owned);
    let invalid = |field: &str, message: String| Invalid {
        field: field.to_owned(),
        message,
        request_id: request_id.clone(),
        reply_to: reply_to.clone(),
    };
    if let Some((key, _)) = fields
        .iter()
        .find(|(key, _)| !FIELDS.contains(&key.as_str()))
    {
        return Err(invalid(
            key,
            format!("unknown field {key:?} (expected: {})", FIELDS.join(", ")),
        ));
    }
    let Some(request_id_value) = request_id.clone() else {
        let message = match text(fields, "request_id") {
            None => "required".to_owned(),
            Some("") => "must not be empty".to_owned(),
            Some(_) => format!("at most {MAX_REQUEST_ID} characters, no control characters"),
        };
        return Err(invalid("request_id", message));
    };
    let Some(reply_to_value) = reply_to.clone() else {
        return Err(invalid(
            "reply_to",
            "required: the stream to answer on".into(),
        ));
    };
    let name = text(fields, "action").unwrap_or_default();
    if !ami_proto::action::is_action_name(name) {
        return Err(invalid(
            "action",
            format!(
                "expected an action name (letters, digits, `_`, `-`, `.`), got {:?}",
                name
            ),
        ));
    }
    let mut action = Action::new(name);
    if let Some(text) = text(fields, "headers") {
        for (key, value) in parse_headers(text).map_err(|m| invalid("headers", m))? {
            action.push_header(key, value);
        }
    }
    // Header injection, reserved or too many headers: what the encoder refuses.
    if let Err(error) = action.encode("0", &mut Vec::new()) {
        return Err(invalid("headers", error.to_string()));
    }
    let mut action = action.with_typed_strategy();
    if let Some(text) = text(fields, "timeout_ms") {
        let timeout = text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms))
            .ok_or_else(|| {
                invalid(
                    "timeout_ms",
                    format!("expected milliseconds 1..={MAX_TIMEOUT_MS}, got {text:?}"),
                )
            })?;
        let timeout = Duration::from_millis(timeout);
        action = match action.strategy() {
            ActionStrategy::AsyncOriginate { .. } => {
                action.with_strategy(ActionStrategy::AsyncOriginate {
                    event_timeout: timeout,
                })
            }
            _ => action,
        }
        .with_timeout(timeout);
    }
    let route = match text(fields, "route") {
        None | Some("") => None,
        Some(name) => Some(Route::parse(name).ok_or_else(|| {
            invalid(
                "route",
                format!("expected round_robin, failover or health_aware, got {name:?}"),
            )
        })?),
    };
    Ok(Request {
        request_id: request_id_value,
        reply_to: reply_to_value,
        action,
        server: text(fields, "server")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        route,
    })
}

/// Reads `headers`: JSON text of the forms [`json::header_pairs`] takes.
fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text:.80}"))?;
    crate::json::header_pairs(&value)
}

/// The routing strategy of `route` over the gateway's servers, in config order (the
/// order `failover` follows).
pub fn strategy(route: Route, servers: &[String]) -> Strategy<String> {
    match route {
        Route::RoundRobin => Strategy::RoundRobin,
        Route::Failover => Strategy::Failover(servers.to_vec()),
        Route::HealthAware => Strategy::HealthAware,
    }
}

/// The fields of one completion entry, in order.
pub type Fields = Vec<(&'static str, String)>;

/// The completion of an action that Asterisk answered.
pub fn completed(
    request_id: &str,
    server: &str,
    strategy: ActionStrategy,
    reply: &Reply,
) -> Fields {
    let mut fields = vec![
        ("request_id", request_id.to_owned()),
        ("server", server.to_owned()),
        ("status", "ok".to_owned()),
        ("response", headers(&reply.response).to_string()),
    ];
    match strategy {
        ActionStrategy::Command => {
            fields.push(("output", json!(reply.output()).to_string()));
        }
        ActionStrategy::AsyncOriginate { .. } => {
            if let Some(event) = reply.events.first() {
                fields.push(("originate_response", headers(event).to_string()));
            }
        }
        _ if reply.list_end.is_some() || !reply.events.is_empty() => {
            let events: Vec<Value> = reply.events.iter().map(event_json).collect();
            fields.push(("events", Value::Array(events).to_string()));
            if let Some(end) = &reply.list_end {
                fields.push(("list_end", event_json(end).to_string()));
            }
        }
        _ => {}
    }
    fields
}

fn event_json(message: &Message) -> Value {
    json!({ "name": message.event_name().unwrap_or_default(), "headers": headers(message) })
}

/// An error completion: `kind` is one of the README's error names.
pub fn failed(request_id: &str, server: &str, kind: &str, message: &str) -> Fields {
    vec![
        ("request_id", request_id.to_owned()),
        ("server", server.to_owned()),
        ("status", "error".to_owned()),
        ("error", kind.to_owned()),
        ("message", message.to_owned()),
    ]
}

/// The completion of an invalid request.
pub fn invalid(request_id: &str, invalid: &Invalid) -> Fields {
    let mut fields = failed(
        request_id,
        "",
        "invalid",
        &format!("{}: {}", invalid.field, invalid.message),
    );
    fields.push(("field", invalid.field.clone()));
    fields
}

/// The completion of a submission that failed: the error's name, and Asterisk's
/// response when it refused the action.
pub fn submit_failed(request_id: &str, server: &str, error: &SubmitError) -> Fields {
    let kind = match error {
        SubmitError::UnknownServer(_) => "no_server",
        SubmitError::NoServer(_) => "no_server",
        SubmitError::Refused(SendError::NotReady { .. })
        | SubmitError::Failed(ActionError::NotSent(SendError::NotReady { .. })) => "not_ready",
        SubmitError::Refused(SendError::Encode(_)) => "invalid",
        SubmitError::Refused(SendError::Paced { .. }) => "paced",
        SubmitError::Refused(_) | SubmitError::InboxFull => "backpressure",
        SubmitError::Failed(ActionError::Rejected { .. }) => "refused",
        SubmitError::Failed(ActionError::Timeout { .. }) => "timeout",
        SubmitError::Failed(ActionError::ConnectionClosed { .. }) | SubmitError::DriverGone => {
            "connection_closed"
        }
        // The reply was too big for the client's bounds (list cap, output cap, memory).
        SubmitError::Failed(_) => "backpressure",
        _ => "backpressure",
    };
    let mut fields = failed(request_id, server, kind, &error.to_string());
    if let SubmitError::Failed(ActionError::Rejected { response, .. }) = error {
        fields.push(("response", headers(response).to_string()));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("request_id", "r-1"),
            ("reply_to", "replies:w1"),
            ("action", "Ping"),
        ]
    }

    fn invalid_field(pairs: &[(&str, &str)]) -> String {
        parse(&fields(pairs)).unwrap_err().field
    }

    #[test]
    fn a_request_becomes_an_action_with_the_typed_strategy() {
        let mut pairs = base();
        pairs[2].1 = "Originate";
        pairs.push((
            "headers",
            r#"[["Channel","Local/100@test"],["Async","true"],["Variable","a=1"],["Variable","b=2"]]"#,
        ));
        pairs.push(("server", "pbx-1"));
        let request = parse(&fields(&pairs)).unwrap();
        assert_eq!(request.request_id, "r-1");
        assert_eq!(request.reply_to, "replies:w1");
        assert_eq!(request.server.as_deref(), Some("pbx-1"));
        let variables: Vec<&str> = request.action.get_all("Variable").collect();
        assert_eq!(variables, ["a=1", "b=2"]);
        assert!(matches!(
            request.action.strategy(),
            ActionStrategy::AsyncOriginate { .. }
        ));
    }

    #[test]
    fn headers_may_be_an_object_whose_arrays_repeat_a_key() {
        let mut pairs = base();
        pairs.push((
            "headers",
            r#"{"Channel":"Local/1@t","Variable":["a=1","b=2"],"Timeout":5000}"#,
        ));
        let request = parse(&fields(&pairs)).unwrap();
        assert_eq!(request.action.get("Timeout"), Some("5000"));
        assert_eq!(request.action.get_all("Variable").count(), 2);
    }

    #[test]
    fn bad_requests_name_the_field() {
        assert_eq!(
            invalid_field(&[("reply_to", "r"), ("action", "Ping")]),
            "request_id"
        );
        let long = "x".repeat(129);
        assert_eq!(
            invalid_field(&[("request_id", &long), ("reply_to", "r"), ("action", "Ping")]),
            "request_id"
        );
        assert_eq!(
            invalid_field(&[("request_id", "1"), ("action", "Ping")]),
            "reply_to"
        );
        for name in ["", " ", "Ping: x", "Ping\r\nAction: Logoff", "Pi ng"] {
            let mut pairs = base();
            pairs[2].1 = name;
            assert_eq!(invalid_field(&pairs), "action", "{name:?}");
        }
        for headers in [
            "not json",
            r#"[["Channel"]]"#,
            r#"[["Data","x\r\nAction: Logoff"]]"#,
            r#"[["ActionID","mine"]]"#,
            r#""text""#,
        ] {
            let mut pairs = base();
            pairs.push(("headers", headers));
            let invalid = parse(&fields(&pairs)).unwrap_err();
            assert_eq!(invalid.field, "headers", "{headers}");
            assert_eq!(invalid.request_id.as_deref(), Some("r-1"));
            assert_eq!(invalid.reply_to.as_deref(), Some("replies:w1"));
        }
        let mut pairs = base();
        pairs.push(("timeout_ms", "0"));
        assert_eq!(invalid_field(&pairs), "timeout_ms");
        let mut pairs = base();
        pairs.push(("route", "random"));
        assert_eq!(invalid_field(&pairs), "route");
        let mut pairs = base();
        pairs.push(("header", "[]"));
        assert_eq!(invalid_field(&pairs), "header");
    }

    #[test]
    fn submit_errors_map_to_the_documented_names() {
        let name = |e: SubmitError| {
            submit_failed("r", "s", &e)
                .into_iter()
                .find(|(k, _)| *k == "error")
                .unwrap()
                .1
        };
        assert_eq!(
            name(SubmitError::Refused(SendError::NotReady {
                state: ami_proto::State::Closed
            })),
            "not_ready"
        );
        assert_eq!(
            name(SubmitError::Refused(SendError::TooManyPending { limit: 1 })),
            "backpressure"
        );
        assert_eq!(
            name(SubmitError::Failed(ActionError::Timeout {
                stage: ami_proto::Stage::Response,
                timeout: Duration::from_secs(1)
            })),
            "timeout"
        );
        assert_eq!(name(SubmitError::DriverGone), "connection_closed");
        assert_eq!(
            name(SubmitError::Refused(SendError::Paced { waiting: 1000 })),
            "paced"
        );
        assert_eq!(
            name(SubmitError::Failed(ActionError::Timeout {
                stage: ami_proto::Stage::Paced,
                timeout: Duration::from_secs(30)
            })),
            "timeout"
        );
    }
}
