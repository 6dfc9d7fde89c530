//! `ami`: the command-line worker of the AMI client.
//!
//! `main` only parses the command line and dispatches to one module per subcommand;
//! each subcommand returns `Result<(), CliError>` and this file turns the error into a
//! message on stderr and an exit code.

mod config;
mod decode;
mod demo;
mod gateway;
mod http;
mod json;
mod listen;
mod originate;
mod outlet;
mod send;
mod service;
mod worker;

/// Events are allocated on the AMI loop and freed on the outlet thread; glibc's malloc
/// takes an arena lock for every such cross-thread free, mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fmt;
use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The `ami` command line.
#[derive(Debug, Parser)]
#[command(
    name = "ami",
    version,
    about = "Asterisk Manager Interface client tools"
)]
struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    command: Task,
}

/// The subcommands of `ami`.
#[derive(Debug, Subcommand)]
enum Task {
    /// Show the client at work against simulated Asterisk nodes: no Asterisk, no
    /// config; checks itself and exits 0 when every step worked.
    Demo(demo::DemoArgs),
    /// Decode raw AMI bytes (as a client receives them) into one JSON object per line.
    Decode(decode::DecodeArgs),
    /// Connect, log in, and write every event to stdout as one JSON object per line.
    Listen(listen::ListenArgs),
    /// Follow every call of the servers and write one JSON record per call when it
    /// ends (outcome, cause, ring and talk time); `ami listen --calls` without events.
    Calls(listen::ListenArgs),
    /// Own the servers' AMI connections and bridge them to Redis Streams: events and
    /// status out, actions in, completions back.
    Gateway(gateway::GatewayArgs),
    /// Place calls of one shape on one server, paced by its limits, and print one JSON
    /// record per call when it ends.
    Originate(originate::OriginateArgs),
    /// Send one action and print its completion as JSON.
    Send(send::SendArgs),
    /// Run a CLI command on Asterisk and print its output lines.
    Command(send::CommandArgs),
    /// Print a shell completion script: `ami completions bash > /etc/bash_completion.d/ami`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `ami manpage | man -l -`.
    Manpage,
}

/// Why a subcommand failed.
#[derive(Debug)]
pub enum CliError {
    /// The command line or its inputs were unusable (exit code 2).
    Usage(String),
    /// The work itself failed: a connection, a login, an action (exit code 1).
    Failed(String),
    /// The output of `ami listen` failed, e.g. a closed pipe (exit code 3).
    OutletClosed(String),
    /// A signal stopped `send` or `command` after its Logoff (exit code 130).
    Interrupted,
    /// Reading or writing failed (exit code 1).
    Io {
        /// What was being done, e.g. `cannot open capture.raw`.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl CliError {
    /// An I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        CliError::Io {
            context: context.into(),
            source,
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::OutletClosed(_) => 3,
            CliError::Interrupted => 130,
            CliError::Failed(_) | CliError::Io { .. } => 1,
        }
    }

    /// Whether this is a write to a closed pipe (`ami decode | head`), which ends the
    /// command quietly and successfully.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(message) | CliError::Failed(message) => f.write_str(message),
            CliError::OutletClosed(why) => write!(f, "output closed: {why}"),
            CliError::Interrupted => f.write_str("interrupted by a signal (logged off)"),
            CliError::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Usage(_)
            | CliError::Failed(_)
            | CliError::OutletClosed(_)
            | CliError::Interrupted => None,
            CliError::Io { source, .. } => Some(source),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Decode(args) => decode::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Listen(args) => listen::run(&args),
        Task::Gateway(args) => gateway::run(&args),
        Task::Calls(args) => listen::run_calls(&args),
        Task::Originate(args) => originate::run(&args),
        Task::Send(args) => send::run_send(&args),
        Task::Command(args) => send::run_command(&args),
        Task::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            // Into a buffer first: clap_complete panics on a write error (a reader
            // that closed the pipe early), which then reaches us as an error.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "ami", &mut script);
            io::Write::write_all(&mut io::stdout(), &script)
                .map_err(|e| CliError::io("cannot write the completion script", e))
        }
        Task::Manpage => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command)
                .render(&mut io::stdout())
                .map_err(|e| CliError::io("cannot write the manual page", e))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is_broken_pipe() => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ami: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
