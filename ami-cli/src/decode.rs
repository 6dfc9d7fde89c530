//! `ami decode`: raw AMI bytes in, one JSON object per line out.
//!
//! The input is what a client receives from Asterisk (the banner line is optional). It is
//! fed to [`Parser`] at most `--chunk-size` bytes at a time and every item the parser
//! emits becomes one line of JSON:
//!
//! ```text
//! {"type":"banner","text":"Asterisk Call Manager/11.0.0"}
//! {"type":"event","name":"FullyBooted","headers":[["Event","FullyBooted"],...]}
//! {"type":"response","response":"Success","action_id":"L-1","headers":[...]}
//! {"type":"response","response":"Follows","action_id":null,"headers":[...],"output":[...]}
//! {"type":"unknown","headers":[...]}
//! {"type":"error","error":"malformed_line","discarded_bytes":42}
//! ```
//!
//! `output` appears only on a legacy `Response: Follows` message (its body lines).
//! Headers keep wire order and wire case. With `--summary` a single object with counts
//! is printed instead. The output does not depend on the chunk size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use ami_proto::message::{Message, MessageKind};
use ami_proto::parser::{Limits, Parsed, Parser};
use serde_json::{Map, Value, json};

use crate::CliError;

/// The default `--chunk-size`: 64 KiB.
const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;

/// The read buffer never grows past this, whatever the chunk size (a larger chunk size
/// then just means "everything one read returned").
const MAX_READ_BUFFER: usize = 16 * 1024 * 1024;

/// Arguments of `ami decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// Feed the parser at most N bytes at a time (N >= 1).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CHUNK_SIZE, value_parser = parse_chunk_size)]
    pub chunk_size: usize,

    /// Print one object with counts instead of one object per item.
    #[arg(long)]
    pub summary: bool,

    /// The raw capture to decode; standard input when absent or `-`.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// Validates `--chunk-size`: a whole number of bytes, at least 1.
fn parse_chunk_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("the chunk size must be at least 1 byte".to_owned()),
        Ok(size) => Ok(size),
        Err(error) => Err(format!("not a number of bytes ({error})")),
    }
}

/// Runs `ami decode`: reads FILE (or stdin) and writes JSON lines (or the summary) to
/// stdout.
pub fn run(args: &DecodeArgs) -> Result<(), CliError> {
    let stdout = io::stdout().lock();
    let output = BufWriter::with_capacity(64 * 1024, stdout);
    match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            let file = File::open(path)
                .map_err(|error| CliError::io(format!("cannot open {}", path.display()), error))?;
            let name = path.display().to_string();
            decode(file, &name, output, args.chunk_size, args.summary)
        }
        _ => decode(
            io::stdin().lock(),
            "standard input",
            output,
            args.chunk_size,
            args.summary,
        ),
    }
}

/// Decodes everything `input` yields into `output`. `name` names the input in error
/// messages; `chunk_size` is the most the parser is given per call.
pub fn decode(
    mut input: impl Read,
    name: &str,
    output: impl Write,
    chunk_size: usize,
    summary: bool,
) -> Result<(), CliError> {
    let write_error = |error| CliError::io("cannot write to standard output", error);
    let mut sink = Sink::new(output, summary);
    let mut parser = Parser::new(Limits::default());
    // A whole number of chunks per read: a regular file, which always fills the
    // buffer, is then fed in pieces of exactly `chunk_size` bytes. A pipe is fed what
    // has arrived, so that a live stream is decoded as it comes.
    let buffer_len = if chunk_size <= DEFAULT_CHUNK_SIZE {
        DEFAULT_CHUNK_SIZE.div_ceil(chunk_size) * chunk_size
    } else {
        chunk_size.min(MAX_READ_BUFFER)
    };
    let mut buffer = vec![0u8; buffer_len];
    loop {
        let read = match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(CliError::io(format!("cannot read {name}"), error)),
        };
        sink.bytes += read as u64;
        for chunk in buffer[..read].chunks(chunk_size) {
            parser.feed(chunk, &mut |item| sink.item(item));
            sink.check().map_err(write_error)?;
        }
        // Lines reach a reader of a live stream without waiting for the buffer to fill.
        sink.flush().map_err(write_error)?;
    }
    parser.finish(&mut |item| sink.item(item));
    sink.end().map_err(write_error)
}

/// Counts for `--summary`.
#[derive(Debug, Default)]
struct Summary {
    banner: u64,
    events: u64,
    responses: u64,
    unknown: u64,
    errors: u64,
    /// Sorted by name.
    event_names: BTreeMap<String, u64>,
}

/// Where parsed items go: JSON lines, or counts for the summary.
#[derive(Debug)]
struct Sink<W: Write> {
    output: W,
    /// `Some` in `--summary` mode.
    summary: Option<Summary>,
    /// Input bytes read.
    bytes: u64,
    /// The first write error; nothing more is written after it.
    error: Option<io::Error>,
}

impl<W: Write> Sink<W> {
    fn new(output: W, summary: bool) -> Self {
        Sink {
            output,
            summary: summary.then(Summary::default),
            bytes: 0,
            error: None,
        }
    }

