//! The `ami` configuration file: `ami.toml`, the TOML counterpart of the PHP
//! package's `config/ami-client.php` and its `.env` (usage guide §3).
//!
//! # Which file
//! `--config FILE`, else the file named by `AMI_CONFIG`, else `./ami.toml`
//! ([`config_path`]). `ami.example.toml` at the repository root documents every
//! key with its default.
//!
//! # Schema
//! ```toml
//! default = "node_1"            # server used when a command names none
//! [servers.node_1]              # one table per server; the key names it
//! host = "10.0.0.5"             # required; an IP literal unless enforce_ip_endpoints = false
//! port = 5038
//! username = "admin"            # required
//! secret = "${AMI_NODE1_SECRET}" # required, never printed
//! auth = "plain"                # or "md5"
//! events = "on"                 # "off", or classes: ["call", "system"] / "call,system"
//! tls = false
//! tls_ca = "ca.pem"             # optional; needs tls = true
//! tls_roots = "system"          # or "bundled" (default); without tls_ca
//! connect_timeout = 10          # per-server overrides of [options]
//! read_timeout = 30
//! write_buffer_limit = 5242880
//! [options]                     # shared by all servers; see `Options`
//! [listen]
//! tick_timeout_ms = 25
//! [gateway]                     # `ami gateway`; see `GatewaySettings`
//! redis_url = "redis://127.0.0.1:6379"
//! ```
//! Unknown keys anywhere are errors, and every error names the key by its full
//! path, e.g. `servers.node_1.port: expected an integer 1..=65535, got "abc"`.
//!
//! # Interpolation
//! Every string value (also inside arrays) may contain `${VAR}` (an error when
//! `VAR` is unset), `${VAR:-default}` (the literal `default` when `VAR` is unset or
//! empty) and `$$` (a literal `$`); any other `$` is an error. Expansion happens
//! before type checking, and a string that then holds a whole number, a decimal
//! number or `true`/`false` is accepted where the schema wants one, so
//! `port = "${AMI_NODE1_PORT:-5038}"` works like the seeds' `env()`. Expanded text
//! is not expanded again. `default`, `tls_ca` and `options.memory_limit` treat
//! an empty string as "not set", so `"${VAR:-}"` can leave them out.
//!
//! # Environment overrides
//! As the seeds' `.env` does, some `AMI_*` variables replace file values:
//!
//! | variable | replaces |
//! | --- | --- |
//! | `AMI_DEFAULT_SERVER` | `default` |
//! | `AMI_<SERVER>_HOST`, `_PORT`, `_USERNAME`, `_SECRET` | `servers.<server>.host` … |
//! | `AMI_LISTEN_TICK_TIMEOUT_MS` | `listen.tick_timeout_ms` |
//! | `AMI_GATEWAY_REDIS_URL` | `gateway.redis_url` |
//!
//! `<SERVER>` is the server key upper-cased with every character other than an
//! ASCII letter or digit replaced by `_` ([`env_prefix`]): `node_1` →
//! `AMI_NODE_1_HOST`. Overrides only apply to servers the file defines, are used
//! verbatim (no `${}` expansion, so a secret may contain `$`), and are ignored
//! when set to the empty string.
//!
//! **Precedence:** environment override > value in the file (after `${}`
//! expansion) > built-in default.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ami_mio::ami_cluster::PacingConfig;
pub use ami_mio::tls::Roots as TlsRoots;
use ami_proto::action::EventMask;
use ami_proto::redact::{RedactError, Redactor};
use ami_proto::{AuthMethod, Config, Limits, Secret};
use serde::Deserialize;
use toml::{Table, Value};

/// File read when neither `--config` nor [`CONFIG_ENV`] names one.
pub const DEFAULT_PATH: &str = "ami.toml";

/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "AMI_CONFIG";

/// Environment variable overriding the top-level `default`.
pub const DEFAULT_SERVER_ENV: &str = "AMI_DEFAULT_SERVER";

/// Environment variable overriding `gateway.redis_url`.
pub const REDIS_URL_ENV: &str = "AMI_GATEWAY_REDIS_URL";

/// Environment variable overriding `listen.tick_timeout_ms`.
pub const TICK_TIMEOUT_ENV: &str = "AMI_LISTEN_TICK_TIMEOUT_MS";

/// Longest ActionID allowed: longer ones corrupt Asterisk's buffers
/// (PROTOCOL-NOTES 7), so `options.max_action_id_length` may not exceed it.
pub const MAX_ACTION_ID_LENGTH: usize = 64;

/// Largest value of a millisecond key (one day).
const MAX_MILLIS: i64 = 86_400_000;

/// Largest value of an integer key stored as `usize`.
const USIZE_MAX: i64 = if usize::BITS < 64 {
    usize::MAX as i64
} else {
    i64::MAX
};

/// Largest value of an integer key stored as `u32`.
const U32_MAX: i64 = u32::MAX as i64;

/// Why the configuration could not be loaded. The messages name the key by its
/// full path and never contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A parse or validation error in a file read by [`load`].
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        source: Box<ConfigError>,
    },
    /// The text is not valid TOML.
    #[error("invalid TOML: {message}")]
    Toml {
        /// Where (line and column, 1-based) and what; never a source excerpt.
        message: String,
    },
    /// A key the schema does not have.
    #[error("{key}: unknown key (expected one of: {expected})")]
    UnknownKey {
        /// Full path of the key, e.g. `servers.node_1.prot`.
        key: String,
        /// The keys allowed in that table, comma separated.
        expected: String,
    },
    /// A required key is absent.
    #[error("{key}: missing required key")]
    MissingKey {
        /// Full path of the key, e.g. `servers.node_1.secret`.
        key: String,
    },
    /// A value of the wrong type or out of range.
    #[error("{key}: {message}")]
    BadValue {
        /// Full path of the key, e.g. `servers.node_1.port`.
        key: String,
        /// What was expected and what was found (secrets are never shown).
        message: String,
    },
    /// `${VAR}` names an unset variable and gives no default.
    #[error(
        "{key}: environment variable {var} is not set (use ${{{var}:-default}} for a fallback)"
    )]
    MissingVariable {
        /// Full path of the key whose value refers to the variable.
        key: String,
        /// The variable.
        var: String,
    },
    /// A server key that the configuration does not define.
    #[error("unknown server `{key}` (configured: {})", known.join(", "))]
    UnknownServer {
        /// The key asked for.
        key: String,
        /// The configured keys, sorted.
        known: Vec<String>,
    },
    /// The configuration defines no server.
    #[error("no servers configured: add a [servers.NAME] table")]
    NoServers,
    /// No server was named and `default` does not pick one.
    #[error(
        "no default server: set `default` (or {DEFAULT_SERVER_ENV}) to one of: {}",
        known.join(", ")
    )]
    NoDefault {
        /// The configured keys, sorted.
        known: Vec<String>,
    },
    /// The connection settings of a server cannot work: the core's
    /// [`Config::validate`] refused them (e.g. a frame limit above what the parser
    /// can honour, or a command output limit below the frame limit).
    #[error("{key}: {source}")]
    Unworkable {
        /// Full path of the key that set the refused value, e.g.
        /// `options.max_frame_size` or `servers.node_1.read_timeout`.
        key: String,
        /// What the core refused.
        source: ami_proto::ConfigError,
    },
    /// A redaction pattern is not a valid regular expression.
    #[error("{key}: invalid regular expression {pattern:?}: {message}")]
    InvalidPattern {
        /// Full path of the pattern, e.g. `options.redaction_key_patterns[1]`.
        key: String,
        /// The pattern as configured.
        pattern: String,
        /// Why the regex engine refused it.
        message: String,
    },
}

/// The whole configuration file, validated and with defaults applied.
#[derive(Debug, Clone)]
pub struct FileConfig {
    /// The server used when a command names none: `default` (or
    /// `AMI_DEFAULT_SERVER`), else the only server when there is exactly one.
    /// Always a key of `servers` when set.
    pub default: Option<String>,
    /// The servers by key (at least one).
    pub servers: BTreeMap<String, ServerSettings>,
    /// The `[options]` table.
    pub options: Options,
    /// The `[listen]` table.
    pub listen: ListenSettings,
    /// The `[gateway]` table.
    pub gateway: GatewaySettings,
}

impl FileConfig {
    /// The server named `key`; the error lists the configured keys.
    pub fn server(&self, key: &str) -> Result<&ServerSettings, ConfigError> {
        self.servers
            .get(key)
            .ok_or_else(|| ConfigError::UnknownServer {
                key: key.to_owned(),
                known: self.server_keys(),
            })
    }

    /// The default server (see [`FileConfig::default`]).
    pub fn default_server(&self) -> Result<&ServerSettings, ConfigError> {
        match &self.default {
            Some(key) => self.server(key),
            None => Err(ConfigError::NoDefault {
                known: self.server_keys(),
            }),
        }
    }

    /// The configured server keys, sorted.
    fn server_keys(&self) -> Vec<String> {
        self.servers.keys().cloned().collect()
    }
}

/// One `[servers.KEY]` table, merged with `[options]` and the overrides.
///
/// `Debug` masks the secret.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The server's key in `servers`.
    pub key: String,
    /// IP literal, or (when `enforce_ip_endpoints = false`) a host name that the
    /// system resolver looks up before every connect attempt, off the tick.
    pub host: String,
    /// TCP port (5038).
    pub port: u16,
    /// Whether to speak TLS (false).
    pub tls: bool,
    /// CA bundle to verify the server with; only with `tls`. [`load`] makes a
    /// relative path relative to the configuration file's directory.
    pub tls_ca: Option<PathBuf>,
    /// The roots trusted without `tls_ca`: `bundled` (Mozilla's, in the binary; the
    /// default) or `system` (the OS trust store).
    pub tls_roots: TlsRoots,
    /// The connection settings: credentials, `auth`, `events`, the `[options]`
    /// limits and timeouts, and this server's overrides of them.
    pub connection: Config,
    /// The call pacing of this server: `[options]`'s, with its own keys over them.
    pub pacing: PacingConfig,
}

/// The `[options]` table: settings shared by every server, with the seeds'
/// defaults ([`Options::default`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `connect_timeout` (10 s; may be fractional).
    pub connect_timeout: Duration,
    /// `read_timeout` (30 s): banner and login steps, and the default action
    /// timeout.
    pub read_timeout: Duration,
    /// `heartbeat_interval` (15 s; 0 disables heartbeats).
    pub heartbeat_interval: Duration,
    /// `max_frame_size` in bytes (65,536).
    pub max_frame_size: usize,
    /// `max_command_output` in bytes (1,048,576).
    pub max_command_output: usize,
    /// `max_action_id_length` (64, the most allowed).
    pub max_action_id_length: usize,
    /// `redaction_keys`: extra header names to mask ([]).
    pub redaction_keys: Vec<String>,
    /// `redaction_key_patterns`: regexes matched against header names ([]).
    pub redaction_key_patterns: Vec<String>,
    /// `redaction_value_patterns`: regexes masked inside any value ([]).
    pub redaction_value_patterns: Vec<String>,
    /// `enforce_ip_endpoints` (true): hosts must be IP literals.
    pub enforce_ip_endpoints: bool,
    /// `event_drop_log_interval_ms` (1,000 ms).
    pub event_drop_log_interval: Duration,
    /// `circuit_failure_threshold`: failed connects that open the circuit (5).
    pub circuit_failure_threshold: u32,
    /// `circuit_cooldown`: how long an open circuit waits (30 s).
    pub circuit_cooldown: Duration,
    /// `circuit_half_open_max_probes`: connects tried while half open (1).
    pub circuit_half_open_max_probes: u32,
    /// `max_pending_actions` (5,000).
    pub max_pending_actions: usize,
    /// `event_queue_capacity` (10,000).
    pub event_queue_capacity: usize,
    /// `write_buffer_limit` in bytes (5,242,880); a server may override it.
    pub write_buffer_limit: usize,
    /// `blocked_events`: event names dropped on arrival ([]).
    pub blocked_events: Vec<String>,
    /// `priority_events`: event names delivered first ([]).
    pub priority_events: Vec<String>,
    /// `memory_limit` in bytes (134,217,728): what the process may hold for all its
    /// servers together (see `ami_proto::budget`).
    pub memory_limit: usize,
    /// `max_calls_per_second`, `calls_burst` (1), `max_concurrent_calls`: how fast
    /// `ami originate` starts calls on each server, and how many may be up at once
    /// (no limits by default); a server's own keys override them.
    pub pacing: PacingConfig,
}

