//! A client core and a simulated session wired together in virtual time: bytes are
//! moved by hand between an `ami_proto::Connection` and a `SimSession`, and the clock
//! jumps from one deadline to the next.

// Each test binary uses a different subset of the helpers; the one real instant
// taken is the base of virtual time.
#![allow(dead_code, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use ami_proto::{
    Action, ActionError, CloseReason, Completion, Config, Connection, Message, Output, Reply, State,
};
use ami_sim::{SimConfig, SimSession};

/// The secret of the simulator's default user `admin`.
pub const SECRET: &str = "amp111";

/// A client configuration for the simulator's default user.
pub fn client() -> Config {
    Config::new("pbx1", "admin", SECRET)
}

/// A client configuration whose heartbeat never fires within a test.
pub fn quiet_client() -> Config {
    let mut config = client();
    config.heartbeat_interval = Duration::from_secs(24 * 3600);
    config
}

/// Steps at most per `run_until` / `advance_to`, so that a bug cannot spin forever.
const MAX_STEPS: usize = 5_000_000;

/// A client connection and a simulated session, connected, in virtual time.
#[derive(Debug)]
pub struct Pair {
    pub conn: Connection,
    pub sim: SimSession,
    /// The base instant (the one real clock reading).
    pub start: Instant,
    /// The virtual now.
    pub now: Instant,
    /// Every output of the connection so far, in order.
    pub outputs: Vec<Output>,
    /// End of stream delivered to the client.
    eof: bool,
}

impl Pair {
    /// A connection (generation 1) to a new session of `sim`, banner delivered.
    pub fn new(client: Config, sim: SimConfig) -> Pair {
        Pair::with_generation(client, sim, 1)
    }

    /// Like [`Pair::new`], with the connection's ActionIDs tagged `generation`.
    pub fn with_generation(client: Config, sim: SimConfig, generation: u64) -> Pair {
        let start = Instant::now();
        let mut conn = Connection::new(client, 1, generation, start);
        conn.handle_connected(start);
        let sim = SimSession::new(&sim, start, generation);
        let mut pair = Pair {
            conn,
            sim,
            start,
            now: start,
            outputs: Vec::new(),
            eof: false,
        };
        pair.pump();
        pair
    }

    /// A logged-in pair (`Healthy`).
    pub fn logged_in(client: Config, sim: SimConfig) -> Pair {
        let mut pair = Pair::new(client, sim);
        pair.login();
        pair
    }

