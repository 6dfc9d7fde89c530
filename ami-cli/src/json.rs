//! JSON shapes shared by the commands.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ami_proto::Message;
use serde_json::{Value, json};

/// Headers as `[[KEY, VALUE], ...]`, in wire order and with the key's wire case.
pub fn headers(message: &Message) -> Value {
    Value::Array(
        message
            .headers()
            .map(|(key, value)| json!([key, value]))
            .collect(),
    )
}

/// Appends a message's headers as `[[KEY,VALUE],...]`, in wire order, straight from
/// its bytes (no tree).
pub fn header_array(out: &mut Vec<u8>, message: &Message) {
    out.push(b'[');
    for (i, (key, value)) in message.header_bytes().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        bytes_string(out, key);
        out.push(b',');
        bytes_string(out, value);
        out.push(b']');
    }
    out.push(b']');
}

/// Appends `value` as a JSON string: quotes, and escapes for what JSON requires
/// (`"`, `\` and control characters) and nothing else; runs of plain bytes are copied
/// as they are.
pub fn string(out: &mut Vec<u8>, value: &str) {
    bytes_string(out, value.as_bytes());
}

/// Which bytes need an escape in a JSON string: 0 for none, else the letter of a short
/// escape (`\n`), or `u` for `\u00XX`.
const ESCAPES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// [`string`] of bytes that are UTF-8 (e.g. from [`Message::header_bytes`]).
///
/// Eight bytes are checked at a time ([`needs_escape`], the tail by [`last_word`]);
/// header values almost never hold a byte to escape, so the per-byte table is
/// visited only by the rare word that does.
pub fn bytes_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in words.by_ref() {
        if needs_escape(u64::from_le_bytes(word.try_into().expect("8 bytes"))) {
            for i in at..at + 8 {
                start = escape_byte(out, bytes, start, i);
            }
        }
        at += 8;
    }
    if at < bytes.len() && needs_escape(last_word(bytes)) {
        for i in at..bytes.len() {
            start = escape_byte(out, bytes, start, i);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The last eight bytes of `bytes` as a word (they overlap words already checked), or
/// for a shorter slice its bytes padded with plain ones, built in a register (a copy
/// to the stack and a load of it would stall on the store).
fn last_word(bytes: &[u8]) -> u64 {
    if let Some(last) = bytes.last_chunk::<8>() {
        return u64::from_le_bytes(*last);
    }
    let mut word = u64::from_le_bytes([b'x'; 8]);
    for (i, &b) in bytes.iter().enumerate() {
        word = (word & !(0xff << (8 * i))) | (u64::from(b) << (8 * i));
    }
    word
}

/// Whether any of the eight bytes of `word` is below 0x20, `"` or `\` (the bit tricks
/// of "Bit Twiddling Hacks": a byte lane's high bit survives only where the lane is
/// zero or below the bound; no false negatives, and no false positives in a word with
/// no such byte).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (control | quote | backslash) & HIGH != 0
}

/// Escapes `bytes[i]` if JSON needs it: copies the plain run `bytes[start..i]` first
/// and returns where the next plain run starts.
fn escape_byte(out: &mut Vec<u8>, bytes: &[u8], start: usize, i: usize) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = bytes[i];
    let escape = ESCAPES[usize::from(b)];
    if escape == 0 {
        return start;
    }
    out.extend_from_slice(&bytes[start..i]);
    if escape == b'u' {
        out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 15)],
        ]);
    } else {
        out.extend_from_slice(&[b'\\', escape]);
    }
    i + 1
}