impl Default for Options {
    /// The seeds' defaults; those the connection also has come from
    /// [`ami_proto::Config::new`], so the two cannot drift apart.
    fn default() -> Self {
        let base = Config::new("", "", "");
        Options {
            connect_timeout: base.connect_timeout,
            read_timeout: base.read_timeout,
            heartbeat_interval: base.heartbeat_interval,
            max_frame_size: base.limits.max_frame_size,
            max_command_output: base.limits.max_command_output,
            max_action_id_length: MAX_ACTION_ID_LENGTH,
            redaction_keys: Vec::new(),
            redaction_key_patterns: Vec::new(),
            redaction_value_patterns: Vec::new(),
            enforce_ip_endpoints: true,
            event_drop_log_interval: base.event_drop_log_interval,
            circuit_failure_threshold: 5,
            circuit_cooldown: Duration::from_secs(30),
            circuit_half_open_max_probes: 1,
            max_pending_actions: base.max_pending_actions,
            event_queue_capacity: base.event_queue_capacity,
            write_buffer_limit: base.write_buffer_limit,
            blocked_events: Vec::new(),
            priority_events: Vec::new(),
            memory_limit: ami_proto::budget::DEFAULT_MEMORY_LIMIT,
            pacing: PacingConfig::default(),
        }
    }
}

impl Options {
    /// The redactor configured by `redaction_keys`, `redaction_key_patterns` and
    /// `redaction_value_patterns`; an invalid pattern is reported with its key. Every
    /// server's [`connection`](ServerSettings::connection) settings carry it.
    pub fn redactor(&self) -> Result<Redactor, ConfigError> {
        Redactor::new(
            &self.redaction_keys,
            &self.redaction_key_patterns,
            &self.redaction_value_patterns,
        )
        .map_err(|RedactError::InvalidPattern { pattern, message }| {
            let key = [
                (
                    "options.redaction_key_patterns",
                    &self.redaction_key_patterns,
                ),
                (
                    "options.redaction_value_patterns",
                    &self.redaction_value_patterns,
                ),
            ]
            .into_iter()
            .find_map(|(key, list)| {
                let i = list.iter().position(|p| *p == pattern)?;
                Some(format!("{key}[{i}]"))
            })
            .unwrap_or_else(|| "options".to_owned());
            ConfigError::InvalidPattern {
                key,
                pattern,
                message,
            }
        })
    }
}

/// The `[listen]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSettings {
    /// `tick_timeout_ms`: the longest one tick of the listen loop waits for
    /// input, in milliseconds (25; 0 polls without waiting).
    pub tick_timeout_ms: u64,
    /// `outlet_queue_events`: events waiting for the outlet at most (1,000,000); past
    /// this, or past half of `options.memory_limit` in bytes, the oldest are dropped
    /// (reason `outlet_slow`).
    pub outlet_queue_events: usize,
}

impl Default for ListenSettings {
    fn default() -> Self {
        ListenSettings {
            tick_timeout_ms: 25,
            outlet_queue_events: 1_000_000,
        }
    }
}

/// How `ami gateway` picks a server for a request that names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `round_robin`: the healthy servers in turn.
    RoundRobin,
    /// `failover`: the first healthy server in the order of the config's keys.
    Failover,
    /// `health_aware`: the first server that is neither disconnected nor degraded.
    HealthAware,
}

impl Route {
    /// The route named `name` (`round_robin`, `failover`, `health_aware`).
    pub fn parse(name: &str) -> Option<Route> {
        match name {
            "round_robin" => Some(Route::RoundRobin),
            "failover" => Some(Route::Failover),
            "health_aware" => Some(Route::HealthAware),
            _ => None,
        }
    }
}

/// The `[gateway]` table: where `ami gateway` meets Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// `redis_url` (env `AMI_GATEWAY_REDIS_URL`): `redis://127.0.0.1:6379` by default.
    pub redis_url: String,
    /// `events_stream`: each server's events stream, `{server}` standing for its key
    /// (`ami:events:{server}`; it must contain `{server}`).
    pub events_stream: String,
    /// `events_maxlen`: entries an events stream keeps, about (`XADD ... MAXLEN ~`);
    /// 1,000,000. The status stream keeps as many.
    pub events_maxlen: usize,
    /// `status_stream`: health, dropped, session lost and back (`ami:status`).
    pub status_stream: String,
    /// `calls_stream`: each server's ended calls (`ami:calls:{server}`; it must
    /// contain `{server}`).
    pub calls_stream: String,
    /// `actions_stream`: the stream every gateway of the group reads requests from
    /// (`ami:actions`).
    pub actions_stream: String,
    /// `server_actions_stream`: the stream of requests for one server, read only by
    /// the gateway that owns it (`ami:actions:{server}`; it must contain `{server}`).
    pub server_actions_stream: String,
    /// `group`: the consumer group on the action streams (`ami-gateway`).
    pub group: String,
    /// `consumer`: this gateway's name in the group, unique per gateway (the host
    /// name).
    pub consumer: String,
    /// `max_in_flight`: requests taken from Redis and not yet completed, at most
    /// (1,000); the rest wait in Redis.
    pub max_in_flight: usize,
    /// `route`: how a request that names no server picks one (`round_robin`).
    pub route: Route,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            events_stream: "ami:events:{server}".to_owned(),
            events_maxlen: 1_000_000,
            status_stream: "ami:status".to_owned(),
            calls_stream: "ami:calls:{server}".to_owned(),
            actions_stream: "ami:actions".to_owned(),
            server_actions_stream: "ami:actions:{server}".to_owned(),
            group: "ami-gateway".to_owned(),
            consumer: host_name(),
            max_in_flight: 1_000,
            route: Route::RoundRobin,
        }
    }
}

/// This machine's host name (`gateway` when it cannot be read).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "gateway".to_owned())
}

/// The file `ami` reads: `explicit` (from `--config`), else `AMI_CONFIG` when set
/// and non-empty, else `./ami.toml`.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    select_path(explicit, &|name| std::env::var(name).ok())
}

/// Reads and parses the configuration file chosen by [`config_path`], with the
/// process environment for `${VAR}` and the `AMI_*` overrides. A relative
/// `tls_ca` is made relative to the file's directory. Errors in the content are
/// wrapped in [`ConfigError::InFile`].
pub fn load(explicit: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let path = config_path(explicit);
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
        path: path.clone(),
        source,
    })?;
    let mut config =
        parse(&text, &|name| std::env::var(name).ok()).map_err(|e| ConfigError::InFile {
            path: path.clone(),
            source: Box::new(e),
        })?;
    let dir = path.parent().unwrap_or(Path::new(""));
    for server in config.servers.values_mut() {
        if let Some(ca) = &mut server.tls_ca
            && ca.is_relative()
        {
            *ca = dir.join(&*ca);
        }
    }
    Ok(config)
}

/// Parses and validates configuration text. `env` looks up environment
/// variables, for `${VAR}` and the `AMI_*` overrides; it returns `None` for an
/// unset variable. `tls_ca` paths are kept as written.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<FileConfig, ConfigError> {
    let root: Table = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let normalized = normalize_root(root, env)?;
    let raw: RawFile = Value::Table(normalized)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Toml {
            message: e.message().to_owned(),
        })?;
    build(raw)
}

/// The prefix of a server's override variables: `AMI_`, the key upper-cased with
/// every character other than an ASCII letter or digit replaced by `_`, and `_`
/// (`node_1` → `AMI_NODE_1_`).
pub fn env_prefix(server_key: &str) -> String {
    let mut prefix = String::with_capacity(server_key.len() + 5);
    prefix.push_str("AMI_");
    prefix.extend(server_key.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    prefix.push('_');
    prefix
}

/// [`config_path`] with an injectable environment.
fn select_path(explicit: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_owned();
    }
    match env(CONFIG_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

// ---------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------

/// What a key accepts; [`normalize`] turns an accepted value into the shape the
/// raw structs deserialize.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A non-empty string without control characters.
    Text,
    /// Like `Text`, but the value never appears in an error.
    Secret,
    /// A string without control characters; empty means "not set".
    OptText,
    /// One of these words, case-insensitively; normalized to lowercase.
    Choice(&'static [&'static str]),
    /// `true`/`false`, or a string holding one.
    Bool,
    /// An integer in `min..=max`, or a string holding one.
    Int { min: i64, max: i64 },
    /// Like `Int`, but an empty string means "not set".
    OptInt { min: i64, max: i64 },
    /// Seconds as an integer or decimal number (or a string holding one) that
    /// fits a `Duration`; zero only when `zero_ok`. Normalized to a float. A
    /// duration too long for a deadline means no deadline (the core's rule).
    Secs { zero_ok: bool },
    /// A positive number (integer or decimal, or a string holding one), e.g. calls per
    /// second. Normalized to a float.
    Rate,
    /// Names: an array of strings, or one comma-separated string.
    Names,
    /// Regular expressions: an array of strings.
    Patterns,
    /// `on`, `off`, a boolean, or event classes as an array or a
    /// comma-separated string. Normalized to an array of strings.
    Events,
}

impl Kind {
    /// What the key expects, for error messages.
    fn describe(self) -> String {
        match self {
            Kind::Text | Kind::Secret => "a non-empty string".to_owned(),
            Kind::OptText => "a string".to_owned(),
            Kind::Choice(words) => {
                let words: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
                format!("one of {}", words.join(", "))
            }
            Kind::Bool => "true or false".to_owned(),
            Kind::Int { min, max } | Kind::OptInt { min, max } => {
                if max == i64::MAX || max == USIZE_MAX {
                    format!("an integer >= {min}")
                } else {
                    format!("an integer {min}..={max}")
                }
            }
            Kind::Secs { zero_ok: false } => "a number of seconds > 0".to_owned(),
            Kind::Rate => "a number > 0".to_owned(),
            Kind::Secs { zero_ok: true } => "a number of seconds >= 0 (0 disables)".to_owned(),
            Kind::Names => "an array of names or a comma-separated string".to_owned(),
            Kind::Patterns => "an array of non-empty strings".to_owned(),
            Kind::Events => {
                "\"on\", \"off\", or event classes as an array or a comma-separated string"
                    .to_owned()
            }
        }
    }
}

/// One key of a table.
#[derive(Debug, Clone, Copy)]
struct Field {
    /// The key.
    name: &'static str,
    /// What it accepts.
    kind: Kind,
    /// Whether the table must have it.
    required: bool,
    /// Said after the expected form when the value is refused.
    note: &'static str,
}

/// An optional key.
const fn field(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
        note: "",
    }
}

/// A required key.
const fn required(name: &'static str, kind: Kind) -> Field {
    Field {
        required: true,
        ..field(name, kind)
    }
}

/// An integer key of at least `min`, stored as `usize`.
const fn count(name: &'static str, min: i64) -> Field {
    field(
        name,
        Kind::Int {
            min,
            max: USIZE_MAX,
        },
    )
}

/// A duration key in seconds that must be positive.
const fn seconds(name: &'static str) -> Field {
    field(name, Kind::Secs { zero_ok: false })
}

