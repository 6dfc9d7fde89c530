//! The gateway's outlet: every record becomes one entry of a Redis stream, written
//! in pipelines of `XADD`s (as many as the queue hands over, up to its batch size).
//!
//! - An event goes to its server's events stream (`gateway.events_stream`) with the
//!   fields `server`, `name`, `received_at`, `headers` (a JSON array of pairs in wire
//!   order), trimmed with `MAXLEN ~ events_maxlen`.
//! - A status record goes to `gateway.status_stream` with its `type` and fields
//!   ([`Record::status_fields`]); a call record to its server's
//!   `gateway.calls_stream`.
//!
//! **Exactly once through Redis failures.** An events stream has one writer (the
//! gateway that owns its server), so the outlet gives each event its entry ID itself
//! (`<ms>-<seq>`, increasing). When a connection fails during a pipeline, which
//! entries landed is unknown; after reconnecting the outlet reads each stream's
//! `last-generated-id` (`XINFO STREAM`): an event at or below it landed, one above it
//! did not and is sent again, with the same ID. The status stream is shared by
//! every gateway, so its entries get Redis's IDs; a status record in doubt is looked
//! for among the stream's last entries before it is sent again.
//!
//! While Redis is down or slow, [`Outlet::write`] waits and retries (the
//! [`Link`]'s backoff); the queue in front of it fills and drops its oldest events,
//! counted with reason `redis`. An entry Redis refuses (e.g. `WRONGTYPE`, `OOM`) is
//! counted the same way and logged.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{RedisResult, Value};

use super::link::Link;
use crate::json;
use crate::outlet::{Outlet, Progress, Record};

/// What the outlet knows of one events stream.
#[derive(Debug)]
struct Stream {
    name: String,
    /// The highest ID given out (or found in Redis), `(ms, seq)`.
    last: (u64, u64),
    /// The connection (its [`Link::connects`] number) on which `last` was checked
    /// against the stream's `last-generated-id`.
    checked_on: u64,
}

/// The Redis outlet (see the module documentation).
pub struct RedisOutlet {
    link: Link,
    /// `gateway.events_stream`, `{server}` standing for the key.
    events_pattern: String,
    /// `gateway.calls_stream`, `{server}` standing for the key.
    calls_pattern: String,
    status_stream: String,
    maxlen: String,
    streams: HashMap<Arc<str>, Stream>,
    /// Never set: the outlet waits for Redis as long as the process runs.
    never: AtomicBool,
    /// Scratch for each event's `headers`, `received_at` and entry ID.
    headers: Vec<u8>,
    time: Vec<u8>,
    id: Vec<u8>,
    /// The command being built (its buffers reused), and the packed commands not yet
    /// sent.
    command: redis::Cmd,
    packed: Vec<u8>,
    /// When an entry refusal was last logged (rate limit: one per 10 s).
    refusal_logged: Option<Instant>,
}

impl std::fmt::Debug for RedisOutlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOutlet")
            .field("events_pattern", &self.events_pattern)
            .finish_non_exhaustive()
    }
}

/// How the pipeline's entries stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Not sent yet.
    Waiting,
    /// Sent in a pipeline whose answer was lost: it may have landed.
    InDoubt,
    /// Landed (or refused and counted).
    Done,
}

impl RedisOutlet {
    /// An outlet writing through `link` (`maxlen`: `MAXLEN ~` of every stream).
    pub fn new(
        link: Link,
        events_pattern: &str,
        calls_pattern: &str,
        status_stream: &str,
        maxlen: usize,
    ) -> Self {
        RedisOutlet {
            link,
            events_pattern: events_pattern.to_owned(),
            calls_pattern: calls_pattern.to_owned(),
            status_stream: status_stream.to_owned(),
            maxlen: maxlen.to_string(),
            streams: HashMap::new(),
            never: AtomicBool::new(false),
            headers: Vec::with_capacity(4096),
            time: Vec::with_capacity(32),
            id: Vec::with_capacity(32),
            command: redis::Cmd::new(),
            packed: Vec::with_capacity(SEND_CHUNK + 64 * 1024),
            refusal_logged: None,
        }
    }