/// Appends UNIX seconds with microseconds, e.g. `1700000000.250000`, with digits
/// written by hand (no `fmt` machinery per record).
pub fn seconds(out: &mut Vec<u8>, seconds: f64) {
    let micros = (seconds.max(0.0) * 1e6).round() as u64;
    let mut digits = [0u8; 27];
    let mut at = digits.len();
    let mut rest = micros;
    for place in 0.. {
        if place == 6 {
            at -= 1;
            digits[at] = b'.';
        }
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 && place >= 6 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The wall clock now, as UNIX seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Turns the driver's `Instant`s into wall-clock UNIX seconds, anchored once.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    instant: Instant,
    unix: Duration,
}

impl WallClock {
    /// Anchors the clock now (again, after a clock step, to follow the wall clock).
    pub fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        WallClock {
            instant: Instant::now(),
            unix,
        }
    }

    /// UNIX seconds (with fraction) of `at`.
    pub fn unix_seconds(&self, at: Instant) -> f64 {
        let unix = if at >= self.instant {
            self.unix + (at - self.instant)
        } else {
            self.unix.saturating_sub(self.instant - at)
        };
        unix.as_secs_f64()
    }
}

/// Action headers from JSON: an array of `[key, value]` pairs (repeated keys kept), or
/// an object whose values are strings, numbers, booleans or arrays of them (an array
/// repeats its key). What `ami gateway` requests and `ami send --stdin` lines carry.
pub fn header_pairs(value: &Value) -> Result<Vec<(String, String)>, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let mut out = Vec::new();
    match value {
        Value::Array(pairs) => {
            for (i, pair) in pairs.iter().enumerate() {
                let pair = pair.as_array().filter(|p| p.len() == 2);
                let kv = pair.and_then(|p| Some((p[0].as_str()?.to_owned(), scalar(&p[1])?)));
                let Some(kv) = kv else {
                    return Err(format!("item {i}: expected a [key, value] pair of strings"));
                };
                out.push(kv);
            }
        }
        Value::Object(map) => {
            for (key, value) in map {
                match value {
                    Value::Array(values) => {
                        for v in values {
                            let v = scalar(v).ok_or_else(|| format!("{key}: expected strings"))?;
                            out.push((key.clone(), v));
                        }
                    }
                    v => {
                        let v = scalar(v).ok_or_else(|| format!("{key}: expected a string"))?;
                        out.push((key.clone(), v));
                    }
                }
            }
        }
        _ => return Err("expected an array of [key, value] pairs or an object".into()),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_what_json_needs_only() {
        for value in [
            "",
            "plain",
            "quote \" and backslash \\",
            "lines\r\n\ttab \u{1}\u{1f} end",
            "unicode é 日本 \u{7f}",
        ] {
            let mut out = Vec::new();
            string(&mut out, value);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(
                serde_json::from_str::<String>(&text).unwrap(),
                value,
                "{text}"
            );
        }
        let mut out = Vec::new();
        string(&mut out, "a\u{1}b");
        assert_eq!(out, b"\"a\\u0001b\"");
    }

    #[test]
    fn seconds_have_six_decimals() {
        for (value, text) in [
            (0.0, "0.000000"),
            (1.5, "1.500000"),
            (1_700_000_000.25, "1700000000.250000"),
            (0.000_001, "0.000001"),
            (-3.0, "0.000000"),
            (12.000_000_4, "12.000000"),
        ] {
            let mut out = Vec::new();
            seconds(&mut out, value);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    /// Every byte that needs an escape, at every place of a word and of the tail,
    /// beside plain ASCII and multi-byte UTF-8: `serde_json` reads back the value, and
    /// nothing else is escaped.
    #[test]
    fn every_escape_at_every_offset_matches_serde_json() {
        let specials: Vec<char> = (0u8..0x20)
            .map(char::from)
            .chain(['"', '\\', 'é', '\u{7f}', ' '])
            .collect();
        for len in 0..20 {
            for at in 0..len {
                for &special in &specials {
                    let value: String = (0..len)
                        .map(|i| if i == at { special } else { 'x' })
                        .collect();
                    let mut out = Vec::new();
                    string(&mut out, &value);
                    let text = String::from_utf8(out).unwrap();
                    assert_eq!(
                        serde_json::from_str::<String>(&text).unwrap(),
                        value,
                        "{text}"
                    );
                    if special >= ' ' && special != '"' && special != '\\' {
                        assert_eq!(text, format!("\"{value}\""), "escaped only if needed");
                    }
                }
            }
        }
    }
}