/// Top-level keys.
const ROOT_KEYS: [&str; 5] = ["default", "servers", "options", "listen", "gateway"];

/// The `default` key.
const DEFAULT_FIELD: Field = field("default", Kind::OptText);

/// Keys of a `[servers.KEY]` table.
const SERVER_FIELDS: &[Field] = &[
    required("host", Kind::Text),
    field("port", Kind::Int { min: 1, max: 65535 }),
    required("username", Kind::Text),
    required("secret", Kind::Secret),
    field("auth", Kind::Choice(&["plain", "md5"])),
    field("events", Kind::Events),
    field("tls", Kind::Bool),
    field("tls_ca", Kind::OptText),
    field("tls_roots", Kind::Choice(&["bundled", "system"])),
    seconds("connect_timeout"),
    seconds("read_timeout"),
    count("write_buffer_limit", 1),
    field("max_calls_per_second", Kind::Rate),
    count("calls_burst", 1),
    count("max_concurrent_calls", 1),
];

/// Server keys that `AMI_<SERVER>_<KEY>` overrides.
const SERVER_OVERRIDES: [&str; 4] = ["host", "port", "username", "secret"];

/// Keys of `[options]`.
const OPTION_FIELDS: &[Field] = &[
    seconds("connect_timeout"),
    seconds("read_timeout"),
    field("heartbeat_interval", Kind::Secs { zero_ok: true }),
    count("max_frame_size", 1),
    count("max_command_output", 1),
    Field {
        note: "ActionIDs longer than 64 characters corrupt Asterisk's buffers",
        ..field(
            "max_action_id_length",
            Kind::Int {
                min: 1,
                max: MAX_ACTION_ID_LENGTH as i64,
            },
        )
    },
    field("redaction_keys", Kind::Names),
    field("redaction_key_patterns", Kind::Patterns),
    field("redaction_value_patterns", Kind::Patterns),
    field("enforce_ip_endpoints", Kind::Bool),
    field(
        "event_drop_log_interval_ms",
        Kind::Int {
            min: 0,
            max: MAX_MILLIS,
        },
    ),
    field(
        "circuit_failure_threshold",
        Kind::Int {
            min: 1,
            max: U32_MAX,
        },
    ),
    seconds("circuit_cooldown"),
    field(
        "circuit_half_open_max_probes",
        Kind::Int {
            min: 1,
            max: U32_MAX,
        },
    ),
    count("max_pending_actions", 1),
    count("event_queue_capacity", 1),
    count("write_buffer_limit", 1),
    field("blocked_events", Kind::Names),
    field("priority_events", Kind::Names),
    field(
        "memory_limit",
        Kind::OptInt {
            min: 1,
            max: i64::MAX,
        },
    ),
    field("max_calls_per_second", Kind::Rate),
    count("calls_burst", 1),
    count("max_concurrent_calls", 1),
];

/// Keys of `[listen]`.
const LISTEN_FIELDS: &[Field] = &[
    field(
        "tick_timeout_ms",
        Kind::Int {
            min: 0,
            max: MAX_MILLIS,
        },
    ),
    field(
        "outlet_queue_events",
        Kind::Int {
            min: 1,
            max: i64::MAX,
        },
    ),
];

/// Keys of `[gateway]`.
const GATEWAY_FIELDS: &[Field] = &[
    field("redis_url", Kind::Text),
    field("events_stream", Kind::Text),
    count("events_maxlen", 1),
    field("status_stream", Kind::Text),
    field("calls_stream", Kind::Text),
    field("actions_stream", Kind::Text),
    field("server_actions_stream", Kind::Text),
    field("group", Kind::Text),
    field("consumer", Kind::Text),
    count("max_in_flight", 1),
    field(
        "route",
        Kind::Choice(&["round_robin", "failover", "health_aware"]),
    ),
];

// ---------------------------------------------------------------------------
// Normalization: unknown keys, ${} expansion, overrides, types and ranges
// ---------------------------------------------------------------------------

/// The injectable environment.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The override variable of a key of a table, if it has one.
type Overrides<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Where a value came from.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// The file: strings are expanded.
    File,
    /// This override variable: used verbatim.
    Override(&'a str),
}

/// Checks the root table and every section against the schema, expands
/// `${}`, applies the overrides and normalizes the values.
fn normalize_root(mut root: Table, env: Env<'_>) -> Result<Table, ConfigError> {
    reject_unknown(&root, "", &ROOT_KEYS)?;
    let mut out = Table::new();

    let servers = match root.remove("servers") {
        None => Table::new(),
        Some(Value::Table(servers)) => servers,
        Some(other) => return Err(bad_type("servers", "a table of servers", &other)),
    };
    let mut prefixes: BTreeMap<String, String> = BTreeMap::new();
    let mut normalized_servers = Table::new();
    for (key, server) in servers {
        let path = join("servers", &key);
        if key.is_empty() {
            return Err(ConfigError::BadValue {
                key: path,
                message: "a server key must not be empty".to_owned(),
            });
        }
        let prefix = env_prefix(&key);
        if let Some(other) = prefixes.insert(prefix.clone(), key.clone()) {
            return Err(ConfigError::BadValue {
                key: path,
                message: format!(
                    "servers `{other}` and `{key}` share the override prefix {prefix}; rename one"
                ),
            });
        }
        let Value::Table(server) = server else {
            return Err(bad_type(&path, "a table", &server));
        };
        let overrides = |name: &str| {
            SERVER_OVERRIDES
                .contains(&name)
                .then(|| format!("{prefix}{}", name.to_ascii_uppercase()))
        };
        let server = normalize_section(server, &path, SERVER_FIELDS, &overrides, env)?;
        normalized_servers.insert(key, Value::Table(server));
    }
    if normalized_servers.is_empty() {
        return Err(ConfigError::NoServers);
    }

    let default = override_var(env, DEFAULT_SERVER_ENV);
    let default = match (default, root.remove("default")) {
        (Some(value), _) => (
            Some(Value::String(value)),
            Source::Override(DEFAULT_SERVER_ENV),
        ),
        (None, value) => (value, Source::File),
    };
    if let (Some(value), source) = default
        && let Some(value) = normalize(&DEFAULT_FIELD, "default", value, source, env)?
    {
        if let Some(name) = value.as_str()
            && !normalized_servers.contains_key(name)
        {
            let known: Vec<&str> = normalized_servers.keys().map(String::as_str).collect();
            let mut message = format!("no server `{name}` (configured: {})", known.join(", "));
            if let Source::Override(var) = source {
                let _ = write!(message, " (from {var})");
            }
            return Err(ConfigError::BadValue {
                key: "default".to_owned(),
                message,
            });
        }
        out.insert("default".to_owned(), value);
    }

    out.insert("servers".to_owned(), Value::Table(normalized_servers));

    let sections: [(&str, &[Field], Overrides<'_>); 3] = [
        ("options", OPTION_FIELDS, &|_| None),
        ("listen", LISTEN_FIELDS, &|name| {
            (name == "tick_timeout_ms").then(|| TICK_TIMEOUT_ENV.to_owned())
        }),
        ("gateway", GATEWAY_FIELDS, &|name| {
            (name == "redis_url").then(|| REDIS_URL_ENV.to_owned())
        }),
    ];
    for (name, fields, overrides) in sections {
        let table = match root.remove(name) {
            None => Table::new(),
            Some(Value::Table(table)) => table,
            Some(other) => return Err(bad_type(name, "a table", &other)),
        };
        let table = normalize_section(table, name, fields, overrides, env)?;
        out.insert(name.to_owned(), Value::Table(table));
    }
    Ok(out)
}

/// Normalizes one table. `overrides` gives the override variable of a key, if
/// it has one.
fn normalize_section(
    mut table: Table,
    path: &str,
    fields: &[Field],
    overrides: Overrides<'_>,
    env: Env<'_>,
) -> Result<Table, ConfigError> {
    let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
    reject_unknown(&table, path, &names)?;
    let mut out = Table::new();
    for field in fields {
        let key = join(path, field.name);
        let var = overrides(field.name);
        let overridden = var.as_deref().and_then(|var| override_var(env, var));
        let normalized = match (overridden, table.remove(field.name)) {
            (Some(value), _) => {
                let var = var.as_deref().unwrap_or_default();
                normalize(
                    field,
                    &key,
                    Value::String(value),
                    Source::Override(var),
                    env,
                )?
            }
            (None, Some(value)) => normalize(field, &key, value, Source::File, env)?,
            (None, None) => None,
        };
        match normalized {
            Some(value) => {
                out.insert(field.name.to_owned(), value);
            }
            None if field.required => return Err(ConfigError::MissingKey { key }),
            None => {}
        }
    }
    Ok(out)
}

/// The value of override variable `var`, unless unset or empty.
fn override_var(env: Env<'_>, var: &str) -> Option<String> {
    env(var).filter(|value| !value.is_empty())
}

/// Fails on the first key of `table` not in `allowed`.
fn reject_unknown(table: &Table, path: &str, allowed: &[&str]) -> Result<(), ConfigError> {
    match table.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(ConfigError::UnknownKey {
            key: join(path, key),
            expected: allowed.join(", "),
        }),
        None => Ok(()),
    }
}

