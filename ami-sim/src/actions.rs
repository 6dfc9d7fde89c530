//! The answers: what the simulated Asterisk replies to each action, in the byte format
//! of Asterisk 22 (checked against a capture of a real 22.10.1 session where one
//! exists; see PROTOCOL-NOTES for the rules).
//!
//! Answering is pure: [`Ctx::answer`] turns one request into an [`Answer`] (the bytes
//! of the response and list, events to send after it, an event to send later, a
//! delay, whether the session closes). The session decides when the bytes go out and
//! whether faults drop them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use crate::config::{CommandFormat, SimConfig};
use crate::wire::{MessageBuf, Request};
use ami_proto::rng::Rng;

/// Event class of `FullyBooted`.
pub(crate) const CLASS_SYSTEM: &str = "system";
/// Event class of `OriginateResponse`.
pub(crate) const CLASS_CALL: &str = "call";
/// Event class of `UserEvent` (and the flood).
pub(crate) const CLASS_USER: &str = "user";

/// The one line of `core show version`.
pub(crate) const VERSION_LINE: &str = "Asterisk 22.10.1 built by sim";
/// Lines of `core show help`.
pub(crate) const HELP_LINES: usize = 300;
/// The most lines `sim output N` prints.
pub(crate) const MAX_SIM_OUTPUT_LINES: usize = 1_000_000;
/// How long the simulated Asterisk had been up when a session started.
const UPTIME_AT_START: Duration = Duration::from_secs(648);

/// Which event classes a session receives (the `Events` header of `Login`, the
/// `EventMask` of the `Events` action).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EventFilter {
    /// Every class.
    All,
    /// None.
    Off,
    /// These classes (lowercase).
    Classes(Vec<String>),
}

impl EventFilter {
    /// Parses a mask the way Asterisk does: a true word (or empty, or `all`) is every
    /// class, a false word none, a number all or none, otherwise a comma list.
    pub(crate) fn parse(value: &str) -> EventFilter {
        let value = value.trim();
        if value.is_empty() || is_true(value) || value.eq_ignore_ascii_case("all") {
            return EventFilter::All;
        }
        if is_false(value) {
            return EventFilter::Off;
        }
        if let Ok(number) = value.parse::<u64>() {
            return if number == 0 {
                EventFilter::Off
            } else {
                EventFilter::All
            };
        }
        let classes: Vec<String> = value
            .split(',')
            .map(|class| class.trim().to_ascii_lowercase())
            .filter(|class| !class.is_empty())
            .collect();
        if classes.iter().any(|class| class == "all") {
            EventFilter::All
        } else {
            EventFilter::Classes(classes)
        }
    }

    /// Whether events of `class` pass.
    pub(crate) fn allows(&self, class: &str) -> bool {
        match self {
            EventFilter::All => true,
            EventFilter::Off => false,
            EventFilter::Classes(classes) => classes.iter().any(|c| c == class),
        }
    }

    /// Whether any event passes (`Events: On` in the reply of the `Events` action).
    fn is_on(&self) -> bool {
        match self {
            EventFilter::All => true,
            EventFilter::Off => false,
            EventFilter::Classes(classes) => !classes.is_empty(),
        }
    }
}

/// Asterisk's `ast_true`.
pub(crate) fn is_true(value: &str) -> bool {
    ["yes", "true", "y", "t", "1", "on"]
        .iter()
        .any(|word| value.trim().eq_ignore_ascii_case(word))
}

/// Asterisk's `ast_false`.
fn is_false(value: &str) -> bool {
    ["no", "false", "n", "f", "0", "off"]
        .iter()
        .any(|word| value.trim().eq_ignore_ascii_case(word))
}

/// A broadcast event produced by an action.
#[derive(Debug, Clone)]
pub(crate) struct SimEvent {
    /// Its class, for the session's event filter.
    pub(crate) class: &'static str,
    /// The whole message.
    pub(crate) bytes: Vec<u8>,
    /// Whether other sessions receive it too (`OriginateResponse`, `UserEvent`).
    pub(crate) broadcast: bool,
}

