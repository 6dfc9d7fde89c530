//! What `listen`, `send` and `command` share: the config file, logging, and a driver
//! with the selected servers.

use std::path::PathBuf;

use ami_mio::ami_cluster::{DialerConfig, Pacer};
use ami_mio::{CircuitConfig, Driver, DriverOptions, Endpoint, Policy, ServerId, ServerSpec};

use crate::CliError;
use crate::config::{self, FileConfig};

/// The `--config` option.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Config file (TOML). Default: $AMI_CONFIG, else ./ami.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// Loads the file. Its redaction policy travels in each server's connection
    /// settings, so every connection masks its own logs and errors with it.
    pub fn load(&self) -> Result<FileConfig, CliError> {
        config::load(self.config.as_deref()).map_err(|e| CliError::Usage(e.to_string()))
    }
}

/// Logs to stderr. The filter comes from `AMI_LOG`, else `RUST_LOG` (e.g. `debug`,
/// `ami_proto=trace`), `info` by default. `AMI_LOG_FORMAT=json` writes one JSON
/// object per line (the seeds' structured logs: `server_key`, `action_id` where the
/// event has them, and `worker_pid` on the lines of every thread the CLI starts);
/// anything else is text.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AMI_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("AMI_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init()
            .is_ok()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
            .is_ok()
    };
    if installed {
        // Every line the main thread logs carries the process id, and so do the lines
        // of the threads started with `spawn_thread`.
        let span = WORKER_SPAN
            .get_or_init(|| tracing::info_span!("worker", worker_pid = std::process::id()));
        std::mem::forget(span.clone().entered());
    }
}

/// The `worker` span (its `worker_pid` field), once logging is set up.
static WORKER_SPAN: std::sync::OnceLock<tracing::Span> = std::sync::OnceLock::new();

/// Starts a named thread whose log lines carry `worker_pid`, as the main thread's do.
pub fn spawn_thread<T: Send + 'static>(
    name: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    let span = WORKER_SPAN
        .get()
        .cloned()
        .unwrap_or_else(tracing::Span::none);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || span.in_scope(body))
}

/// The keys of the servers a command should use: `--all`, `--server KEY`, or the
/// config's default server.
pub fn select(file: &FileConfig, server: Option<&str>, all: bool) -> Result<Vec<String>, CliError> {
    if all {
        return Ok(file.servers.keys().cloned().collect());
    }
    let settings = match server {
        Some(key) => file.server(key),
        None => file.default_server(),
    }
    .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(vec![settings.key.clone()])
}

/// Whether a command's driver follows the servers' calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallTracking {
    /// Every server's (the command reports calls or places them).
    All,
    /// Only where the config sets call limits, so that its Originates are paced.
    WhereLimited,
}

/// A driver with the servers `keys` added (not yet connected). `adjust` may change each
/// server's connection settings (e.g. `Events: off` for one-shot commands). The
/// servers' calls are tracked and their Originates paced by the config's limits (the
/// core's dialer, see `ami_cluster::dialer`) as `calls` says.
pub fn driver_for(
    file: &FileConfig,
    keys: &[String],
    calls: CallTracking,
    adjust: impl Fn(&mut ami_proto::Config),
) -> Result<(Driver, Vec<ServerId>), CliError> {
    let o = &file.options;
    let options = DriverOptions {
        enforce_ip_endpoints: o.enforce_ip_endpoints,
        // Host names, when allowed, are looked up by the system resolver before every
        // connect attempt, on a thread of their own (never in a tick).
        resolver: (!o.enforce_ip_endpoints)
            .then(|| std::sync::Arc::new(ami_mio::SystemResolver) as std::sync::Arc<_>),
        policy: Policy {
            circuit: CircuitConfig {
                failure_threshold: o.circuit_failure_threshold,
                cooldown: o.circuit_cooldown,
                half_open_max_probes: o.circuit_half_open_max_probes,
            },
            ..Policy::default()
        },
        // One budget for every server of the process (the seeds' memory_limit).
        memory_limit: o.memory_limit,
        ..DriverOptions::default()
    };
    let mut driver =
        Driver::with_options(options).map_err(|e| CliError::io("cannot create the poll", e))?;
    let mut ids = Vec::new();
    for key in keys {
        let settings = file
            .server(key)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let mut connection = settings.connection.clone();
        adjust(&mut connection);
        let mut spec = ServerSpec::new(
            connection,
            Endpoint::new(settings.host.clone(), settings.port),
        );
        if settings.tls {
            spec.tls = Some(ami_mio::tls::TlsSettings {
                server_name: settings.host.clone(),
                ca_file: settings.tls_ca.clone(),
                roots: settings.tls_roots,
            });
        }
        let id = driver
            .add_server(spec)
            .map_err(|e| CliError::Usage(format!("servers.{key}: {e}")))?;
        if calls == CallTracking::All || Pacer::new(settings.pacing).is_limited() {
            driver.track_calls(
                id,
                DialerConfig {
                    pacing: settings.pacing,
                    ..DialerConfig::default()
                },
            );
        }
        ids.push(id);
    }
    if let Some(default) = file
        .default
        .as_deref()
        .filter(|d| keys.iter().any(|k| k == d))
    {
        driver
            .set_default_server(default)
            .map_err(|e| CliError::Usage(e.to_string()))?;
    }
    Ok((driver, ids))
}