    /// The events stream of `server`.
    fn stream(&mut self, server: &Arc<str>) -> &mut Stream {
        if !self.streams.contains_key(server) {
            let name = self.events_pattern.replace("{server}", server);
            self.streams.insert(
                server.clone(),
                Stream {
                    name,
                    last: (0, 0),
                    checked_on: 0,
                },
            );
        }
        self.streams.get_mut(server).expect("inserted above")
    }

    /// Brings each events stream of `records` up to date with Redis on this
    /// connection: its `last-generated-id` raises the ID floor, and every event in
    /// doubt at or below it landed.
    fn check_streams(
        &mut self,
        records: &[Record],
        ids: &[(u64, u64)],
        states: &mut [Entry],
    ) -> RedisResult<()> {
        let connects = self.link.connects();
        let mut servers: Vec<Arc<str>> = Vec::new();
        for record in records {
            if let Some(event) = record.event() {
                let server = event.server_key();
                if self.stream(server).checked_on != connects && !servers.contains(server) {
                    servers.push(server.clone());
                }
            }
        }
        if servers.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for server in &servers {
            pipe.cmd("XINFO")
                .arg("STREAM")
                .arg(&self.stream(server).name);
        }
        let Some(connection) = self.link.get(&self.never) else {
            return Ok(());
        };
        let answers: Vec<RedisResult<Value>> = pipe.ignore_errors().query(connection)?;
        for (server, answer) in servers.iter().zip(answers) {
            // A stream that does not exist yet has nothing: its floor stays.
            let top = answer.ok().and_then(|info| last_generated_id(&info));
            let stream = self.stream(server);
            if let Some(top) = top {
                stream.last = stream.last.max(top);
            }
            stream.checked_on = connects;
            let top = top.unwrap_or((0, 0));
            for (i, record) in records.iter().enumerate() {
                if states[i] == Entry::InDoubt
                    && record.event().is_some_and(|e| e.server_key() == server)
                {
                    states[i] = if ids[i] <= top {
                        Entry::Done
                    } else {
                        Entry::Waiting
                    };
                }
            }
        }
        Ok(())
    }

    /// The stream a record other than an event goes to: its server's calls stream
    /// for a call, else the status stream.
    fn record_stream(&self, record: &Record) -> String {
        match record {
            Record::Call { server, .. } => self.calls_pattern.replace("{server}", server),
            _ => self.status_stream.clone(),
        }
    }