/// Everything one action produces.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    /// The response, and for lists the items and the completion event.
    pub(crate) bytes: Vec<u8>,
    /// List items among `bytes`.
    pub(crate) list_items: u64,
    /// Time the action takes before its bytes go out (sync Originate, failed login).
    pub(crate) delay: Duration,
    /// Events sent right after the bytes (subject to the event filter).
    pub(crate) events: Vec<SimEvent>,
    /// An event sent this long after the bytes.
    pub(crate) later: Option<(Duration, SimEvent)>,
    /// `Some(true)` for a successful login, `Some(false)` for a failed one.
    pub(crate) login: Option<bool>,
    /// The session closes after the bytes.
    pub(crate) close: bool,
}

impl Answer {
    fn of(buf: MessageBuf) -> Answer {
        Answer {
            bytes: buf.into_bytes(),
            ..Answer::default()
        }
    }
}

/// `Response: Error` with `Message: message`.
fn error(id: Option<&str>, message: &str) -> Answer {
    let mut buf = MessageBuf::new();
    buf.response("Error", id).header("Message", message).end();
    Answer::of(buf)
}

/// `Response: Success` with `Message: message`.
fn success(id: Option<&str>, message: &str) -> Answer {
    let mut buf = MessageBuf::new();
    buf.response("Success", id).header("Message", message).end();
    Answer::of(buf)
}

/// Lowercase hex md5(challenge + secret), the MD5 login key (PROTOCOL-NOTES 9).
pub(crate) fn md5_key(challenge: &str, secret: &str) -> String {
    let mut hasher = Md5::new();
    hasher.update(challenge.as_bytes());
    hasher.update(secret.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The state the answers read and change: login, event filter, variables.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) config: SimConfig,
    pub(crate) rng: Rng,
    /// The user logged in as, once logged in.
    pub(crate) user: Option<String>,
    /// The MD5 challenge handed out, if any.
    challenge: Option<String>,
    pub(crate) mask: EventFilter,
    vars: HashMap<String, String>,
    created: Instant,
    unix_at_created: Duration,
    originates: u64,
}

impl Ctx {
    pub(crate) fn new(config: SimConfig, now: Instant, rng: Rng) -> Self {
        Ctx {
            unix_at_created: config.unix_time,
            config,
            rng,
            user: None,
            challenge: None,
            mask: EventFilter::All,
            vars: HashMap::new(),
            created: now,
            originates: 0,
        }
    }

    /// Sets the Unix time at `now` (the TCP server uses the real clock).
    pub(crate) fn set_wall_clock(&mut self, now: Instant, since_epoch: Duration) {
        let age = now.saturating_duration_since(self.created);
        self.unix_at_created = since_epoch.saturating_sub(age);
    }

    /// The Unix time at `now`.
    pub(crate) fn unix_now(&self, now: Instant) -> Duration {
        self.unix_at_created + now.saturating_duration_since(self.created)
    }

    fn uptime(&self, now: Instant) -> Duration {
        UPTIME_AT_START + now.saturating_duration_since(self.created)
    }

    /// A Uniqueid in Asterisk's `<epoch>.<n>` form.
    fn uniqueid(&self, n: u64) -> String {
        format!("{}.{n}", self.unix_at_created.as_secs())
    }

