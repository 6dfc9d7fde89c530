//! Submitting actions from other threads: a bounded channel plus a `mio::Waker`, so a
//! driver blocked in `poll` wakes at once.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use ami_cluster::{NoServerAvailable, Strategy};
use ami_proto::{Action, ActionError, Reply, SendError};
use mio::Waker;

/// Why a submitted action did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// No server has this key.
    #[error("no server {0:?}")]
    UnknownServer(String),
    /// The driver refused the action (not ready, too many pending, backpressure, ...).
    #[error(transparent)]
    Refused(SendError),
    /// A routed submission found no server its strategy could use.
    #[error(transparent)]
    NoServer(NoServerAvailable),
    /// The action was sent and failed.
    #[error(transparent)]
    Failed(ActionError),
    /// The driver's inbox is full: the driver thread is not keeping up.
    #[error("driver inbox full")]
    InboxFull,
    /// The driver is gone.
    #[error("driver gone")]
    DriverGone,
}

/// Completion callback of a submitted action; runs on the driver's thread.
pub type SubmitCallback = Box<dyn FnOnce(Result<Reply, SubmitError>) + Send>;

/// Completion callback of a routed submission ([`Submitter::submit_routed`]): the key
/// of the server chosen (`None` when none was) and the outcome; runs on the driver's
/// thread.
pub type RoutedCallback = Box<dyn FnOnce(Option<&str>, Result<Reply, SubmitError>) + Send>;

pub(crate) enum Submission {
    Send {
        server: String,
        action: Action,
        on_complete: SubmitCallback,
    },
    SendRouted {
        route: Option<Strategy<String>>,
        action: Action,
        on_complete: RoutedCallback,
    },
    Close {
        server: String,
    },
}

/// A `Send + Clone` handle to a [`Driver`](crate::Driver) for other threads.
#[derive(Clone)]
pub struct Submitter {
    sender: SyncSender<Submission>,
    waker: Arc<Waker>,
}

impl std::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitter").finish_non_exhaustive()
    }
}

impl Submitter {
    pub(crate) fn new(waker: Arc<Waker>, capacity: usize) -> (Submitter, Receiver<Submission>) {
        let (sender, receiver) = sync_channel(capacity.max(1));
        (Submitter { sender, waker }, receiver)
    }

    /// Queues `action` for the server `server_key`; `on_complete` runs on the driver's
    /// thread with the outcome. Fails at once (without calling `on_complete`) when the
    /// inbox is full or the driver is gone: nothing waits, nothing queues without bound.
    pub fn submit(
        &self,
        server_key: &str,
        action: impl Into<Action>,
        on_complete: impl FnOnce(Result<Reply, SubmitError>) + Send + 'static,
    ) -> Result<(), SubmitError> {
        let submission = Submission::Send {
            server: server_key.to_owned(),
            action: action.into(),
            on_complete: Box::new(on_complete),
        };
        self.push(submission)
    }

    /// Queues `action` for the server that `route` picks when the driver takes it (the
    /// driver's routing strategy when `None`, see
    /// [`Driver::set_routing`](crate::Driver::set_routing)); `on_complete` runs on the
    /// driver's thread with the key of the server chosen and the outcome. Fails at
    /// once, as [`Submitter::submit`] does, when the inbox is full or the driver is
    /// gone.
    pub fn submit_routed(
        &self,
        route: Option<Strategy<String>>,
        action: impl Into<Action>,
        on_complete: impl FnOnce(Option<&str>, Result<Reply, SubmitError>) + Send + 'static,
    ) -> Result<(), SubmitError> {
        self.push(Submission::SendRouted {
            route,
            action: action.into(),
            on_complete: Box::new(on_complete),
        })
    }

    /// Asks the driver to close the server `server_key` gracefully.
    pub fn close(&self, server_key: &str) -> Result<(), SubmitError> {
        self.push(Submission::Close {
            server: server_key.to_owned(),
        })
    }

    fn push(&self, submission: Submission) -> Result<(), SubmitError> {
        match self.sender.try_send(submission) {
            Ok(()) => {
                // A failed wake-up only delays the submission to the next tick.
                let _ = self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(SubmitError::InboxFull),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::DriverGone),
        }
    }
}