    /// Marks each status or call record in doubt as done when its stream's last
    /// entries hold one with its fields, else as waiting.
    fn check_status(&mut self, records: &[Record], states: &mut [Entry]) -> RedisResult<()> {
        let mut doubt: HashMap<String, Vec<usize>> = HashMap::new();
        for i in 0..records.len() {
            if states[i] == Entry::InDoubt && records[i].event().is_none() {
                doubt
                    .entry(self.record_stream(&records[i]))
                    .or_default()
                    .push(i);
            }
        }
        for (stream, indexes) in doubt {
            let Some(connection) = self.link.get(&self.never) else {
                return Ok(());
            };
            let recent: Value = redis::cmd("XREVRANGE")
                .arg(&stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(10_000)
                .query(connection)?;
            let entries = entry_fields(&recent);
            for i in indexes {
                let fields = records[i].status_fields().unwrap_or_default();
                let found = entries.iter().any(|entry| {
                    entry.len() == fields.len()
                        && entry
                            .iter()
                            .zip(&fields)
                            .all(|((k, v), (fk, fv))| k == fk && v == fv)
                });
                states[i] = if found { Entry::Done } else { Entry::Waiting };
            }
        }
        Ok(())
    }

    /// The next ID of `server`'s stream at wall-clock `now_ms`.
    fn next_id(&mut self, server: &Arc<str>, now_ms: u64) -> (u64, u64) {
        let stream = self.stream(server);
        let id = if now_ms > stream.last.0 {
            (now_ms, 0)
        } else {
            (stream.last.0, stream.last.1 + 1)
        };
        stream.last = id;
        id
    }

    /// Packs the `XADD` of `record` (with `id` for an event) onto `self.packed`.
    fn pack(&mut self, record: &Record, id: (u64, u64)) {
        use std::io::Write as _;
        let mut command = std::mem::take(&mut self.command);
        command.clear();
        match record {
            Record::Event { event, received_at } => {
                self.headers.clear();
                json::header_array(&mut self.headers, &event.message);
                self.time.clear();
                json::seconds(&mut self.time, *received_at);
                self.id.clear();
                let _ = write!(self.id, "{}-{}", id.0, id.1);
                let name = &self.stream(event.server_key()).name;
                command
                    .arg("XADD")
                    .arg(name.as_str())
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(&self.maxlen)
                    .arg(&self.id[..])
                    .arg("server")
                    .arg(&**event.server_key())
                    .arg("name")
                    .arg(event.name())
                    .arg("received_at")
                    .arg(&self.time[..])
                    .arg("headers")
                    .arg(&self.headers[..]);
            }
            status => {
                command
                    .arg("XADD")
                    .arg(self.record_stream(status))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(&self.maxlen)
                    .arg("*");
                for (key, value) in status.status_fields().unwrap_or_default() {
                    command.arg(key).arg(value);
                }
            }
        }
        command.write_packed_command(&mut self.packed);
        self.command = command;
    }

    /// Sends the `XADD`s of the waiting records, in chunks as they are packed (Redis
    /// works on one chunk while the next is packed), then reads the answers. Marks
    /// each answered record done (counting a refusal); on a connection failure, the
    /// records not answered are in doubt.
    fn send(
        &mut self,
        records: &[Record],
        ids: &mut [(u64, u64)],
        states: &mut [Entry],
        progress: &Progress,
    ) -> RedisResult<()> {
        let now = now_ms();
        let mut sent = Vec::new();
        self.packed.clear();
        let mut result = Ok(());
        for (i, record) in records.iter().enumerate() {
            if states[i] != Entry::Waiting {
                continue;
            }
            if let Some(event) = record.event()
                && ids[i] == (0, 0)
            {
                ids[i] = self.next_id(event.server_key(), now);
            }
            self.pack(record, ids[i]);
            states[i] = Entry::InDoubt;
            sent.push(i);
            if self.packed.len() >= SEND_CHUNK {
                result = self.flush();
                if result.is_err() {
                    break;
                }
            }
        }
        if result.is_ok() {
            result = self.flush();
        }
        result?;
        for &i in &sent {
            let Some(connection) = self.link.get(&self.never) else {
                return Ok(());
            };
            let refusal = match connection.recv_response() {
                Ok(Value::ServerError(error)) => Some(redis::RedisError::from(error)),
                Ok(_) => None,
                Err(error) if error.is_io_error() || error.is_timeout() => return Err(error),
                Err(error) if error.is_connection_dropped() => return Err(error),
                Err(error) => Some(error),
            };
            states[i] = Entry::Done;
            if let Some(error) = refusal {
                self.log_refusal(&records[i], &error);
                if let Some(event) = records[i].event() {
                    progress.refused(event.server_key());
                }
            }
        }
        Ok(())
    }

    /// Sends what is packed.
    fn flush(&mut self) -> RedisResult<()> {
        if self.packed.is_empty() {
            return Ok(());
        }
        let Some(connection) = self.link.get(&self.never) else {
            return Ok(());
        };
        let sent = connection.send_packed_command(&self.packed);
        self.packed.clear();
        sent
    }

    /// Logs an entry Redis refused (at most once per 10 s).
    fn log_refusal(&mut self, record: &Record, error: &redis::RedisError) {
        if self
            .refusal_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
        {
            self.refusal_logged = Some(Instant::now());
            let what = match record.event() {
                Some(event) => format!("event of {}", event.server_key()),
                None => "status record".to_owned(),
            };
            tracing::warn!(%error, entry = what, "redis refused an entry: dropped, counted (reason redis)");
        }
    }
}

/// `last-generated-id` of an `XINFO STREAM` answer.
fn last_generated_id(info: &Value) -> Option<(u64, u64)> {
    let pairs: Vec<(&Value, &Value)> = match info {
        Value::Array(items) => items
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (&c[0], &c[1]))
            .collect(),
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        _ => return None,
    };
    let (_, id) = pairs
        .into_iter()
        .find(|(key, _)| text(key).as_deref() == Some("last-generated-id"))?;
    parse_id(&text(id)?)
}