    /// Answers one request processed at `now`.
    pub(crate) fn answer(&mut self, request: &Request, now: Instant) -> Answer {
        let id = request.action_id();
        if request.exceeds_input_limits() {
            // Asterisk gives up on the request before it reads its ActionID.
            return error(None, "Failed to parse message: line too long");
        }
        let Some(name) = request.action() else {
            return error(id, "Missing action in request");
        };
        let name = name.to_ascii_lowercase();
        // PROTOCOL-NOTES 10: before login only these three.
        if self.user.is_none() && !matches!(name.as_str(), "login" | "logoff" | "challenge") {
            return error(id, "Permission denied");
        }
        match name.as_str() {
            "login" => self.login(request, id, now),
            "challenge" => self.challenge(request, id),
            "logoff" => {
                let mut buf = MessageBuf::new();
                buf.response("Goodbye", id)
                    .header("Message", "Thanks for all the fish.")
                    .end();
                Answer {
                    close: true,
                    ..Answer::of(buf)
                }
            }
            "ping" => {
                let unix = self.unix_now(now);
                let mut buf = MessageBuf::new();
                buf.response("Success", id)
                    .header("Ping", "Pong")
                    .header(
                        "Timestamp",
                        format_args!("{}.{:06}", unix.as_secs(), unix.subsec_micros()),
                    )
                    .end();
                Answer::of(buf)
            }
            "command" => self.command(request, id, now),
            "coreshowchannels" => self.core_show_channels(id),
            "status" => self.status(request, id),
            "queuestatus" => self.queue_status(id),
            "queuesummary" => self.queue_summary(id),
            "originate" => self.originate(request, id),
            "userevent" => user_event(request, id),
            "events" => {
                self.mask = EventFilter::parse(request.get("EventMask").unwrap_or(""));
                let mut buf = MessageBuf::new();
                buf.response("Success", id)
                    .header("Events", if self.mask.is_on() { "On" } else { "Off" })
                    .end();
                Answer::of(buf)
            }
            "setvar" => self.set_var(request, id),
            "getvar" => self.get_var(request, id),
            // Asterisk 22's wording, with the action name as the client sent it.
            _ => error(
                id,
                &format!(
                    "Invalid/unknown command: {}. Use Action: ListCommands to show available commands.",
                    request.get("Action").unwrap_or_default()
                ),
            ),
        }
    }

