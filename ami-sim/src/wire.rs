//! The wire: client requests in, server messages out.
//!
//! Requests are framed by the client core's own [`ami_proto::Parser`]: a request is a
//! block of `Key: Value` lines ended by an empty line, exactly the framing of the
//! server's messages (bare `\n` line ends, case-insensitive keys, repeated keys kept in
//! order). The only difference is the start of the stream: a client sends no banner,
//! so a first line without `:` (which the parser would report as a banner) is garbage.
//!
//! Messages are written by [`MessageBuf`]: `Key: Value\r\n` lines and the empty line.

use std::fmt::Display;
use std::io::Write as _;

use ami_proto::{Limits, Message, Parsed, Parser};

/// Asterisk reads request lines of at most this many bytes (PROTOCOL-NOTES 6).
pub(crate) const MAX_REQUEST_LINE: usize = 1024;

/// Asterisk reads at most this many header lines per request (PROTOCOL-NOTES 6).
pub(crate) const MAX_REQUEST_HEADERS: usize = 128;

/// One action from the client.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    message: Message,
}

impl Request {
    /// The `Action:` value (trimmed), if present and not empty.
    pub(crate) fn action(&self) -> Option<&str> {
        self.message
            .get("Action")
            .map(str::trim)
            .filter(|name| !name.is_empty())
    }

    /// The `ActionID:` value, when the request carried a non-empty one: only then does
    /// Asterisk echo it (PROTOCOL-NOTES 14).
    pub(crate) fn action_id(&self) -> Option<&str> {
        self.message.action_id().filter(|id| !id.is_empty())
    }

    /// The first value of `key` (case-insensitive).
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.message.get(key)
    }

    /// Every header in wire order.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.message.headers()
    }

    /// Whether Asterisk would refuse to read this request: a line over 1024 bytes or
    /// more than 128 header lines.
    pub(crate) fn exceeds_input_limits(&self) -> bool {
        self.message.header_count() > MAX_REQUEST_HEADERS
            || self
                .message
                .headers()
                .any(|(key, value)| key.len() + value.len() + 2 > MAX_REQUEST_LINE)
    }
}

/// One item read from the client.
#[derive(Debug)]
pub(crate) enum Input {
    /// A complete request.
    Request(Request),
    /// Bytes that do not form a request (malformed lines, oversized input).
    Garbage,
}

/// Frames the client's byte stream into requests.
#[derive(Debug)]
pub(crate) struct RequestParser {
    parser: Parser,
}

impl RequestParser {
    /// A parser at the start of a client stream.
    pub(crate) fn new() -> Self {
        // Asterisk's own input limits bound a request; a little slack for line ends.
        let size = MAX_REQUEST_HEADERS * (MAX_REQUEST_LINE + 2) * 2;
        RequestParser {
            parser: Parser::new(Limits {
                max_frame_size: size,
                max_command_output: size,
            }),
        }
    }

    /// Parses `data`, appending every complete item to `out`.
    pub(crate) fn feed(&mut self, data: &[u8], out: &mut Vec<Input>) {
        self.parser.feed(data, &mut |item| match item {
            Parsed::Message(message) => out.push(Input::Request(Request { message })),
            Parsed::Banner(_) | Parsed::Discarded(_) => out.push(Input::Garbage),
        });
    }
}

/// Builds server messages: header lines, then [`end`](MessageBuf::end) for the empty
/// line. Several messages may be built into one buffer.
#[derive(Debug, Default)]
pub(crate) struct MessageBuf {
    bytes: Vec<u8>,
}

impl MessageBuf {
    /// An empty buffer.
    pub(crate) fn new() -> Self {
        MessageBuf::default()
    }

    /// Appends `Key: Value\r\n`.
    pub(crate) fn header(&mut self, key: &str, value: impl Display) -> &mut Self {
        // Writing to a Vec cannot fail.
        let _ = write!(self.bytes, "{key}: {value}\r\n");
        self
    }

    /// Appends `ActionID: id\r\n` when the request carried one.
    pub(crate) fn action_id(&mut self, id: Option<&str>) -> &mut Self {
        if let Some(id) = id {
            self.header("ActionID", id);
        }
        self
    }

    /// Appends raw bytes.
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// Ends the message with the empty line.
    pub(crate) fn end(&mut self) -> &mut Self {
        self.bytes.extend_from_slice(b"\r\n");
        self
    }

    /// Starts a response: `Response: kind` and the ActionID.
    pub(crate) fn response(&mut self, kind: &str, action_id: Option<&str>) -> &mut Self {
        self.header("Response", kind).action_id(action_id)
    }

    /// The bytes built so far.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::{Input, MessageBuf, RequestParser};

    fn parse(data: &[u8]) -> Vec<Input> {
        let mut parser = RequestParser::new();
        let mut out = Vec::new();
        parser.feed(data, &mut out);
        out
    }

    #[test]
    fn requests_with_crlf_bare_lf_and_any_case() {
        let items =
            parse(b"Action: Ping\r\nActionID: a-1\r\n\r\naction: ping\nactionid: a-2\nX: 1\n\n");
        let ids: Vec<_> = items
            .iter()
            .map(|item| match item {
                Input::Request(r) => (r.action().unwrap(), r.action_id().unwrap()),
                Input::Garbage => panic!("garbage"),
            })
            .collect();
        assert_eq!(ids, [("Ping", "a-1"), ("ping", "a-2")]);
    }

    #[test]
    fn first_line_without_colon_is_garbage_not_a_banner() {
        let items = parse(b"hello\r\nAction: Ping\r\n\r\n");
        assert!(matches!(items[0], Input::Garbage));
        assert!(matches!(&items[1], Input::Request(r) if r.action() == Some("Ping")));
    }

    #[test]
    fn empty_action_id_is_not_echoed() {
        let items = parse(b"Action: Ping\r\nActionID: \r\n\r\n");
        let Input::Request(request) = &items[0] else {
            panic!("not a request")
        };
        assert_eq!(request.action_id(), None);
        let mut buf = MessageBuf::new();
        buf.response("Success", request.action_id()).end();
        assert_eq!(buf.into_bytes(), b"Response: Success\r\n\r\n");
    }

    #[test]
    fn input_limits() {
        let long = format!("Action: Ping\r\nX: {}\r\n\r\n", "y".repeat(1100));
        let items = parse(long.as_bytes());
        let Input::Request(request) = &items[0] else {
            panic!("not a request")
        };
        assert!(request.exceeds_input_limits());
    }
}
