//! `ami originate`: places calls of one shape on one server, paced by the server's
//! limits (`max_calls_per_second`, `calls_burst`, `max_concurrent_calls`), and prints
//! one `call` record (the README's schema) per call when it ends.
//!
//! Each call is an async `Originate` with a `ChannelId` of its own, so that the call
//! tracker knows its first channel at once; the session takes the `call` events the
//! tracker follows. A call counts as up from its Originate to its last hangup, which
//! is what `max_concurrent_calls` limits.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::{self, Write};
use std::rc::Rc;
use std::time::Duration;

use ami_mio::ami_cluster::CallEnded;
use ami_mio::{Driver, ServerId};
use ami_proto::action::{EventMask, Originate};
use ami_proto::{ActionError, Reply, SendError, Stage};

use crate::CliError;
use crate::json::WallClock;
use crate::outlet::Record;
use crate::worker::{CallTracking, ConfigArg, driver_for, init_logging, select};

/// Arguments of `ami originate`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["exten", "app"])))]
pub struct OriginateArgs {
    /// The server (default: the config's default server).
    #[arg(long, value_name = "KEY")]
    pub server: Option<String>,
    /// The channel to call, e.g. `PJSIP/100` or `Local/100@from-internal`.
    pub channel: String,
    /// Connect the answered call to this extension...
    #[arg(long, value_name = "EXTEN")]
    pub exten: Option<String>,
    /// ...in this context.
    #[arg(long, value_name = "CONTEXT", default_value = "default")]
    pub context: String,
    /// ...at this priority.
    #[arg(long, value_name = "PRIORITY", default_value = "1")]
    pub priority: String,
    /// Or run this application on the answered call...
    #[arg(long, value_name = "APP", conflicts_with = "exten")]
    pub app: Option<String>,
    /// ...with this data.
    #[arg(long, value_name = "DATA", default_value = "")]
    pub data: String,
    /// A channel variable, `K=V` (repeat for more).
    #[arg(long = "var", value_name = "K=V", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// The caller ID, e.g. `"Sales" <100>`.
    #[arg(long, value_name = "CID")]
    pub caller_id: Option<String>,
    /// How long to ring before giving up, in seconds (Asterisk's default: 30).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// How many calls to place.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub count: u64,
    /// The config file.
    #[command(flatten)]
    pub config: ConfigArg,
}

fn parse_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected K=V, got {text:?}")),
    }
}

/// How long `ami originate` waits for the login.
const LOGIN_WAIT: Duration = Duration::from_secs(30);