    fn login(&mut self, request: &Request, id: Option<&str>, now: Instant) -> Answer {
        if self.user.is_some() {
            return success(id, "Already authenticated");
        }
        let username = request.get("Username").unwrap_or("");
        let md5 = request
            .get("AuthType")
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("md5"));
        let accepted = match self.config.secret_of(username) {
            None => false,
            Some(secret) if md5 => match (&self.challenge, request.get("Key")) {
                (Some(challenge), Some(key)) => {
                    key.eq_ignore_ascii_case(&md5_key(challenge, secret))
                }
                _ => false,
            },
            Some(secret) => request.get("Secret") == Some(secret),
        };
        if !accepted {
            // PROTOCOL-NOTES 11: answered after a pause, then the server disconnects.
            return Answer {
                delay: self.config.auth_failure_delay,
                login: Some(false),
                close: true,
                ..error(id, "Authentication failed")
            };
        }
        self.user = Some(username.to_owned());
        self.mask = request
            .get("Events")
            .map_or(EventFilter::All, EventFilter::parse);
        let uptime = self.uptime(now).as_secs();
        let mut booted = MessageBuf::new();
        booted
            .header("Event", "FullyBooted")
            .header("Privilege", "system,all")
            .header("Uptime", uptime)
            .header("LastReload", uptime)
            .header("Status", "Fully Booted")
            .end();
        Answer {
            login: Some(true),
            events: vec![SimEvent {
                class: CLASS_SYSTEM,
                bytes: booted.into_bytes(),
                broadcast: false,
            }],
            ..success(id, "Authentication accepted")
        }
    }

    fn challenge(&mut self, request: &Request, id: Option<&str>) -> Answer {
        let md5 = request
            .get("AuthType")
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("md5"));
        if !md5 {
            return error(id, "Must specify AuthType");
        }
        // Asterisk keeps the first challenge of a session.
        let challenge = match &self.challenge {
            Some(challenge) => challenge.clone(),
            None => {
                let challenge = self.rng.below(1 << 31).to_string();
                self.challenge = Some(challenge.clone());
                challenge
            }
        };
        let mut buf = MessageBuf::new();
        buf.response("Success", id)
            .header("Challenge", challenge)
            .end();
        Answer::of(buf)
    }

    fn command(&mut self, request: &Request, id: Option<&str>, now: Instant) -> Answer {
        let command = request.get("Command").unwrap_or("").trim();
        let (known, lines) = match self.command_output(command, now) {
            Some(lines) => (true, lines),
            None => (
                false,
                vec![format!(
                    "No such command '{command}' (type 'core show help {command}' for other possible commands)"
                )],
            ),
        };
        let mut buf = MessageBuf::new();
        match self.config.command_format {
            CommandFormat::Modern => {
                buf.response(if known { "Success" } else { "Error" }, id)
                    .header("Message", "Command output follows");
                if lines.is_empty() {
                    buf.header("Output", "");
                }
                for line in &lines {
                    buf.header("Output", line);
                }
                buf.end();
            }
            CommandFormat::Legacy => {
                buf.header("Response", "Follows")
                    .header("Privilege", "Command")
                    .action_id(id);
                for line in &lines {
                    buf.raw(line.as_bytes()).raw(b"\n");
                }
                buf.raw(b"--END COMMAND--\r\n\r\n");
            }
        }
        Answer::of(buf)
    }

    /// The output lines of a known CLI command; `None` for an unknown one.
    fn command_output(&self, command: &str, now: Instant) -> Option<Vec<String>> {
        let words: Vec<String> = command
            .split_whitespace()
            .map(str::to_ascii_lowercase)
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["core", "show", "version"] => Some(vec![VERSION_LINE.to_owned()]),
            ["core", "show", "uptime"] => {
                let uptime = human_duration(self.uptime(now).as_secs());
                Some(vec![
                    format!("System uptime: {uptime}"),
                    format!("Last reload: {uptime}"),
                ])
            }
            ["core", "show", "help"] => Some(help_lines()),
            ["sim", "output", count] => {
                let count: usize = count.parse().ok()?;
                (count <= MAX_SIM_OUTPUT_LINES)
                    .then(|| (1..=count).map(|i| sim_output_line(i, count)).collect())
            }
            _ => None,
        }
    }

    /// Starts a list: `Response: Success`, `EventList: start`, `Message: ...`.
    fn list_start(id: Option<&str>, message: &str) -> MessageBuf {
        let mut buf = MessageBuf::new();
        buf.response("Success", id)
            .header("EventList", "start")
            .header("Message", message)
            .end();
        buf
    }

    /// Ends a list with its completion event and wraps it up.
    fn list_end(
        mut buf: MessageBuf,
        id: Option<&str>,
        complete: &str,
        items: usize,
        extra: &[(&str, String)],
    ) -> Answer {
        buf.header("Event", complete)
            .action_id(id)
            .header("EventList", "Complete")
            .header("ListItems", items);
        for (key, value) in extra {
            buf.header(key, value);
        }
        buf.end();
        Answer {
            list_items: items as u64,
            ..Answer::of(buf)
        }
    }

    fn core_show_channels(&mut self, id: Option<&str>) -> Answer {
        let n = self.config.list_size;
        let mut buf = Self::list_start(id, "Channels will follow");
        for i in 1..=n {
            let uniqueid = self.uniqueid(i as u64);
            buf.header("Event", "CoreShowChannel")
                .action_id(id)
                .header("Channel", channel_name(i))
                .header("ChannelState", 6)
                .header("ChannelStateDesc", "Up")
                .header("CallerIDNum", format_args!("{}", 100 + i))
                .header("CallerIDName", format_args!("Sim {i}"))
                .header("ConnectedLineNum", "<unknown>")
                .header("ConnectedLineName", "<unknown>")
                .header("Language", "en")
                .header("AccountCode", "")
                .header("Context", "default")
                .header("Exten", "100")
                .header("Priority", 1)
                .header("Uniqueid", &uniqueid)
                .header("Linkedid", &uniqueid)
                .header("Application", "Wait")
                .header("ApplicationData", 3600)
                .header("Duration", "00:00:01")
                .header("BridgeId", "")
                .end();
        }
        Self::list_end(buf, id, "CoreShowChannelsComplete", n, &[])
    }

    fn status(&mut self, request: &Request, id: Option<&str>) -> Answer {
        let wanted = request
            .get("Channel")
            .map(str::trim)
            .filter(|c| !c.is_empty());
        let channels: Vec<usize> = (1..=self.config.list_size)
            .filter(|&i| wanted.is_none_or(|w| w.eq_ignore_ascii_case(&channel_name(i))))
            .collect();
        if wanted.is_some() && channels.is_empty() {
            // PROTOCOL-NOTES 20: an empty result comes as an error.
            return error(id, "No such channel");
        }
        let mut buf = Self::list_start(id, "Channel status will follow");
        for &i in &channels {
            let uniqueid = self.uniqueid(i as u64);
            // Asterisk 22 puts `Privilege: Call` on these items and the ActionID last.
            buf.header("Event", "Status")
                .header("Privilege", "Call")
                .header("Channel", channel_name(i))
                .header("ChannelState", 6)
                .header("ChannelStateDesc", "Up")
                .header("CallerIDNum", format_args!("{}", 100 + i))
                .header("CallerIDName", format_args!("Sim {i}"))
                .header("ConnectedLineNum", "<unknown>")
                .header("ConnectedLineName", "<unknown>")
                .header("Language", "en")
                .header("AccountCode", "")
                .header("Context", "default")
                .header("Exten", "100")
                .header("Priority", 1)
                .header("Uniqueid", &uniqueid)
                .header("Linkedid", &uniqueid)
                .header("Type", "PJSIP")
                .header("DNID", "")
                .header("TimeToHangup", 0)
                .header("BridgeID", "")
                .header("Application", "Wait")
                .header("Data", 3600)
                .header("Seconds", 1)
                .action_id(id)
                .end();
        }
        let count = channels.len();
        Self::list_end(
            buf,
            id,
            "StatusComplete",
            count,
            &[("Items", count.to_string())],
        )
    }

    fn queue_status(&mut self, id: Option<&str>) -> Answer {
        let n = self.config.list_size;
        let mut buf = Self::list_start(id, "Queue status will follow");
        for i in 1..=n {
            if i == 1 {
                buf.header("Event", "QueueParams")
                    .header("Queue", "support")
                    .header("Max", 0)
                    .header("Strategy", "ringall")
                    .header("Calls", 0)
                    .header("Holdtime", 0)
                    .header("TalkTime", 0)
                    .header("Completed", 0)
                    .header("Abandoned", 0)
                    .header("ServiceLevel", 0)
                    .header("ServicelevelPerf", "0.0")
                    .header("ServicelevelPerf2", "0.0")
                    .header("Weight", 0);
            } else {
                let agent = format!("PJSIP/agent-{i}");
                buf.header("Event", "QueueMember")
                    .header("Queue", "support")
                    .header("Name", format_args!("Agent {i}"))
                    .header("Location", &agent)
                    .header("StateInterface", &agent)
                    .header("Membership", "static")
                    .header("Penalty", 0)
                    .header("CallsTaken", 0)
                    .header("LastCall", 0)
                    .header("LastPause", 0)
                    .header("LoginTime", self.unix_at_created.as_secs())
                    .header("InCall", 0)
                    .header("Status", 1)
                    .header("Paused", 0)
                    .header("PausedReason", "")
                    .header("Wrapuptime", 0);
            }
            buf.action_id(id).end();
        }
        Self::list_end(buf, id, "QueueStatusComplete", n, &[])
    }

    fn queue_summary(&mut self, id: Option<&str>) -> Answer {
        let n = self.config.list_size;
        let mut buf = Self::list_start(id, "Queue summary will follow");
        for i in 1..=n {
            let queue = if i == 1 {
                "support".to_owned()
            } else {
                format!("queue-{i}")
            };
            buf.header("Event", "QueueSummary")
                .header("Queue", queue)
                .header("LoggedIn", 0)
                .header("Available", 0)
                .header("Callers", 0)
                .header("HoldTime", 0)
                .header("TalkTime", 0)
                .header("LongestHoldTime", 0)
                .action_id(id)
                .end();
        }
        Self::list_end(buf, id, "QueueSummaryComplete", n, &[])
    }

    fn originate(&mut self, request: &Request, id: Option<&str>) -> Answer {
        // PROTOCOL-NOTES 25: input errors come back at once.
        let Some(channel) = request
            .get("Channel")
            .map(str::trim)
            .filter(|c| !c.is_empty())
        else {
            return error(id, "Channel not specified");
        };
        if !channel.contains('/') {
            return error(id, "Invalid channel");
        }
        let reason = originate_reason(channel);
        let answered = reason == 4;
        if !request.get("Async").is_some_and(is_true) {
            // PROTOCOL-NOTES 27: the session blocks until the outcome; no event.
            let answer = if answered {
                success(id, "Originate successfully queued")
            } else {
                error(id, "Originate failed")
            };
            return Answer {
                delay: self.config.originate_delay,
                ..answer
            };
        }
        self.originates += 1;
        let mut event = MessageBuf::new();
        event
            .header("Event", "OriginateResponse")
            .header("Privilege", "call,all")
            .action_id(id)
            .header("Response", if answered { "Success" } else { "Failure" })
            .header("Channel", channel);
        for key in ["Context", "Exten", "Application", "Data"] {
            if let Some(value) = request.get(key) {
                event.header(key, value);
            }
        }
        let uniqueid = if answered {
            self.uniqueid(1000 + self.originates)
        } else {
            "<unknown>".to_owned()
        };
        event
            .header("Reason", reason)
            .header("Uniqueid", uniqueid)
            .header("CallerIDNum", "<unknown>")
            .header("CallerIDName", "<unknown>")
            .end();
        Answer {
            later: Some((
                self.config.originate_delay,
                SimEvent {
                    class: CLASS_CALL,
                    bytes: event.into_bytes(),
                    broadcast: true,
                },
            )),
            ..success(id, "Originate successfully queued")
        }
    }

    fn set_var(&mut self, request: &Request, id: Option<&str>) -> Answer {
        let Some(variable) = request.get("Variable").filter(|v| !v.is_empty()) else {
            return error(id, "No variable specified");
        };
        let key = var_key(request.get("Channel"), variable);
        let value = request.get("Value").unwrap_or("").to_owned();
        self.vars.insert(key, value);
        success(id, "Variable Set")
    }

    fn get_var(&mut self, request: &Request, id: Option<&str>) -> Answer {
        let Some(variable) = request.get("Variable").filter(|v| !v.is_empty()) else {
            return error(id, "No variable specified");
        };
        let key = var_key(request.get("Channel"), variable);
        let value = self.vars.get(&key).map_or("", String::as_str);
        let mut buf = MessageBuf::new();
        buf.response("Success", id)
            .header("Variable", variable)
            .header("Value", value)
            .end();
        Answer::of(buf)
    }
}