    /// Moves bytes both ways until nothing moves: client bytes into the session (as
    /// far as its read allowance goes), session bytes to the client (one byte per
    /// piece under split writes), end of stream once the session is closed and
    /// drained; collects the connection's outputs.
    pub fn pump(&mut self) {
        for _ in 0..MAX_STEPS {
            let mut progressed = false;
            if !self.sim.is_closed() {
                let pending = self.conn.poll_transmit().len();
                let budget = self.sim.input_budget(self.now).unwrap_or(usize::MAX);
                let n = pending.min(budget);
                if n > 0 {
                    let bytes = self.conn.poll_transmit()[..n].to_vec();
                    self.sim.handle_input(self.now, &bytes);
                    self.conn.advance_transmit(n);
                    progressed = true;
                }
            }
            while !self.sim.poll_transmit().is_empty() {
                let bytes = self.sim.poll_transmit().to_vec();
                self.sim.advance_transmit(bytes.len());
                self.conn.handle_data(self.now, &bytes);
                progressed = true;
            }
            if self.sim.is_closed() && !self.eof {
                self.eof = true;
                self.conn.handle_eof(self.now);
                progressed = true;
            }
            while let Some(output) = self.conn.poll() {
                self.outputs.push(output);
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
        panic!("pump never settled");
    }

    /// The earliest deadline of either side.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.conn.poll_timeout(), self.sim.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sets the clock to `at` (never backwards), runs both sides' timers and pumps.
    fn tick(&mut self, at: Instant) {
        self.now = self.now.max(at);
        self.conn.handle_timeout(self.now);
        self.sim.handle_timeout(self.now);
        self.pump();
    }

    /// Runs every deadline up to `target` in order, then sets the clock to `target`.
    pub fn advance_to(&mut self, target: Instant) {
        for _ in 0..MAX_STEPS {
            match self.next_deadline() {
                Some(at) if at <= target => self.tick(at),
                _ => {
                    self.tick(target);
                    return;
                }
            }
        }
        panic!("too many deadlines before {target:?}");
    }

    /// Moves the clock forward by `by`, deadline by deadline.
    pub fn advance(&mut self, by: Duration) {
        self.advance_to(self.now + by);
    }

    /// Jumps the clock forward by `by` in one step (no deadline in between runs).
    pub fn jump(&mut self, by: Duration) {
        self.tick(self.now + by);
    }

    /// Runs deadline by deadline until `done` holds or `limit` of virtual time has
    /// passed; returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Pair) -> bool) -> bool {
        let end = self.now + limit;
        for _ in 0..MAX_STEPS {
            if done(self) {
                return true;
            }
            match self.next_deadline() {
                Some(at) if at <= end => self.tick(at),
                _ => return done(self),
            }
        }
        panic!("too many steps");
    }

    /// Runs until the connection is `Healthy`.
    pub fn login(&mut self) {
        let healthy = self.run_until(Duration::from_secs(60), |p| {
            p.conn.state() == State::Healthy
        });
        assert!(healthy, "not logged in: {:?}", self.conn.close_reason());
    }

    /// Sends `action` now; returns its ActionID.
    pub fn send(&mut self, action: impl Into<Action>) -> String {
        let id = self.conn.send(self.now, action).expect("action refused");
        self.pump();
        id
    }

    /// Removes and returns the completion of `id`, if it came.
    pub fn take_completion(&mut self, id: &str) -> Option<Completion> {
        let index = self
            .outputs
            .iter()
            .position(|o| matches!(o, Output::Completed(done) if done.action_id == id))?;
        match self.outputs.remove(index) {
            Output::Completed(done) => Some(*done),
            _ => None,
        }
    }

    /// Runs until the action `id` completes (at most 10 virtual minutes).
    pub fn wait(&mut self, id: &str) -> Completion {
        let done = self.run_until(Duration::from_secs(600), |p| {
            p.outputs
                .iter()
                .any(|o| matches!(o, Output::Completed(done) if done.action_id == id))
        });
        assert!(done, "action {id} never completed");
        self.take_completion(id).expect("completion present")
    }

    /// Sends `action` and waits for its completion.
    pub fn request(&mut self, action: impl Into<Action>) -> Completion {
        let id = self.send(action);
        self.wait(&id)
    }

    /// Sends `action` and returns its successful reply.
    pub fn ok(&mut self, action: impl Into<Action>) -> Reply {
        let done = self.request(action);
        match done.result {
            Ok(reply) => reply,
            Err(error) => panic!("action failed: {error}"),
        }
    }

    /// Sends `action` and returns its error.
    pub fn err(&mut self, action: impl Into<Action>) -> ActionError {
        match self.request(action).result {
            Err(error) => error,
            Ok(reply) => panic!("expected a failure, got {reply:?}"),
        }
    }

    /// Runs until the connection is closed; returns why.
    pub fn wait_closed(&mut self, limit: Duration) -> CloseReason {
        let closed = self.run_until(limit, |p| p.conn.state() == State::Closed);
        assert!(closed, "still {:?} after {limit:?}", self.conn.state());
        self.conn.close_reason().cloned().expect("a close reason")
    }

    /// The events received so far, in order.
    pub fn events(&self) -> Vec<&Message> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Event(event) => Some(&event.message),
                _ => None,
            })
            .collect()
    }

    /// The events named `name` (and, for `UserEvent`, with that `UserEvent:`).
    pub fn user_events(&self, user_event: &str) -> Vec<&Message> {
        self.events()
            .into_iter()
            .filter(|e| {
                e.event_name() == Some("UserEvent") && e.get("UserEvent") == Some(user_event)
            })
            .collect()
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }
}