/// Runs `ami originate`: exit 0 when every call ended (whatever its outcome), 1 when
/// an Originate was refused or timed out.
pub fn run(args: &OriginateArgs) -> Result<(), CliError> {
    init_logging();
    if let Some(t) = args.timeout
        && !(t.is_finite() && t > 0.0 && t < 86_400.0)
    {
        return Err(CliError::Usage(format!(
            "--timeout: expected seconds > 0, got {t}"
        )));
    }
    let file = args.config.load()?;
    let keys = select(&file, args.server.as_deref(), false)?;
    let (mut driver, ids) = driver_for(&file, &keys, CallTracking::All, |c| {
        c.events = EventMask::Classes(vec!["call".into()]);
    })?;
    let id = ids[0];
    driver
        .connect(id)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    driver
        .wait_ready(id, LOGIN_WAIT)
        .map_err(|e| CliError::Failed(format!("{}: {e}", keys[0])))?;

    // The core's dialer tracks the calls and paces the Originates.
    let ended_calls: Rc<RefCell<Vec<CallEnded>>> = Rc::default();
    {
        let ended_calls = ended_calls.clone();
        driver.on_call_ended(move |_, call| ended_calls.borrow_mut().push(call.clone()));
    }
    let server = keys[0].as_str();
    let completions: Completions = Rc::default();
    let (mut placed, mut failures) = (0u64, 0u64);
    // The ChannelIds of our calls whose record is still to come.
    let mut ours: HashSet<String> = HashSet::new();
    let mut out = io::stdout().lock();
    let mut line = Vec::new();
    loop {
        // Every call is handed to the driver at once; those over the limits wait in
        // its queue, and when that is full, here.
        while placed < args.count {
            match place(args, &mut driver, id, &completions) {
                Ok(channel_id) => {
                    ours.insert(channel_id);
                    placed += 1;
                }
                Err(SendError::Paced { .. }) => break,
                Err(error) => {
                    tracing::error!(%error, "originate refused");
                    failures += 1;
                    placed += 1;
                }
            }
        }
        driver.tick_all(Duration::from_millis(20));
        for (channel_id, result) in completions.borrow_mut().drain(..) {
            let Err(error) = result else { continue };
            tracing::warn!(%error, channel_id = %channel_id, "originate failed");
            match error {
                // Never sent: no call, so no record comes.
                ActionError::Timeout {
                    stage: Stage::Paced,
                    ..
                }
                | ActionError::NotSent(_) => {
                    ours.remove(&channel_id);
                    failures += 1;
                }
                // Sent: its call ends `failed` (or by its channels).
                ActionError::Rejected { .. } | ActionError::Timeout { .. } => failures += 1,
                _ => {}
            }
        }
        let clock = WallClock::new();
        for call in ended_calls.borrow_mut().drain(..) {
            // The server's other calls count for its limits, but are not ours to print.
            if !call
                .registered_as
                .as_ref()
                .is_some_and(|id| ours.remove(id))
            {
                continue;
            }
            line.clear();
            Record::call(server, &call, &clock).write_json(&mut line);
            out.write_all(&line)
                .and_then(|()| out.flush())
                .map_err(|e| CliError::io("cannot write to stdout", e))?;
        }
        if placed >= args.count && ours.is_empty() {
            break;
        }
    }
    if let Some(status) = driver.dialer_status(id) {
        tracing::info!(
            calls = status.admitted,
            waited_ms = status.waited.as_millis() as u64,
            failures,
            "calls placed"
        );
    }
    driver.shutdown(Duration::from_secs(5));
    if failures > 0 {
        return Err(CliError::Failed(format!(
            "{failures} of {} Originates were refused or timed out",
            args.count
        )));
    }
    Ok(())
}

/// Originate completions by the call's ChannelId, as they come.
type Completions = Rc<RefCell<Vec<(String, Result<Reply, ActionError>)>>>;

/// Sends one Originate with a `ChannelId` of its own, which it returns (the core's
/// tracker registers the call under it).
fn place(
    args: &OriginateArgs,
    driver: &mut Driver,
    id: ServerId,
    completions: &Completions,
) -> Result<String, SendError> {
    let channel_id = unique_channel_id();
    let mut originate = match &args.exten {
        Some(exten) => Originate::extension(
            args.channel.clone(),
            exten.clone(),
            args.context.clone(),
            args.priority.as_str(),
        ),
        None => Originate::application(
            args.channel.clone(),
            args.app.clone().unwrap_or_default(),
            args.data.clone(),
        ),
    }
    .with_async(true)
    .with_channel_id(channel_id.clone());
    for (k, v) in &args.vars {
        originate = originate.with_variable(k.clone(), v.clone());
    }
    if let Some(cid) = &args.caller_id {
        originate = originate.with_caller_id(cid.clone());
    }
    if let Some(t) = args.timeout {
        originate = originate.with_timeout(Duration::from_secs_f64(t));
    }
    let done = completions.clone();
    let key = channel_id.clone();
    driver.send(id, originate, move |result| {
        done.borrow_mut().push((key, result));
    })?;
    Ok(channel_id)
}

/// A `ChannelId` no other call has: `ami-<pid>-<time>-<n>`.
fn unique_channel_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!(
        "ami-{}-{ms}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