/// `UserEvent`: an ack, then the event with every header of the request but `Action`
/// and `UserEvent`, the ActionID included (PROTOCOL-NOTES 17).
fn user_event(request: &Request, id: Option<&str>) -> Answer {
    let Some(name) = request.get("UserEvent").filter(|v| !v.is_empty()) else {
        return error(id, "Missing UserEvent");
    };
    let mut event = MessageBuf::new();
    event
        .header("Event", "UserEvent")
        .header("Privilege", "user,all")
        .header("UserEvent", name);
    for (key, value) in request.headers() {
        if !key.eq_ignore_ascii_case("Action") && !key.eq_ignore_ascii_case("UserEvent") {
            event.header(key, value);
        }
    }
    event.end();
    Answer {
        events: vec![SimEvent {
            class: CLASS_USER,
            bytes: event.into_bytes(),
            broadcast: true,
        }],
        ..success(id, "Event Sent")
    }
}

/// The outcome of an Originate by its channel: `Reason` 5 busy, 8 congestion, 3 no
/// answer, 0 failed, else 4 answered (PROTOCOL-NOTES 26).
pub(crate) fn originate_reason(channel: &str) -> u32 {
    let channel = channel.to_ascii_lowercase();
    if channel.contains("busy") {
        5
    } else if channel.contains("congestion") {
        8
    } else if channel.contains("noanswer") {
        3
    } else if channel.contains("fail") {
        0
    } else {
        4
    }
}

