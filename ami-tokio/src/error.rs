//! Why an async call failed.

use ami_proto::{ActionError, SendError};

/// Why [`Client::send`](crate::Client::send) (or a helper) has no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Refused at once, never written: not logged in (`NotReady`), too many pending
    /// actions, write buffer full, or not encodable.
    #[error(transparent)]
    Refused(#[from] SendError),
    /// Sent, and failed: an error response, a timeout, the connection lost...
    #[error(transparent)]
    Failed(#[from] ActionError),
    /// The client's connection task has ended (closed, or its runtime shut down).
    #[error("the client is closed")]
    Closed,
    /// A wait ran out (e.g. [`Client::wait_ready`](crate::Client::wait_ready)); the
    /// last attempt's failure, if one failed.
    #[error("timed out{}", last.as_ref().map(|r| format!(" (last attempt: {r})")).unwrap_or_default())]
    TimedOut {
        /// Why the last attempt failed, if one did.
        last: Option<ami_proto::CloseReason>,
    },
    /// Waiting cannot make the server ready (closed by the application, circuit open,
    /// credentials refused); the rule is on [`ami_cluster::Readiness`].
    #[error(transparent)]
    NotReady(#[from] ami_cluster::NotReady),
    /// No server qualified for routing.
    #[error(transparent)]
    NoServer(#[from] ami_cluster::NoServerAvailable),
}