    /// Takes one item from the parser.
    fn item(&mut self, item: Parsed) {
        if self.error.is_some() {
            return;
        }
        match &mut self.summary {
            Some(summary) => summary.count(&item),
            None => {
                let value = item_json(&item);
                if let Err(error) = self.write_line(&value) {
                    self.error = Some(error);
                }
            }
        }
    }

    fn write_line(&mut self, value: &Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.output, value)?;
        self.output.write_all(b"\n")
    }

    /// The first write error so far, if any.
    fn check(&mut self) -> io::Result<()> {
        self.error.take().map_or(Ok(()), Err)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        if self.summary.is_none() {
            self.output.flush()?;
        }
        Ok(())
    }

    /// Writes the summary, if any, and flushes.
    fn end(mut self) -> io::Result<()> {
        self.check()?;
        if let Some(summary) = self.summary.take() {
            let value = summary.json(self.bytes);
            self.write_line(&value)?;
        }
        self.output.flush()
    }
}

impl Summary {
    fn count(&mut self, item: &Parsed) {
        match item {
            Parsed::Banner(_) => self.banner += 1,
            Parsed::Discarded(_) => self.errors += 1,
            Parsed::Message(message) => match message.kind() {
                MessageKind::Event => {
                    self.events += 1;
                    let name = message.event_name().unwrap_or_default();
                    match self.event_names.get_mut(name) {
                        Some(count) => *count += 1,
                        None => {
                            self.event_names.insert(name.to_owned(), 1);
                        }
                    }
                }
                MessageKind::Response => self.responses += 1,
                MessageKind::Unknown => self.unknown += 1,
            },
        }
    }

    fn json(self, bytes: u64) -> Value {
        let names: Map<String, Value> = self
            .event_names
            .into_iter()
            .map(|(name, count)| (name, Value::from(count)))
            .collect();
        json!({
            "banner": self.banner,
            "events": self.events,
            "responses": self.responses,
            "unknown": self.unknown,
            "errors": self.errors,
            "bytes": bytes,
            "event_names": names,
        })
    }
}

/// The JSON line for one parsed item.
fn item_json(item: &Parsed) -> Value {
    match item {
        Parsed::Banner(text) => json!({ "type": "banner", "text": text }),
        Parsed::Message(message) => message_json(message),
        Parsed::Discarded(discard) => json!({
            "type": "error",
            "error": discard.error.kind(),
            "discarded_bytes": discard.bytes,
        }),
    }
}

/// The JSON line for one message.
fn message_json(message: &Message) -> Value {
    let headers: Vec<Value> = message
        .headers()
        .map(|(key, value)| json!([key, value]))
        .collect();
    match message.kind() {
        MessageKind::Event => json!({
            "type": "event",
            "name": message.event_name(),
            "headers": headers,
        }),
        MessageKind::Response => {
            let mut object = Map::new();
            object.insert("type".to_owned(), "response".into());
            object.insert("response".to_owned(), message.response().into());
            object.insert("action_id".to_owned(), message.action_id().into());
            object.insert("headers".to_owned(), headers.into());
            if message.is_follows() {
                let lines: Vec<Value> = message.body_lines().map(Value::from).collect();
                object.insert("output".to_owned(), lines.into());
            }
            Value::Object(object)
        }
        MessageKind::Unknown => json!({ "type": "unknown", "headers": headers }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_str(input: &[u8], chunk_size: usize, summary: bool) -> String {
        let mut out = Vec::new();
        decode(input, "test", &mut out, chunk_size, summary).expect("decode");
        String::from_utf8(out).expect("utf-8 output")
    }

    #[test]
    fn key_order_is_as_documented() {
        let out = decode_str(b"Response: Success\r\nActionID: 1\r\n\r\n", 3, false);
        assert_eq!(
            out,
            "{\"type\":\"response\",\"response\":\"Success\",\"action_id\":\"1\",\
             \"headers\":[[\"Response\",\"Success\"],[\"ActionID\",\"1\"]]}\n"
        );
    }

    #[test]
    fn summary_counts_and_sorts_event_names() {
        let input =
            b"Asterisk Call Manager/11.0.0\r\nEvent: B\r\n\r\nEvent: A\r\n\r\nEvent: B\r\n\r\n\
                      Response: Error\r\n\r\nFoo: bar\r\n\r\nbad line\r\n\r\n";
        let out = decode_str(input, 1, true);
        assert_eq!(
            out,
            format!(
                "{{\"banner\":1,\"events\":3,\"responses\":1,\"unknown\":1,\"errors\":1,\
                 \"bytes\":{},\"event_names\":{{\"A\":1,\"B\":2}}}}\n",
                input.len()
            )
        );
    }

    #[test]
    fn chunk_size_is_validated() {
        assert!(parse_chunk_size("0").is_err());
        assert!(parse_chunk_size("-3").is_err());
        assert!(parse_chunk_size("x").is_err());
        assert_eq!(parse_chunk_size("7"), Ok(7));
    }

    /// A writer that fails like a closed pipe.
    #[derive(Debug)]
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn write_errors_are_reported_as_broken_pipe() {
        let error =
            decode(&b"Event: A\r\n\r\n"[..], "test", ClosedPipe, 4, false).expect_err("must fail");
        assert!(error.is_broken_pipe(), "{error}");
    }
}