/// The name of list channel `i` (1-based).
pub(crate) fn channel_name(i: usize) -> String {
    format!("PJSIP/sim-{i:08x}")
}

/// Line `i` of `sim output count`.
pub(crate) fn sim_output_line(i: usize, count: usize) -> String {
    format!("sim output line {i} of {count}")
}

/// The lines of `core show help`: a few real commands, then numbered filler.
pub(crate) fn help_lines() -> Vec<String> {
    const HEAD: [(&str, &str); 5] = [
        ("!", "Execute a shell command"),
        (
            "core show help",
            "Display help list, or specific help on a command",
        ),
        ("core show uptime", "Show uptime information"),
        ("core show version", "Display version info"),
        ("sim output", "Print N numbered lines (simulator only)"),
    ];
    let mut lines: Vec<String> = HEAD
        .iter()
        .map(|(command, text)| format!("{command:<30} -- {text}"))
        .collect();
    let mut entry = 1;
    while lines.len() < HELP_LINES {
        let command = format!("sim help entry {entry:03}");
        lines.push(format!("{command:<30} -- Simulated help entry {entry}"));
        entry += 1;
    }
    lines
}

/// A duration the way the CLI prints it: `10 minutes, 49 seconds`.
fn human_duration(secs: u64) -> String {
    let units = [
        (secs / 86_400, "day"),
        (secs / 3600 % 24, "hour"),
        (secs / 60 % 60, "minute"),
        (secs % 60, "second"),
    ];
    let parts: Vec<String> = units
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n} {unit}{}", if *n == 1 { "" } else { "s" }))
        .collect();
    if parts.is_empty() {
        "0 seconds".to_owned()
    } else {
        parts.join(", ")
    }
}