/// Expands and checks one value against `field`. `Ok(None)` means "not set"
/// (an empty string for an optional key).
fn normalize(
    field: &Field,
    key: &str,
    value: Value,
    source: Source<'_>,
    env: Env<'_>,
) -> Result<Option<Value>, ConfigError> {
    let value = match source {
        Source::File => expand_value(value, key, env)?,
        Source::Override(_) => value,
    };
    let secret = matches!(field.kind, Kind::Secret);
    let refuse = |value: &Value| {
        let mut message = format!("expected {}", field.kind.describe());
        if !field.note.is_empty() {
            let _ = write!(message, " ({})", field.note);
        }
        let _ = write!(message, ", got {}", shown(value, secret));
        if let Source::Override(var) = source {
            let _ = write!(message, " (from {var})");
        }
        ConfigError::BadValue {
            key: key.to_owned(),
            message,
        }
    };
    let normalized = match (field.kind, &value) {
        (Kind::Text | Kind::Secret, Value::String(s)) if !s.is_empty() && !has_control(s) => value,
        (Kind::OptText, Value::String(s)) if s.is_empty() => return Ok(None),
        (Kind::OptText, Value::String(s)) if !has_control(s) => value,
        (Kind::Choice(words), Value::String(s)) => {
            let lower = s.to_ascii_lowercase();
            if !words.contains(&lower.as_str()) {
                return Err(refuse(&value));
            }
            Value::String(lower)
        }
        (Kind::Bool, Value::Boolean(_)) => value,
        (Kind::Bool, Value::String(s)) => match s.trim() {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => return Err(refuse(&value)),
        },
        (Kind::OptInt { .. }, Value::String(s)) if s.is_empty() => return Ok(None),
        (Kind::Int { min, max } | Kind::OptInt { min, max }, _) => {
            let n = match &value {
                Value::Integer(n) => Some(*n),
                Value::String(s) => s.trim().parse::<i64>().ok(),
                _ => None,
            };
            match n {
                Some(n) if (min..=max).contains(&n) => Value::Integer(n),
                _ => return Err(refuse(&value)),
            }
        }
        (Kind::Secs { zero_ok }, _) => {
            let secs = match &value {
                Value::Integer(n) => Some(*n as f64),
                Value::Float(f) => Some(*f),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            let ok = |s: f64| {
                s.is_finite()
                    && Duration::try_from_secs_f64(s).is_ok_and(|d| zero_ok || !d.is_zero())
            };
            match secs {
                Some(s) if ok(s) => Value::Float(s),
                _ => return Err(refuse(&value)),
            }
        }
        (Kind::Rate, _) => {
            let rate = match &value {
                Value::Integer(n) => Some(*n as f64),
                Value::Float(f) => Some(*f),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            match rate {
                Some(r) if r.is_finite() && r > 0.0 => Value::Float(r),
                _ => return Err(refuse(&value)),
            }
        }
        (Kind::Names, _) => {
            let names = match &value {
                Value::String(s) => Some(split_list(s)),
                Value::Array(items) => {
                    strings(items).map(|v| v.into_iter().map(str::trim).collect())
                }
                _ => None,
            };
            match names {
                Some(names) if names.iter().all(|n| !n.is_empty() && !has_control(n)) => {
                    string_array(names)
                }
                _ => return Err(refuse(&value)),
            }
        }
        (Kind::Patterns, Value::Array(items)) => match strings(items) {
            Some(patterns) if patterns.iter().all(|p| !p.is_empty()) => value,
            _ => return Err(refuse(&value)),
        },
        (Kind::Events, _) => match events(&value) {
            Some(events) => string_array(events),
            None => return Err(refuse(&value)),
        },
        _ => return Err(refuse(&value)),
    };
    Ok(Some(normalized))
}

/// The `events` value as `["on"]`, `["off"]` or the classes, or `None` when it
/// is not acceptable. An empty list (or string) means `off`.
fn events(value: &Value) -> Option<Vec<String>> {
    let words: Vec<&str> = match value {
        Value::Boolean(on) => vec![if *on { "on" } else { "off" }],
        Value::String(s) => split_list(s),
        Value::Array(items) => strings(items)?.into_iter().map(str::trim).collect(),
        _ => return None,
    };
    match words.as_slice() {
        [] => Some(vec!["off".to_owned()]),
        [word] if word.eq_ignore_ascii_case("on") || word.eq_ignore_ascii_case("off") => {
            Some(vec![word.to_ascii_lowercase()])
        }
        _ => words
            .iter()
            .all(|w| is_event_class(w))
            .then(|| words.iter().map(|w| (*w).to_owned()).collect()),
    }
}

/// Whether `word` can be an event class (`call`, `system`, …): letters, digits
/// and `_`, and not `on`/`off`, which stand alone.
fn is_event_class(word: &str) -> bool {
    !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !word.eq_ignore_ascii_case("on")
        && !word.eq_ignore_ascii_case("off")
}

/// Splits a comma-separated string, trimming and dropping empty entries.
fn split_list(s: &str) -> Vec<&str> {
    s.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect()
}

/// The items as strings, or `None` when one is not a string.
fn strings(items: &[Value]) -> Option<Vec<&str>> {
    items.iter().map(Value::as_str).collect()
}

/// An array of strings.
fn string_array<S: AsRef<str>>(items: Vec<S>) -> Value {
    Value::Array(
        items
            .into_iter()
            .map(|s| Value::String(s.as_ref().to_owned()))
            .collect(),
    )
}

/// Whether `s` has a control character (which would break an AMI header).
fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A value as shown in an error: strings quoted, secrets only by type.
fn shown(value: &Value, secret: bool) -> String {
    match value {
        Value::String(s) if secret && s.is_empty() => "an empty string".to_owned(),
        Value::String(_) if secret => "a string (not shown)".to_owned(),
        _ if secret => {
            let kind = value.type_str();
            let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            format!("{article} {kind} (not shown)")
        }
        Value::String(s) => format!("{s:?}"),
        Value::Integer(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(_) => "a date-time".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

/// A type error for a structural key.
fn bad_type(key: &str, expected: &str, value: &Value) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_owned(),
        message: format!("expected {expected}, got {}", shown(value, false)),
    }
}

/// `parent.key`, quoting `key` when it is not a bare TOML key.
fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

// ---------------------------------------------------------------------------
// Interpolation
// ---------------------------------------------------------------------------

/// Expands the strings of `value` (also inside arrays).
fn expand_value(value: Value, key: &str, env: Env<'_>) -> Result<Value, ConfigError> {
    match value {
        Value::String(s) => Ok(Value::String(expand(&s, key, env)?)),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| expand_value(item, &format!("{key}[{i}]"), env))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        other => Ok(other),
    }
}

/// Expands `${VAR}`, `${VAR:-default}` and `$$` in `s`. Errors name `key` but
/// never quote `s`, which may be a secret.
fn expand(s: &str, key: &str, env: Env<'_>) -> Result<String, ConfigError> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let syntax = |message: &str| ConfigError::BadValue {
        key: key.to_owned(),
        message: message.to_owned(),
    };
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            return Err(syntax(
                "a `$` must start `${VAR}` or `${VAR:-default}`; write `$$` for a literal `$`",
            ));
        };
        let Some(end) = body.find('}') else {
            return Err(syntax("unterminated `${`: missing `}`"));
        };
        let (name, default) = match body[..end].split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (&body[..end], None),
        };
        if !is_var_name(name) {
            return Err(syntax(
                "invalid variable name in `${...}`: use letters, digits and `_`, not starting with a digit",
            ));
        }
        match (env(name), default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(ConfigError::MissingVariable {
                    key: key.to_owned(),
                    var: name.to_owned(),
                });
            }
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `name` is a valid environment variable name.
fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A TOML syntax error as `line L, column C: message`, with the key of that line
/// when there is one, but never the line itself (it may hold a secret).
fn toml_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message().replace('\n', "; ");
    let Some(span) = error.span() else {
        return ConfigError::Toml { message };
    };
    let start = floor_char_boundary(text, span.start);
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or_default().trim();
    let near = if line_text.starts_with('[') {
        format!(" in {line_text}")
    } else {
        match line_text.split_once('=') {
            Some((key, _)) if !key.trim().is_empty() && !key.contains(['"', '\'']) => {
                format!(" in the value of `{}`", key.trim())
            }
            _ => String::new(),
        }
    };
    ConfigError::Toml {
        message: format!("line {line}, column {column}{near}: {message}"),
    }
}

/// The largest char boundary of `text` at or before `index`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

// ---------------------------------------------------------------------------
// Typed extraction and the final checks
// ---------------------------------------------------------------------------

/// The normalized file. Every key is optional here: [`normalize_root`] already
/// enforced required keys, types and ranges.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    default: Option<String>,
    servers: BTreeMap<String, RawServer>,
    options: RawOptions,
    listen: RawListen,
    gateway: RawGateway,
}

/// A normalized `[servers.KEY]` table. No `Debug`: it holds the secret in clear.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    host: String,
    port: Option<u16>,
    username: String,
    secret: String,
    auth: Option<String>,
    events: Option<Vec<String>>,
    tls: Option<bool>,
    tls_ca: Option<PathBuf>,
    tls_roots: Option<String>,
    connect_timeout: Option<f64>,
    read_timeout: Option<f64>,
    write_buffer_limit: Option<usize>,
    max_calls_per_second: Option<f64>,
    calls_burst: Option<u32>,
    max_concurrent_calls: Option<usize>,
}

/// The normalized `[options]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptions {
    connect_timeout: Option<f64>,
    read_timeout: Option<f64>,
    heartbeat_interval: Option<f64>,
    max_frame_size: Option<usize>,
    max_command_output: Option<usize>,
    max_action_id_length: Option<usize>,
    redaction_keys: Option<Vec<String>>,
    redaction_key_patterns: Option<Vec<String>>,
    redaction_value_patterns: Option<Vec<String>>,
    enforce_ip_endpoints: Option<bool>,
    event_drop_log_interval_ms: Option<u64>,
    circuit_failure_threshold: Option<u32>,
    circuit_cooldown: Option<f64>,
    circuit_half_open_max_probes: Option<u32>,
    max_pending_actions: Option<usize>,
    event_queue_capacity: Option<usize>,
    write_buffer_limit: Option<usize>,
    blocked_events: Option<Vec<String>>,
    priority_events: Option<Vec<String>>,
    memory_limit: Option<usize>,
    max_calls_per_second: Option<f64>,
    calls_burst: Option<u32>,
    max_concurrent_calls: Option<usize>,
}

/// The normalized `[listen]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    tick_timeout_ms: Option<u64>,
    outlet_queue_events: Option<usize>,
}

/// The normalized `[gateway]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    redis_url: Option<String>,
    events_stream: Option<String>,
    events_maxlen: Option<usize>,
    status_stream: Option<String>,
    calls_stream: Option<String>,
    actions_stream: Option<String>,
    server_actions_stream: Option<String>,
    group: Option<String>,
    consumer: Option<String>,
    max_in_flight: Option<usize>,
    route: Option<String>,
}

/// `[gateway]` with defaults; the stream patterns must name `{server}`.
fn build_gateway(raw: RawGateway) -> Result<GatewaySettings, ConfigError> {
    let d = GatewaySettings::default();
    for (key, pattern) in [
        ("events_stream", &raw.events_stream),
        ("calls_stream", &raw.calls_stream),
        ("server_actions_stream", &raw.server_actions_stream),
    ] {
        if let Some(pattern) = pattern
            && !pattern.contains("{server}")
        {
            return Err(ConfigError::BadValue {
                key: join("gateway", key),
                message: format!(
                    "expected a stream name with `{{server}}` in it (one stream per \
                     server), got {pattern:?}"
                ),
            });
        }
    }
    Ok(GatewaySettings {
        redis_url: raw.redis_url.unwrap_or(d.redis_url),
        events_stream: raw.events_stream.unwrap_or(d.events_stream),
        events_maxlen: raw.events_maxlen.unwrap_or(d.events_maxlen),
        status_stream: raw.status_stream.unwrap_or(d.status_stream),
        calls_stream: raw.calls_stream.unwrap_or(d.calls_stream),
        actions_stream: raw.actions_stream.unwrap_or(d.actions_stream),
        server_actions_stream: raw.server_actions_stream.unwrap_or(d.server_actions_stream),
        group: raw.group.unwrap_or(d.group),
        consumer: raw.consumer.unwrap_or(d.consumer),
        max_in_flight: raw.max_in_flight.unwrap_or(d.max_in_flight),
        // `normalize` admitted only the three names.
        route: raw
            .route
            .as_deref()
            .and_then(Route::parse)
            .unwrap_or(d.route),
    })
}

/// Applies the defaults and the checks that need more than one key.
fn build(raw: RawFile) -> Result<FileConfig, ConfigError> {
    let options = build_options(raw.options)?;
    let gateway = build_gateway(raw.gateway)?;
    let listen = ListenSettings {
        tick_timeout_ms: raw
            .listen
            .tick_timeout_ms
            .unwrap_or(ListenSettings::default().tick_timeout_ms),
        outlet_queue_events: raw
            .listen
            .outlet_queue_events
            .unwrap_or(ListenSettings::default().outlet_queue_events),
    };
    // One policy, shared by the connection settings of every server.
    let redactor = Arc::new(options.redactor()?);
    let servers = raw
        .servers
        .into_iter()
        .map(|(key, server)| {
            let mut settings = build_server(key.clone(), server, &options)?;
            settings.connection.redactor = Arc::clone(&redactor);
            Ok((key, settings))
        })
        .collect::<Result<BTreeMap<_, _>, ConfigError>>()?;
    // `normalize_root` checked that an explicit default names a server.
    let default = match raw.default {
        Some(key) => Some(key),
        None if servers.len() == 1 => servers.keys().next().cloned(),
        None => None,
    };
    Ok(FileConfig {
        default,
        servers,
        options,
        listen,
        gateway,
    })
}