/// `ms-seq` as numbers.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// A string reply's text.
pub fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The field lists of an `XRANGE`-shaped answer (`[[id, [k, v, ...]], ...]`).
fn entry_fields(value: &Value) -> Vec<Vec<(String, String)>> {
    let Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| match entry {
            Value::Array(parts) if parts.len() == 2 => match &parts[1] {
                Value::Array(kv) => Some(
                    kv.chunks(2)
                        .filter_map(|c| Some((text(&c[0])?, text(c.get(1)?)?)))
                        .collect(),
                ),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Bytes of packed commands sent at once: Redis starts on them while the next are
/// packed.
const SEND_CHUNK: usize = 128 * 1024;

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Outlet for RedisOutlet {
    fn write(&mut self, records: &[Record], progress: &Progress) -> io::Result<()> {
        let events = records.iter().filter(|r| r.event().is_some()).count() as u64;
        progress.writing(records.len() as u64, events);
        let mut states = vec![Entry::Waiting; records.len()];
        let mut ids = vec![(0, 0); records.len()];
        loop {
            if self.link.get(&self.never).is_none() {
                continue;
            }
            let checked = self
                .check_streams(records, &ids, &mut states)
                .and_then(|()| self.check_status(records, &mut states));
            if let Err(error) = checked {
                self.link.failed(&error);
                continue;
            }
            if !states.contains(&Entry::Waiting) {
                break;
            }
            if let Err(error) = self.send(records, &mut ids, &mut states, progress)
                && !self.link.failed(&error)
            {
                // Not the connection's fault, yet answers are missing: make a new one
                // anyway, so that the doubt is settled the same way.
                tracing::warn!(%error, "redis pipeline failed: reconnecting");
                self.link.drop_connection();
            }
        }
        progress.written(records.len() as u64, events);
        Ok(())
    }

    fn drop_reason(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_stream_info_are_read() {
        assert_eq!(parse_id("1700000000000-7"), Some((1_700_000_000_000, 7)));
        assert_eq!(parse_id("x"), None);
        let info = Value::Array(vec![
            Value::BulkString(b"length".to_vec()),
            Value::Int(3),
            Value::BulkString(b"last-generated-id".to_vec()),
            Value::BulkString(b"12-3".to_vec()),
        ]);
        assert_eq!(last_generated_id(&info), Some((12, 3)));
    }

    #[test]
    fn ids_increase_within_a_millisecond_and_never_go_back() {
        let link = Link::new("redis://127.0.0.1:1", "test").unwrap();
        let mut outlet = RedisOutlet::new(
            link,
            "ami:events:{server}",
            "ami:calls:{server}",
            "ami:status",
            10,
        );
        let server: Arc<str> = "pbx".into();
        assert_eq!(outlet.next_id(&server, 100), (100, 0));
        assert_eq!(outlet.next_id(&server, 100), (100, 1));
        // The clock stepped back: the IDs go on from the last one.
        assert_eq!(outlet.next_id(&server, 50), (100, 2));
        assert_eq!(outlet.next_id(&server, 101), (101, 0));
        assert_eq!(outlet.stream(&server).name, "ami:events:pbx");
    }
}