fn var_key(channel: Option<&str>, variable: &str) -> String {
    match channel.map(str::trim).filter(|c| !c.is_empty()) {
        Some(channel) => format!("{channel}/{variable}"),
        None => variable.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{EventFilter, help_lines, human_duration, md5_key, originate_reason};

    #[test]
    fn event_filters() {
        assert_eq!(EventFilter::parse("on"), EventFilter::All);
        assert_eq!(EventFilter::parse(""), EventFilter::All);
        assert_eq!(EventFilter::parse("off"), EventFilter::Off);
        assert_eq!(EventFilter::parse("0"), EventFilter::Off);
        let classes = EventFilter::parse("call, System");
        assert!(classes.allows("call") && classes.allows("system"));
        assert!(!classes.allows("user"));
        assert!(EventFilter::parse("user,all").allows("call"));
    }

    #[test]
    fn md5_key_is_lowercase_hex() {
        // md5("") is well known.
        assert_eq!(md5_key("", ""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_key("12", "3"), md5_key("1", "23"));
    }

    #[test]
    fn outcomes_and_texts() {
        assert_eq!(originate_reason("PJSIP/busy-100"), 5);
        assert_eq!(originate_reason("Local/congestion@test"), 8);
        assert_eq!(originate_reason("Local/NoAnswer@test"), 3);
        assert_eq!(originate_reason("PJSIP/100"), 4);
        assert_eq!(help_lines().len(), 300);
        assert!(help_lines().iter().all(|l| !l.starts_with(' ')));
        assert_eq!(human_duration(649), "10 minutes, 49 seconds");
        assert_eq!(human_duration(3601), "1 hour, 1 second");
        assert_eq!(human_duration(0), "0 seconds");
    }
}