/// `[options]` with defaults; checks the redaction patterns.
fn build_options(raw: RawOptions) -> Result<Options, ConfigError> {
    let d = Options::default();
    let options = Options {
        connect_timeout: secs(
            "options.connect_timeout",
            raw.connect_timeout,
            d.connect_timeout,
        )?,
        read_timeout: secs("options.read_timeout", raw.read_timeout, d.read_timeout)?,
        heartbeat_interval: secs(
            "options.heartbeat_interval",
            raw.heartbeat_interval,
            d.heartbeat_interval,
        )?,
        max_frame_size: raw.max_frame_size.unwrap_or(d.max_frame_size),
        max_command_output: raw.max_command_output.unwrap_or(d.max_command_output),
        max_action_id_length: raw.max_action_id_length.unwrap_or(d.max_action_id_length),
        redaction_keys: raw.redaction_keys.unwrap_or(d.redaction_keys),
        redaction_key_patterns: raw
            .redaction_key_patterns
            .unwrap_or(d.redaction_key_patterns),
        redaction_value_patterns: raw
            .redaction_value_patterns
            .unwrap_or(d.redaction_value_patterns),
        enforce_ip_endpoints: raw.enforce_ip_endpoints.unwrap_or(d.enforce_ip_endpoints),
        event_drop_log_interval: raw
            .event_drop_log_interval_ms
            .map_or(d.event_drop_log_interval, Duration::from_millis),
        circuit_failure_threshold: raw
            .circuit_failure_threshold
            .unwrap_or(d.circuit_failure_threshold),
        circuit_cooldown: secs(
            "options.circuit_cooldown",
            raw.circuit_cooldown,
            d.circuit_cooldown,
        )?,
        circuit_half_open_max_probes: raw
            .circuit_half_open_max_probes
            .unwrap_or(d.circuit_half_open_max_probes),
        max_pending_actions: raw.max_pending_actions.unwrap_or(d.max_pending_actions),
        event_queue_capacity: raw.event_queue_capacity.unwrap_or(d.event_queue_capacity),
        write_buffer_limit: raw.write_buffer_limit.unwrap_or(d.write_buffer_limit),
        blocked_events: raw.blocked_events.unwrap_or(d.blocked_events),
        priority_events: raw.priority_events.unwrap_or(d.priority_events),
        memory_limit: raw.memory_limit.unwrap_or(d.memory_limit),
        pacing: PacingConfig {
            max_calls_per_second: raw.max_calls_per_second,
            calls_burst: raw.calls_burst.unwrap_or(d.pacing.calls_burst),
            max_concurrent_calls: raw.max_concurrent_calls,
        },
    };
    // Each pattern alone, so that the error names its key and index.
    let none: [&str; 0] = [];
    for (i, pattern) in options.redaction_key_patterns.iter().enumerate() {
        Redactor::new(none, [pattern], none)
            .map_err(|e| invalid_pattern(format!("options.redaction_key_patterns[{i}]"), e))?;
    }
    for (i, pattern) in options.redaction_value_patterns.iter().enumerate() {
        Redactor::new(none, none, [pattern])
            .map_err(|e| invalid_pattern(format!("options.redaction_value_patterns[{i}]"), e))?;
    }
    Ok(options)
}

/// A [`RedactError`] as a [`ConfigError`] naming `key`.
fn invalid_pattern(key: String, error: RedactError) -> ConfigError {
    let RedactError::InvalidPattern { pattern, message } = error;
    ConfigError::InvalidPattern {
        key,
        pattern,
        message,
    }
}

/// A normalized number of seconds as a duration, or `default`.
fn secs(key: &str, value: Option<f64>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(secs) => Duration::try_from_secs_f64(secs).map_err(|e| ConfigError::BadValue {
            key: key.to_owned(),
            message: e.to_string(),
        }),
    }
}

/// One server with `[options]` merged in.
fn build_server(
    key: String,
    raw: RawServer,
    options: &Options,
) -> Result<ServerSettings, ConfigError> {
    let path = join("servers", &key);
    let host_key = join(&path, "host");
    if options.enforce_ip_endpoints {
        if raw.host.parse::<IpAddr>().is_err() {
            return Err(ConfigError::BadValue {
                key: host_key,
                message: format!(
                    "{:?} is not an IP address: use an IP literal, or set \
                     options.enforce_ip_endpoints = false to have the name resolved once at startup",
                    raw.host
                ),
            });
        }
    } else if raw.host.chars().any(char::is_whitespace) {
        return Err(ConfigError::BadValue {
            key: host_key,
            message: format!("{:?} is not a host name or IP address", raw.host),
        });
    }
    let tls = raw.tls.unwrap_or(false);
    if raw.tls_ca.is_some() && !tls {
        return Err(ConfigError::BadValue {
            key: join(&path, "tls_ca"),
            message: "set, but tls = false: set tls = true or remove tls_ca".to_owned(),
        });
    }
    let tls_roots = match raw.tls_roots.as_deref() {
        None => TlsRoots::Bundled,
        Some(_) if !tls => {
            return Err(ConfigError::BadValue {
                key: join(&path, "tls_roots"),
                message: "set, but tls = false: set tls = true or remove tls_roots".to_owned(),
            });
        }
        Some(_) if raw.tls_ca.is_some() => {
            return Err(ConfigError::BadValue {
                key: join(&path, "tls_roots"),
                message: "set with tls_ca, which alone is trusted: remove one".to_owned(),
            });
        }
        Some("system") => TlsRoots::System,
        Some(_) => TlsRoots::Bundled,
    };

    let mut connection = Config::new(key.clone(), raw.username, Secret::new(raw.secret));
    connection.auth = match raw.auth.as_deref() {
        Some("md5") => AuthMethod::Md5,
        _ => AuthMethod::Plain,
    };
    connection.events = match raw.events {
        None => EventMask::On,
        Some(events) => match events.as_slice() {
            [word] if word == "on" => EventMask::On,
            [word] if word == "off" => EventMask::Off,
            [] => EventMask::Off,
            _ => EventMask::Classes(events),
        },
    };
    connection.limits = Limits {
        max_frame_size: options.max_frame_size,
        max_command_output: options.max_command_output,
    };
    connection.connect_timeout = secs(
        &join(&path, "connect_timeout"),
        raw.connect_timeout,
        options.connect_timeout,
    )?;
    connection.read_timeout = secs(
        &join(&path, "read_timeout"),
        raw.read_timeout,
        options.read_timeout,
    )?;
    connection.action_timeout = connection.read_timeout;
    connection.heartbeat_interval = options.heartbeat_interval;
    connection.max_pending_actions = options.max_pending_actions;
    connection.event_queue_capacity = options.event_queue_capacity;
    connection.write_buffer_limit = raw.write_buffer_limit.unwrap_or(options.write_buffer_limit);
    connection.blocked_events = options.blocked_events.clone();
    connection.priority_events = options.priority_events.clone();
    connection.event_drop_log_interval = options.event_drop_log_interval;
    connection.validate().map_err(|source| {
        // The key that set the refused value: the server's own, or `[options]`.
        let own = match source.setting() {
            "connect_timeout" => raw.connect_timeout.map(|_| "connect_timeout"),
            "read_timeout" | "action_timeout" => raw.read_timeout.map(|_| "read_timeout"),
            "write_buffer_limit" => raw.write_buffer_limit.map(|_| "write_buffer_limit"),
            setting @ ("username" | "secret" | "events") => Some(setting),
            _ => None,
        };
        let key = match (source.setting(), own) {
            ("server_key", _) => path.clone(),
            (_, Some(own)) => join(&path, own),
            ("action_timeout", None) => "options.read_timeout".to_owned(),
            (setting, None) => {
                let setting = setting.strip_prefix("limits.").unwrap_or(setting);
                format!("options.{setting}")
            }
        };
        ConfigError::Unworkable { key, source }
    })?;

    let pacing = PacingConfig {
        max_calls_per_second: raw
            .max_calls_per_second
            .or(options.pacing.max_calls_per_second),
        calls_burst: raw.calls_burst.unwrap_or(options.pacing.calls_burst),
        max_concurrent_calls: raw
            .max_concurrent_calls
            .or(options.pacing.max_concurrent_calls),
    };
    Ok(ServerSettings {
        key,
        pacing,
        host: raw.host,
        port: raw.port.unwrap_or(5038),
        tls,
        tls_ca: raw.tls_ca,
        tls_roots,
        connection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;

    /// A minimal valid server table.
    const ONE: &str = r#"
        [servers.node_1]
        host = "10.0.0.5"
        username = "admin"
        secret = "hunter2"
    "#;

    /// An environment made of `pairs`.
    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// Parses with an empty environment.
    fn parse_ok(text: &str) -> FileConfig {
        match parse(text, &|_| None) {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        }
    }

    /// Parses with an empty environment, expecting an error; returns its message.
    fn parse_err(text: &str) -> String {
        parse_err_with(text, &[])
    }

    /// Parses with `pairs` as environment, expecting an error; returns its message.
    fn parse_err_with(text: &str, pairs: &[(&str, &str)]) -> String {
        match parse(text, &env_of(pairs)) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => {
                let message = e.to_string();
                assert!(!message.contains("hunter2"), "{message}");
                message
            }
        }
    }

    /// `ONE` with `extra` lines added to its server table.
    fn one_with(extra: &str) -> String {
        format!("{ONE}\n{extra}\n")
    }

    #[test]
    fn defaults_are_applied() {
        let config = parse_ok(ONE);
        assert_eq!(config.default.as_deref(), Some("node_1"));
        let o = &config.options;
        assert_eq!(o.connect_timeout, Duration::from_secs(10));
        assert_eq!(o.read_timeout, Duration::from_secs(30));
        assert_eq!(o.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(o.max_frame_size, 65_536);
        assert_eq!(o.max_command_output, 1_048_576);
        assert_eq!(o.max_action_id_length, 64);
        assert!(o.redaction_keys.is_empty());
        assert!(o.redaction_key_patterns.is_empty());
        assert!(o.redaction_value_patterns.is_empty());
        assert!(o.enforce_ip_endpoints);
        assert_eq!(o.event_drop_log_interval, Duration::from_millis(1000));
        assert_eq!(o.circuit_failure_threshold, 5);
        assert_eq!(o.circuit_cooldown, Duration::from_secs(30));
        assert_eq!(o.circuit_half_open_max_probes, 1);
        assert_eq!(o.max_pending_actions, 5000);
        assert_eq!(o.event_queue_capacity, 10_000);
        assert_eq!(o.write_buffer_limit, 5_242_880);
        assert!(o.blocked_events.is_empty());
        assert!(o.priority_events.is_empty());
        assert_eq!(o.memory_limit, 134_217_728);
        assert_eq!(*o, Options::default());
        assert_eq!(config.listen.tick_timeout_ms, 25);

        let s = config.server("node_1").unwrap();
        assert_eq!(s.key, "node_1");
        assert_eq!(s.host, "10.0.0.5");
        assert_eq!(s.port, 5038);
        assert!(!s.tls);
        assert_eq!(s.tls_ca, None);
        let c = &s.connection;
        assert_eq!(c.server_key, "node_1");
        assert_eq!(c.username, "admin");
        assert_eq!(c.secret.expose(), "hunter2");
        assert_eq!(c.auth, AuthMethod::Plain);
        assert_eq!(c.events, EventMask::On);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.read_timeout, Duration::from_secs(30));
        assert_eq!(c.action_timeout, Duration::from_secs(30));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(c.max_pending_actions, 5000);
        assert_eq!(c.event_queue_capacity, 10_000);
        assert_eq!(c.write_buffer_limit, 5_242_880);
        assert_eq!(c.event_drop_log_interval, Duration::from_millis(1000));
    }

    #[test]
    fn every_key_is_parsed() {
        let text = r#"
            default = "b"
            [servers.a]
            host = "10.0.0.1"
            username = "ua"
            secret = "sa"
            [servers.b]
            host = "::1"
            port = 5039
            username = "ub"
            secret = "sb"
            auth = "MD5"
            events = ["call", "system"]
            tls = true
            tls_ca = "/etc/ca.pem"
            connect_timeout = 2.5
            read_timeout = 7
            write_buffer_limit = 1000
            [options]
            connect_timeout = 3
            read_timeout = 4.5
            heartbeat_interval = 0
            max_frame_size = 2048
            max_command_output = 4096
            max_action_id_length = 32
            redaction_keys = ["Token"]
            redaction_key_patterns = ["pass"]
            redaction_value_patterns = ['\d{4}']
            enforce_ip_endpoints = true
            event_drop_log_interval_ms = 250
            circuit_failure_threshold = 3
            circuit_cooldown = 0.5
            circuit_half_open_max_probes = 2
            max_pending_actions = 10
            event_queue_capacity = 20
            write_buffer_limit = 30
            blocked_events = "FullyBooted, RTCPSent"
            priority_events = ["DialBegin"]
            memory_limit = 134217728
            [listen]
            tick_timeout_ms = 5
        "#;
        let config = parse_ok(text);
        assert_eq!(config.default.as_deref(), Some("b"));
        assert_eq!(config.default_server().unwrap().key, "b");
        let o = &config.options;
        assert_eq!(o.connect_timeout, Duration::from_secs(3));
        assert_eq!(o.read_timeout, Duration::from_millis(4500));
        assert_eq!(o.heartbeat_interval, Duration::ZERO);
        assert_eq!(o.max_frame_size, 2048);
        assert_eq!(o.max_command_output, 4096);
        assert_eq!(o.max_action_id_length, 32);
        assert_eq!(o.redaction_keys, ["Token"]);
        assert_eq!(o.redaction_key_patterns, ["pass"]);
        assert_eq!(o.redaction_value_patterns, [r"\d{4}"]);
        assert!(o.enforce_ip_endpoints);
        assert_eq!(o.event_drop_log_interval, Duration::from_millis(250));
        assert_eq!(o.circuit_failure_threshold, 3);
        assert_eq!(o.circuit_cooldown, Duration::from_millis(500));
        assert_eq!(o.circuit_half_open_max_probes, 2);
        assert_eq!(o.max_pending_actions, 10);
        assert_eq!(o.event_queue_capacity, 20);
        assert_eq!(o.write_buffer_limit, 30);
        assert_eq!(o.blocked_events, ["FullyBooted", "RTCPSent"]);
        assert_eq!(o.priority_events, ["DialBegin"]);
        assert_eq!(o.memory_limit, 134_217_728);
        assert_eq!(config.listen.tick_timeout_ms, 5);

        // Server a: everything from [options].
        let a = &config.server("a").unwrap().connection;
        assert_eq!(a.connect_timeout, Duration::from_secs(3));
        assert_eq!(a.read_timeout, Duration::from_millis(4500));
        assert_eq!(a.action_timeout, Duration::from_millis(4500));
        assert_eq!(a.write_buffer_limit, 30);

        // Server b: its own overrides win.
        let b = config.server("b").unwrap();
        assert_eq!(b.host, "::1");
        assert_eq!(b.port, 5039);
        assert!(b.tls);
        assert_eq!(b.tls_ca.as_deref(), Some(Path::new("/etc/ca.pem")));
        let c = &b.connection;
        assert_eq!(c.server_key, "b");
        assert_eq!(c.username, "ub");
        assert_eq!(c.secret.expose(), "sb");
        assert_eq!(c.auth, AuthMethod::Md5);
        assert_eq!(
            c.events,
            EventMask::Classes(vec!["call".into(), "system".into()])
        );
        assert_eq!(
            c.limits,
            Limits {
                max_frame_size: 2048,
                max_command_output: 4096
            }
        );
        assert_eq!(c.connect_timeout, Duration::from_millis(2500));
        assert_eq!(c.read_timeout, Duration::from_secs(7));
        assert_eq!(c.action_timeout, Duration::from_secs(7));
        assert_eq!(c.heartbeat_interval, Duration::ZERO);
        assert_eq!(c.max_pending_actions, 10);
        assert_eq!(c.event_queue_capacity, 20);
        assert_eq!(c.write_buffer_limit, 1000);
        assert_eq!(c.blocked_events, ["FullyBooted", "RTCPSent"]);
        assert_eq!(c.priority_events, ["DialBegin"]);
        assert_eq!(c.event_drop_log_interval, Duration::from_millis(250));
    }

    #[test]
    fn events_forms() {
        let events = |value: &str| {
            let config = parse_ok(&one_with(&format!("events = {value}")));
            config.servers["node_1"].connection.events.clone()
        };
        let classes = |v: &[&str]| EventMask::Classes(v.iter().map(|s| (*s).to_owned()).collect());
        assert_eq!(events(r#""on""#), EventMask::On);
        assert_eq!(events(r#""OFF""#), EventMask::Off);
        assert_eq!(events("true"), EventMask::On);
        assert_eq!(events("false"), EventMask::Off);
        assert_eq!(events("[]"), EventMask::Off);
        assert_eq!(events(r#""""#), EventMask::Off);
        assert_eq!(events(r#"["off"]"#), EventMask::Off);
        assert_eq!(events(r#""call, system""#), classes(&["call", "system"]));
        assert_eq!(events(r#"["agent"]"#), classes(&["agent"]));
        for bad in [
            r#"["call", "on"]"#,
            r#""call;system""#,
            "[1]",
            "5",
            r#"["a b"]"#,
        ] {
            let e = parse_err(&one_with(&format!("events = {bad}")));
            assert!(e.starts_with("servers.node_1.events: expected"), "{e}");
        }
    }

    #[test]
    fn interpolation_with_defaults_and_missing_variables() {
        let text = r#"
            [servers.node_1]
            host = "${HOST}"
            username = "${USER:-admin}"
            secret = "${SECRET:-fallback}"
            [options]
            blocked_events = ["${EV1}", "${EV2:-RTCPSent}"]
        "#;
        let env = env_of(&[("HOST", "10.1.2.3"), ("SECRET", ""), ("EV1", "FullyBooted")]);
        let config = parse(text, &env).unwrap();
        let s = &config.servers["node_1"];
        assert_eq!(s.host, "10.1.2.3");
        assert_eq!(s.connection.username, "admin");
        // `:-` also replaces an empty value.
        assert_eq!(s.connection.secret.expose(), "fallback");
        assert_eq!(config.options.blocked_events, ["FullyBooted", "RTCPSent"]);

        // A set-but-empty variable without a default expands to nothing.
        let e = parse_err_with(text, &[("HOST", ""), ("EV1", "x")]);
        assert_eq!(
            e,
            r#"servers.node_1.host: expected a non-empty string, got """#
        );

        let e = parse(text, &env_of(&[("EV1", "x")])).unwrap_err();
        assert!(
            matches!(&e, ConfigError::MissingVariable { key, var } if key == "servers.node_1.host" && var == "HOST"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "servers.node_1.host: environment variable HOST is not set (use ${HOST:-default} for a fallback)"
        );
        let e = parse_err_with(text, &[("HOST", "10.1.2.3")]);
        assert!(
            e.starts_with("options.blocked_events[0]: environment variable EV1"),
            "{e}"
        );

        // Expanded text is not expanded again, and defaults are literal.
        let text = one_with(r#"events = "${EVENTS:-call,system}""#)
            .replace(r#"username = "admin""#, r#"username = "${U}""#);
        let config = parse(&text, &env_of(&[("U", "${X}")])).unwrap();
        let c = &config.servers["node_1"].connection;
        assert_eq!(c.username, "${X}");
        assert_eq!(
            c.events,
            EventMask::Classes(vec!["call".into(), "system".into()])
        );
    }

    #[test]
    fn dollar_escapes_and_syntax_errors() {
        let text = ONE.replace("hunter2", "a$$b$${X}$$");
        let config = parse_ok(&text);
        assert_eq!(
            config.servers["node_1"].connection.secret.expose(),
            "a$b${X}$"
        );
        for (bad, says) in [
            ("hunter2$x", "write `$$` for a literal `$`"),
            ("hunter2$", "write `$$` for a literal `$`"),
            ("hunter2${X", "unterminated"),
            ("hunter2${}", "invalid variable name"),
            ("hunter2${1X}", "invalid variable name"),
            ("hunter2${A-B}", "invalid variable name"),
        ] {
            let e = parse_err(&ONE.replace("hunter2", bad));
            assert!(e.starts_with("servers.node_1.secret: "), "{e}");
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn strings_are_converted_for_numbers_and_booleans() {
        let text = r#"
            [servers.node_1]
            host = "10.0.0.5"
            port = "${PORT:-5038}"
            username = "admin"
            secret = "s"
            tls = "${TLS:-false}"
            [options]
            connect_timeout = "${CT:-1.5}"
            enforce_ip_endpoints = "true"
            memory_limit = "${MEM:-}"
            [listen]
            tick_timeout_ms = " 7 "
        "#;
        let config = parse_ok(text);
        let s = &config.servers["node_1"];
        assert_eq!(s.port, 5038);
        assert!(!s.tls);
        assert_eq!(config.options.connect_timeout, Duration::from_millis(1500));
        assert!(config.options.enforce_ip_endpoints);
        // An empty string leaves an optional key unset: the default applies.
        assert_eq!(config.options.memory_limit, 134_217_728);
        assert_eq!(config.listen.tick_timeout_ms, 7);

        let config = parse(
            text,
            &env_of(&[("PORT", "6000"), ("TLS", "true"), ("MEM", "1024")]),
        )
        .unwrap();
        assert_eq!(config.servers["node_1"].port, 6000);
        assert!(config.servers["node_1"].tls);
        assert_eq!(config.options.memory_limit, 1024);

        let e = parse_err_with(text, &[("TLS", "yes")]);
        assert_eq!(
            e,
            r#"servers.node_1.tls: expected true or false, got "yes""#
        );
        let e = parse_err_with(text, &[("CT", "soon")]);
        assert!(
            e.starts_with("options.connect_timeout: expected a number of seconds > 0"),
            "{e}"
        );
    }

    #[test]
    fn ami_environment_overrides_win() {
        let text = r#"
            default = "node_1"
            [servers.node_1]
            host = "10.0.0.5"
            port = 5038
            username = "admin"
            secret = "hunter2"
            [servers.pbx-2]
            host = "10.0.0.6"
            username = "u2"
            secret = "${UNSET_BUT_OVERRIDDEN}"
        "#;
        let env = env_of(&[
            ("AMI_DEFAULT_SERVER", "pbx-2"),
            ("AMI_NODE_1_HOST", "10.9.9.9"),
            ("AMI_NODE_1_PORT", "6038"),
            ("AMI_NODE_1_USERNAME", "ops"),
            ("AMI_NODE_1_SECRET", "pa$word"),
            ("AMI_PBX_2_SECRET", "s2"),
            ("AMI_PBX_2_HOST", ""),
            ("AMI_LISTEN_TICK_TIMEOUT_MS", "40"),
        ]);
        let config = parse(text, &env).unwrap();
        assert_eq!(config.default.as_deref(), Some("pbx-2"));
        let n1 = &config.servers["node_1"];
        assert_eq!(n1.host, "10.9.9.9");
        assert_eq!(n1.port, 6038);
        assert_eq!(n1.connection.username, "ops");
        // Used verbatim: no `${}`/`$$` processing of override values.
        assert_eq!(n1.connection.secret.expose(), "pa$word");
        let p2 = &config.servers["pbx-2"];
        // An empty override is ignored; an override also replaces a value
        // whose variable is unset.
        assert_eq!(p2.host, "10.0.0.6");
        assert_eq!(p2.connection.secret.expose(), "s2");
        assert_eq!(config.listen.tick_timeout_ms, 40);
        assert_eq!(env_prefix("pbx-2"), "AMI_PBX_2_");
        assert_eq!(env_prefix("Node.1ü"), "AMI_NODE_1__");

        // A required key may come from the override alone.
        let text = ONE.replace(r#"secret = "hunter2""#, "");
        assert!(parse_err(&text).starts_with("servers.node_1.secret: missing required key"));
        let config = parse(&text, &env_of(&[("AMI_NODE_1_SECRET", "x")])).unwrap();
        assert_eq!(config.servers["node_1"].connection.secret.expose(), "x");

        // Bad override values name the key and the variable.
        let e = parse_err_with(ONE, &[("AMI_NODE_1_PORT", "abc")]);
        assert_eq!(
            e,
            r#"servers.node_1.port: expected an integer 1..=65535, got "abc" (from AMI_NODE_1_PORT)"#
        );
        let e = parse_err_with(ONE, &[("AMI_LISTEN_TICK_TIMEOUT_MS", "-1")]);
        assert!(
            e.starts_with("listen.tick_timeout_ms: expected an integer"),
            "{e}"
        );
        assert!(e.ends_with("(from AMI_LISTEN_TICK_TIMEOUT_MS)"), "{e}");
        let e = parse_err_with(ONE, &[("AMI_DEFAULT_SERVER", "nope")]);
        assert_eq!(
            e,
            "default: no server `nope` (configured: node_1) (from AMI_DEFAULT_SERVER)"
        );
    }

    #[test]
    fn the_gateway_table_has_defaults_an_env_override_and_checked_patterns() {
        let config = parse_ok(ONE);
        let g = &config.gateway;
        assert_eq!(g.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(g.events_stream, "ami:events:{server}");
        assert_eq!(g.events_maxlen, 1_000_000);
        assert_eq!(g.status_stream, "ami:status");
        assert_eq!(g.actions_stream, "ami:actions");
        assert_eq!(g.server_actions_stream, "ami:actions:{server}");
        assert_eq!(g.group, "ami-gateway");
        assert!(!g.consumer.is_empty());
        assert_eq!(g.max_in_flight, 1_000);
        assert_eq!(g.route, Route::RoundRobin);
        let text = format!(
            "{ONE}\n[gateway]\nredis_url = \"redis://10.0.0.9:6380/2\"\nconsumer = \"gw-a\"\n\
             route = \"failover\"\nmax_in_flight = 8\nevents_maxlen = \"5000\"\n"
        );
        let config = parse_ok(&text);
        assert_eq!(config.gateway.consumer, "gw-a");
        assert_eq!(config.gateway.route, Route::Failover);
        assert_eq!(config.gateway.max_in_flight, 8);
        assert_eq!(config.gateway.events_maxlen, 5000);
        let env = [(REDIS_URL_ENV, "redis://127.0.0.1:7000")];
        let config = parse(&text, &env_of(&env)).unwrap();
        assert_eq!(config.gateway.redis_url, "redis://127.0.0.1:7000");
        let e = parse_err(&format!(
            "{ONE}\n[gateway]\nevents_stream = \"ami:events\"\n"
        ));
        assert!(
            e.starts_with("gateway.events_stream: expected a stream name with `{server}`"),
            "{e}"
        );
        let e = parse_err(&format!("{ONE}\n[gateway]\nroute = \"random\"\n"));
        assert!(e.starts_with("gateway.route: "), "{e}");
        let e = parse_err(&format!("{ONE}\n[gateway]\nredis = \"x\"\n"));
        assert!(e.starts_with("gateway.redis: unknown key"), "{e}");
    }

    #[test]
    fn unknown_keys_name_their_full_path() {
        let e = parse(&format!("bridge_laravel_events = false\n{ONE}"), &|_| None).unwrap_err();
        assert!(
            matches!(&e, ConfigError::UnknownKey { key, .. } if key == "bridge_laravel_events"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "bridge_laravel_events: unknown key (expected one of: default, servers, options, listen, \
             gateway)"
        );
        let e = parse_err(&format!("{ONE}\n[options]\nmax_frame = 1\n"));
        assert!(
            e.starts_with("options.max_frame: unknown key (expected one of: connect_timeout, "),
            "{e}"
        );
        let e = parse_err(&one_with("timeout = 30"));
        assert!(e.starts_with("servers.node_1.timeout: unknown key"), "{e}");
        let e = parse_err(&format!("{ONE}\n[listen]\ntick = 1\n"));
        assert!(e.starts_with("listen.tick: unknown key"), "{e}");
        // Keys that are not bare TOML keys are quoted.
        let text = r#"
            [servers."pbx one"]
            host = "10.0.0.5"
            username = "admin"
            secret = "s"
            prot = 1
        "#;
        let e = parse_err(text);
        assert!(
            e.starts_with(r#"servers."pbx one".prot: unknown key"#),
            "{e}"
        );
        // The unknown key is reported before its value is expanded.
        let e = parse_err(&one_with(r#"hots = "${UNSET}""#));
        assert!(e.starts_with("servers.node_1.hots: unknown key"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse(&one_with(r#"port = "abc""#), &|_| None).unwrap_err();
        assert!(
            matches!(&e, ConfigError::BadValue { key, .. } if key == "servers.node_1.port"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            r#"servers.node_1.port: expected an integer 1..=65535, got "abc""#
        );
        for bad in ["0", "65536", "-1", "5038.0", "true", "[5038]"] {
            let e = parse_err(&one_with(&format!("port = {bad}")));
            assert!(
                e.starts_with("servers.node_1.port: expected an integer 1..=65535, got "),
                "{e}"
            );
        }
        let cases = [
            (
                "connect_timeout = 0",
                "options.connect_timeout: expected a number of seconds > 0",
            ),
            (
                "read_timeout = -1",
                "options.read_timeout: expected a number of seconds > 0",
            ),
            (
                "heartbeat_interval = -1",
                "options.heartbeat_interval: expected a number of seconds >= 0",
            ),
            (
                "circuit_cooldown = 1e300",
                "options.circuit_cooldown: expected a number of seconds > 0",
            ),
            (
                "max_pending_actions = 0",
                "options.max_pending_actions: expected an integer >= 1, got 0",
            ),
            (
                "event_queue_capacity = 0",
                "options.event_queue_capacity: expected an integer >= 1",
            ),
            (
                "write_buffer_limit = 0",
                "options.write_buffer_limit: expected an integer >= 1",
            ),
            (
                "max_frame_size = -5",
                "options.max_frame_size: expected an integer >= 1",
            ),
            (
                "circuit_failure_threshold = 0",
                "options.circuit_failure_threshold: expected an integer 1..=4294967295",
            ),
            (
                "memory_limit = 0",
                "options.memory_limit: expected an integer >= 1",
            ),
            (
                "enforce_ip_endpoints = 1",
                "options.enforce_ip_endpoints: expected true or false, got 1",
            ),
            (
                "blocked_events = [1]",
                "options.blocked_events: expected an array of names",
            ),
            (
                "redaction_key_patterns = \"x\"",
                "options.redaction_key_patterns: expected an array of non-empty strings",
            ),
            (
                "redaction_value_patterns = [\"\"]",
                "options.redaction_value_patterns: expected an array of non-empty strings",
            ),
        ];
        for (line, says) in cases {
            let e = parse_err(&format!("{ONE}\n[options]\n{line}\n"));
            assert!(e.starts_with(says), "{line}: {e}");
        }
        let e = parse_err(&one_with(r#"auth = "sha1""#));
        assert_eq!(
            e,
            r#"servers.node_1.auth: expected one of "plain", "md5", got "sha1""#
        );
        let e = parse_err(&one_with("connect_timeout = 0"));
        assert!(
            e.starts_with("servers.node_1.connect_timeout: expected a number of seconds > 0"),
            "{e}"
        );
        let e = parse_err(&ONE.replace(r#""admin""#, r#""ad\nmin""#));
        assert!(
            e.starts_with("servers.node_1.username: expected a non-empty string"),
            "{e}"
        );
        let e = parse_err("servers = 5");
        assert_eq!(e, "servers: expected a table of servers, got 5");
        let e = parse_err("[servers]\nnode_1 = \"x\"");
        assert_eq!(e, r#"servers.node_1: expected a table, got "x""#);
        let e = parse_err(&format!("options = []\n{ONE}"));
        assert_eq!(e, "options: expected a table, got an array");
        let e = parse_err(&one_with(r#"tls_ca = "ca.pem""#));
        assert!(
            e.starts_with("servers.node_1.tls_ca: set, but tls = false"),
            "{e}"
        );
        let e = parse_err(&one_with(r#"tls_roots = "system""#));
        assert!(
            e.starts_with("servers.node_1.tls_roots: set, but tls = false"),
            "{e}"
        );
        let e = parse_err(&one_with("tls = true\ntls_roots = \"os\""));
        assert!(
            e.starts_with(r#"servers.node_1.tls_roots: expected one of "bundled", "system""#),
            "{e}"
        );
        let e = parse_err(&one_with(
            "tls = true\ntls_ca = \"ca.pem\"\ntls_roots = \"system\"",
        ));
        assert!(e.contains("set with tls_ca"), "{e}");
        let roots = |extra: &str| parse_ok(&one_with(extra)).servers["node_1"].tls_roots;
        assert_eq!(roots("tls = true"), TlsRoots::Bundled);
        assert_eq!(
            roots("tls = true\ntls_roots = \"system\""),
            TlsRoots::System
        );
        // An empty tls_ca is "not set".
        assert_eq!(
            parse_ok(&one_with(r#"tls_ca = """#)).servers["node_1"].tls_ca,
            None
        );
    }

    /// Long durations are no longer capped (one too long for a deadline means no
    /// deadline in the core); settings that cannot work are refused by the core's
    /// `Config::validate`, and the error names the key that set them.
    #[test]
    fn the_core_validates_the_connection_settings_and_the_error_names_the_key() {
        let config = parse_ok(&format!(
            "{ONE}\n[options]\ncircuit_cooldown = 1e9\nheartbeat_interval = 1e12\nread_timeout = 1e15\n"
        ));
        assert_eq!(
            config.options.circuit_cooldown,
            Duration::from_secs(1_000_000_000)
        );
        let c = &config.server("node_1").unwrap().connection;
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1_000_000_000_000));
        assert_eq!(c.action_timeout, Duration::from_secs(1_000_000_000_000_000));

        let e = parse(
            &format!("{ONE}\n[options]\nmax_frame_size = 5000000000\n"),
            &|_| None,
        )
        .unwrap_err();
        assert!(
            matches!(
                &e,
                ConfigError::Unworkable {
                    key,
                    source: ami_proto::ConfigError::MaxFrameSizeTooLarge { size: 5_000_000_000 },
                } if key == "options.max_frame_size"
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("options.max_frame_size: limits.max_frame_size is 5000000000 bytes"),
            "{e}"
        );
        let e = parse(
            &format!("{ONE}\n[options]\nmax_command_output = 100\n"),
            &|_| None,
        )
        .unwrap_err();
        assert!(
            matches!(
                &e,
                ConfigError::Unworkable {
                    key,
                    source: ami_proto::ConfigError::MaxCommandOutputBelowFrameSize { .. },
                } if key == "options.max_command_output"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn secrets_never_appear_in_errors_or_debug() {
        let e = parse_err(&ONE.replace(r#"secret = "hunter2""#, "secret = 12345"));
        assert_eq!(
            e,
            "servers.node_1.secret: expected a non-empty string, got an integer (not shown)"
        );
        let e = parse_err(&ONE.replace(r#""hunter2""#, r#""hunter2\u0007""#));
        assert_eq!(
            e,
            "servers.node_1.secret: expected a non-empty string, got a string (not shown)"
        );
        let e = parse_err(&ONE.replace(r#""hunter2""#, r#""""#));
        assert_eq!(
            e,
            "servers.node_1.secret: expected a non-empty string, got an empty string"
        );
        // A syntax error on the secret's line shows the position, not the line.
        let e = parse(&ONE.replace(r#""hunter2""#, r#""hunter2"#), &|_| None).unwrap_err();
        assert!(matches!(e, ConfigError::Toml { .. }), "{e:?}");
        let e = e.to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.starts_with("invalid TOML: line 5, column "), "{e}");
        assert!(e.contains("in the value of `secret`"), "{e}");

        let config = parse_ok(ONE);
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("********"), "{shown}");
    }

    #[test]
    fn toml_syntax_errors_have_a_position() {
        let e = parse_err("a = 1\na = 2\n");
        assert_eq!(
            e,
            "invalid TOML: line 2, column 1 in the value of `a`: duplicate key"
        );
        let e = parse_err("[servers.x]\n[servers.x]\n");
        assert_eq!(
            e,
            "invalid TOML: line 2, column 10 in [servers.x]: duplicate key"
        );
    }

    #[test]
    fn host_names_need_enforce_ip_endpoints_off() {
        let text = ONE.replace("10.0.0.5", "pbx.example.com");
        let e = parse(&text, &|_| None).unwrap_err();
        assert!(
            matches!(&e, ConfigError::BadValue { key, .. } if key == "servers.node_1.host"),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(
            e.contains(r#""pbx.example.com" is not an IP address"#),
            "{e}"
        );
        assert!(e.contains("enforce_ip_endpoints = false"), "{e}");
        assert!(parse_err(&ONE.replace("10.0.0.5", "[::1]")).starts_with("servers.node_1.host"));

        let config = parse_ok(&format!(
            "{text}\n[options]\nenforce_ip_endpoints = false\n"
        ));
        assert_eq!(config.servers["node_1"].host, "pbx.example.com");
        assert!(!config.options.enforce_ip_endpoints);
        let e = parse_err(&format!(
            "{}\n[options]\nenforce_ip_endpoints = false\n",
            ONE.replace("10.0.0.5", "pbx example")
        ));
        assert!(e.starts_with("servers.node_1.host: "), "{e}");
    }

    #[test]
    fn action_id_length_is_capped_at_64() {
        let with = |n: u32| format!("{ONE}\n[options]\nmax_action_id_length = {n}\n");
        assert_eq!(parse_ok(&with(64)).options.max_action_id_length, 64);
        assert_eq!(parse_ok(&with(20)).options.max_action_id_length, 20);
        let e = parse_err(&with(65));
        assert!(
            e.starts_with("options.max_action_id_length: expected an integer 1..=64"),
            "{e}"
        );
        assert!(e.contains("corrupt Asterisk's buffers"), "{e}");
        assert!(e.ends_with("got 65"), "{e}");
        // The seeds' 128 is refused too.
        assert!(parse_err(&with(128)).starts_with("options.max_action_id_length"));
    }

    #[test]
    fn default_server_resolution() {
        let two = format!("{ONE}\n{}", ONE.replace("node_1", "node_2"));
        // Several servers, no default: only naming one works.
        let config = parse_ok(&two);
        assert_eq!(config.default, None);
        let e = config.default_server().unwrap_err();
        assert!(matches!(&e, ConfigError::NoDefault { known } if known == &["node_1", "node_2"]));
        assert_eq!(
            e.to_string(),
            "no default server: set `default` (or AMI_DEFAULT_SERVER) to one of: node_1, node_2"
        );
        assert_eq!(config.server("node_2").unwrap().key, "node_2");
        let e = config.server("node_3").unwrap_err();
        assert!(
            matches!(&e, ConfigError::UnknownServer { key, known } if key == "node_3" && known.len() == 2)
        );
        assert_eq!(
            e.to_string(),
            "unknown server `node_3` (configured: node_1, node_2)"
        );

        // An explicit default.
        let config = parse_ok(&format!("default = \"node_2\"\n{two}"));
        assert_eq!(config.default_server().unwrap().key, "node_2");
        let config = parse(&two, &env_of(&[("AMI_DEFAULT_SERVER", "node_1")])).unwrap();
        assert_eq!(config.default_server().unwrap().key, "node_1");
        // An empty default (e.g. "${AMI_X:-}") is no default.
        let config = parse_ok(&format!("default = \"\"\n{two}"));
        assert_eq!(config.default, None);
        // A default that names no server is refused at once.
        let e = parse_err(&format!("default = \"node_9\"\n{two}"));
        assert_eq!(
            e,
            "default: no server `node_9` (configured: node_1, node_2)"
        );

        // One server: it is the default.
        assert_eq!(parse_ok(ONE).default_server().unwrap().key, "node_1");

        // No server at all.
        let e = parse("[options]\nconnect_timeout = 5\n", &|_| None).unwrap_err();
        assert!(matches!(e, ConfigError::NoServers), "{e:?}");
        assert!(matches!(parse("", &|_| None), Err(ConfigError::NoServers)));
        let e = parse("default = \"x\"\n[servers]\n", &|_| None).unwrap_err();
        assert!(matches!(e, ConfigError::NoServers), "{e:?}");

        // Two keys that map to the same override variables.
        let e = parse_err(&format!("{ONE}\n{}", ONE.replace("node_1", "node-1")));
        assert!(e.contains("share the override prefix AMI_NODE_1_"), "{e}");
    }

    #[test]
    fn redactor_is_built_from_the_options() {
        let text = format!(
            "{ONE}\n[options]\nredaction_keys = \"Token, ApiKey\"\n\
             redaction_key_patterns = [\"^x-\"]\nredaction_value_patterns = ['tok_[a-z]+']\n"
        );
        let r = parse_ok(&text).options.redactor().unwrap();
        assert!(r.is_secret_key("token"));
        assert!(r.is_secret_key("APIKEY"));
        assert!(r.is_secret_key("X-Auth"));
        assert!(r.is_secret_key("Secret"));
        assert!(!r.is_secret_key("Channel"));
        assert_eq!(r.redact("Data", "a tok_abc b"), "a ******** b");
        // Every server's connection settings carry the policy.
        let file = parse_ok(&format!(
            "{text}\n[servers.node_2]\nhost = \"127.0.0.2\"\nusername = \"u\"\nsecret = \"s\"\n"
        ));
        assert_eq!(file.servers.len(), 2);
        for settings in file.servers.values() {
            let r = &settings.connection.redactor;
            assert!(
                r.is_secret_key("token") && r.is_secret_key("X-Auth"),
                "{r:?}"
            );
            assert_eq!(r.redact("Data", "a tok_abc b"), "a ******** b");
        }
        // Without redaction options: the built-in keys only.
        let plain = &parse_ok(ONE).servers["node_1"].connection.redactor;
        assert!(plain.is_secret_key("Secret") && !plain.is_secret_key("token"));

        // An invalid pattern is refused when parsing, naming its key.
        let e = parse(
            &format!("{ONE}\n[options]\nredaction_value_patterns = [\"ok\", \"(\"]\n"),
            &|_| None,
        )
        .unwrap_err();
        assert!(
            matches!(&e, ConfigError::InvalidPattern { key, pattern, .. }
                if key == "options.redaction_value_patterns[1]" && pattern == "("),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with(
                r#"options.redaction_value_patterns[1]: invalid regular expression "(""#
            )
        );
        let e = parse_err(&format!(
            "{ONE}\n[options]\nredaction_key_patterns = [\"[z-a]\"]\n"
        ));
        assert!(
            e.starts_with("options.redaction_key_patterns[0]: invalid regular expression"),
            "{e}"
        );

        // `redactor()` names the key too, for options built by hand.
        let options = Options {
            redaction_key_patterns: vec!["a".into(), "(".into()],
            ..Options::default()
        };
        let e = options.redactor().unwrap_err();
        assert!(
            matches!(&e, ConfigError::InvalidPattern { key, .. } if key == "options.redaction_key_patterns[1]"),
            "{e:?}"
        );
    }

    #[test]
    fn the_example_file_parses() {
        let example = include_str!("../../ami.example.toml");
        let env = env_of(&[("AMI_NODE1_SECRET", "s1"), ("AMI_NODE2_SECRET", "s2")]);
        let config = parse(example, &env).unwrap();
        assert_eq!(config.default_server().unwrap().key, "node_1");
        assert_eq!(config.servers.len(), 2);
        let n1 = &config.servers["node_1"];
        assert_eq!((n1.host.as_str(), n1.port), ("127.0.0.1", 5038));
        assert_eq!(n1.connection.username, "admin");
        assert_eq!(n1.connection.secret.expose(), "s1");
        let n2 = &config.servers["node_2"];
        assert_eq!(n2.connection.auth, AuthMethod::Md5);
        assert_eq!(n2.connection.secret.expose(), "s2");
        assert_eq!(config.options.blocked_events, ["FullyBooted", "RTCPSent"]);
        // The values the example spells out are the defaults.
        let defaults = Options {
            blocked_events: config.options.blocked_events.clone(),
            ..Options::default()
        };
        assert_eq!(config.options, defaults);
        assert_eq!(config.listen, ListenSettings::default());
        assert_eq!(config.gateway, GatewaySettings::default());
        config.options.redactor().unwrap();

        // The seeds' .env names work through the ${} of the example.
        let env = env_of(&[
            ("AMI_NODE1_HOST", "10.0.0.5"),
            ("AMI_NODE1_SECRET", "s1"),
            ("AMI_NODE2_HOST", "10.0.0.6"),
            ("AMI_NODE2_SECRET", "s2"),
            ("AMI_NODE2_USERNAME", "ops"),
        ]);
        let config = parse(example, &env).unwrap();
        assert_eq!(config.servers["node_1"].host, "10.0.0.5");
        assert_eq!(config.servers["node_2"].host, "10.0.0.6");
        assert_eq!(config.servers["node_2"].connection.username, "ops");

        // Without the secrets it fails, naming what is missing.
        let e = parse_err_with(example, &[("AMI_NODE2_SECRET", "s2")]);
        assert!(
            e.starts_with(
                "servers.node_1.secret: environment variable AMI_NODE1_SECRET is not set"
            ),
            "{e}"
        );
    }

    #[test]
    fn file_selection() {
        let none = |_: &str| None;
        assert_eq!(select_path(None, &none), PathBuf::from("ami.toml"));
        let env = env_of(&[("AMI_CONFIG", "/etc/ami.toml")]);
        assert_eq!(select_path(None, &env), PathBuf::from("/etc/ami.toml"));
        assert_eq!(
            select_path(Some(Path::new("x.toml")), &env),
            PathBuf::from("x.toml")
        );
        let empty = env_of(&[("AMI_CONFIG", "")]);
        assert_eq!(select_path(None, &empty), PathBuf::from("ami.toml"));
    }

    #[test]
    fn load_reads_the_file_and_resolves_tls_ca() {
        let dir = std::env::temp_dir().join(format!("ami-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ami.toml");
        // A server key no AMI_* variable of the test machine is likely to touch.
        let text = r#"
            [servers.zz_load_test]
            host = "10.0.0.5"
            username = "admin"
            secret = "hunter2"
            tls = true
            tls_ca = "certs/ca.pem"
        "#;
        std::fs::write(&path, text).unwrap();
        let config = load(Some(&path)).unwrap();
        let server = &config.servers["zz_load_test"];
        assert_eq!(
            server.tls_ca.as_deref(),
            Some(dir.join("certs/ca.pem").as_path())
        );

        std::fs::write(&path, text.replace("10.0.0.5", "pbx.invalid")).unwrap();
        let e = load(Some(&path)).unwrap_err();
        assert!(
            matches!(&e, ConfigError::InFile { source, .. }
            if matches!(**source, ConfigError::BadValue { .. })),
            "{e:?}"
        );
        let message = e.to_string();
        assert!(
            message.starts_with(&format!("{}: servers.zz_load_test.host: ", path.display())),
            "{message}"
        );

        let missing = dir.join("missing.toml");
        let e = load(Some(&missing)).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Io { path, .. } if *path == missing),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("cannot read config file "), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
