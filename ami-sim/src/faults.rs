//! Faults a simulated Asterisk can inject, and the state that standing faults keep.
//!
//! One-shot faults ([`Fault::Garbage`], [`Fault::GarbageLen`], [`Fault::Oversized`],
//! [`Fault::CloseMidMessage`]) write their bytes at once, at a message boundary.
//! Standing faults ([`Fault::SplitEveryByte`], [`Fault::SlowReads`],
//! [`Fault::DelayResponses`], [`Fault::DropResponses`],
//! [`Fault::DropResponsesRandomly`]) last until replaced or lifted with
//! [`Fault::Heal`]. [`Fault::Stall`] is for good.

use std::time::{Duration, Instant};

use crate::wire::MessageBuf;
use ami_proto::rng::Rng;

/// A fault to inject into a session ([`SimSession::inject`](crate::SimSession::inject))
/// or to preset for every session ([`SimConfig::faults`](crate::SimConfig::faults)).
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Writes these bytes between two messages. Unless they end with an empty line,
    /// `\r\n\r\n` follows them, so that a parser that skips to the next empty line
    /// re-synchronises before the next real message.
    Garbage(Vec<u8>),
    /// Writes `len` random bytes that are not AMI (lines without `:`, some of them not
    /// UTF-8), then an empty line.
    GarbageLen {
        /// How many random bytes.
        len: usize,
    },
    /// From now on [`SimSession::poll_transmit`](crate::SimSession::poll_transmit)
    /// hands out one byte at a time (`true`), or everything again (`false`).
    SplitEveryByte(bool),
    /// Writes one event of at least `bytes` bytes (larger than a client's frame limit),
    /// then traffic goes on normally.
    Oversized {
        /// Size of the event in bytes.
        bytes: usize,
    },
    /// From now on the session answers nothing and sends nothing (input is read and
    /// thrown away). Preset in the configuration: not even the banner.
    Stall,
    /// Reads the client's input at this rate only: `wants_input` is false while the
    /// allowance is spent, so the client's write buffer fills. 0 stops reading.
    SlowReads {
        /// Bytes per second (of virtual time).
        bytes_per_second: u64,
    },
    /// Writes the first half of a message, then closes the session.
    CloseMidMessage,
    /// Adds this delay to every answer from now on (heartbeat Pongs included);
    /// `Duration::ZERO` removes it.
    DelayResponses(Duration),
    /// Drops the answer (response and list) of every `every_nth` action from now on
    /// (heartbeat Pongs included); 0 stops dropping.
    DropResponses {
        /// 1 drops every answer, 3 every third one.
        every_nth: u64,
    },
    /// Drops each answer with this probability (0.0–1.0), drawn from the session's
    /// seeded generator.
    DropResponsesRandomly {
        /// Probability of a drop.
        probability: f64,
    },
    /// Lifts every standing fault (split writes, slow reads, delays, drops).
    /// A stall or a close cannot be undone.
    Heal,
}

/// The standing faults of one session.
#[derive(Debug, Clone, Default)]
pub(crate) struct Standing {
    /// Hand out one byte per `poll_transmit`.
    pub(crate) split: bool,
    /// Read input at a limited rate.
    pub(crate) slow: Option<SlowReader>,
    /// Extra delay of every answer.
    pub(crate) delay: Duration,
    /// Drop every n-th answer (0: never).
    pub(crate) drop_every: u64,
    /// Drop answers at random with this probability.
    pub(crate) drop_probability: f64,
    /// Answers seen since `drop_every` was set.
    pub(crate) answers_seen: u64,
}

impl Standing {
    /// Whether the next answer is dropped.
    pub(crate) fn drop_next(&mut self, rng: &mut Rng) -> bool {
        self.answers_seen += 1;
        if self.drop_every > 0 && self.answers_seen.is_multiple_of(self.drop_every) {
            return true;
        }
        self.drop_probability > 0.0 && rng.unit() < self.drop_probability
    }
}

/// A token bucket for [`Fault::SlowReads`]: credit grows at the rate, up to a tenth of
/// a second's worth (at least one byte), and reads spend it.
#[derive(Debug, Clone)]
pub(crate) struct SlowReader {
    rate: u64,
    cap: u64,
    credit: u64,
    /// The instant up to which time has been turned into credit.
    refilled_at: Instant,
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

impl SlowReader {
    pub(crate) fn new(now: Instant, bytes_per_second: u64) -> Self {
        let cap = if bytes_per_second == 0 {
            0
        } else {
            (bytes_per_second / 10).max(1)
        };
        SlowReader {
            rate: bytes_per_second,
            cap,
            credit: cap,
            refilled_at: now,
        }
    }

    /// Credit earned between the last refill and `now` (not capped).
    fn earned(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.refilled_at).as_nanos();
        u64::try_from(elapsed * u128::from(self.rate) / NANOS_PER_SEC).unwrap_or(u64::MAX)
    }

    /// Bytes that may be read at `now`.
    pub(crate) fn available(&self, now: Instant) -> u64 {
        self.credit.saturating_add(self.earned(now)).min(self.cap)
    }

    /// `n` bytes were read at `now`.
    pub(crate) fn consume(&mut self, now: Instant, n: u64) {
        let earned = self.earned(now);
        if earned > 0 {
            if self.credit.saturating_add(earned) >= self.cap {
                self.credit = self.cap;
                self.refilled_at = now;
            } else {
                self.credit += earned;
                // Keep the fraction of a byte not yet earned for the next refill.
                let used = u128::from(earned) * NANOS_PER_SEC / u128::from(self.rate);
                self.refilled_at += Duration::from_nanos(u64::try_from(used).unwrap_or(u64::MAX));
            }
        }
        self.credit = self.credit.saturating_sub(n);
    }

    /// When one more byte may be read, if none may now.
    pub(crate) fn next_credit_at(&self) -> Option<Instant> {
        if self.credit > 0 || self.rate == 0 {
            return None;
        }
        let per_byte = NANOS_PER_SEC.div_ceil(u128::from(self.rate));
        Some(self.refilled_at + Duration::from_nanos(u64::try_from(per_byte).unwrap_or(u64::MAX)))
    }
}

/// The bytes of a [`Fault::Garbage`]: as given, then an empty line unless they end with
/// one.
pub(crate) fn garbage(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if !(out.is_empty() || out.ends_with(b"\n\r\n") || out.ends_with(b"\n\n")) {
        out.extend_from_slice(b"\r\n\r\n");
    }
    out
}

/// The bytes of a [`Fault::GarbageLen`]: `len` random bytes in lines of at most 60,
/// none of them a `:`, a line end or blank, some not ASCII; then an empty line.
pub(crate) fn random_garbage(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + len / 60 * 2 + 4);
    let mut written = 0;
    while written < len {
        let line = (len - written).min(60);
        for _ in 0..line {
            let byte = match rng.below(8) {
                // One byte in eight is not ASCII.
                0 => 0x80 + rng.below(0x80) as u8,
                _ => b'!' + rng.below(94) as u8,
            };
            out.push(if byte == b':' { b'#' } else { byte });
        }
        out.extend_from_slice(b"\r\n");
        written += line;
    }
    if len > 0 {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The bytes of a [`Fault::Oversized`] event: at least `bytes` long.
pub(crate) fn oversized_event(bytes: usize) -> Vec<u8> {
    const HEAD: &str = "Event: SimOversized\r\nPrivilege: system,all\r\nData: ";
    let fill = bytes.saturating_sub(HEAD.len() + 4).max(1);
    let mut out = Vec::with_capacity(HEAD.len() + fill + 4);
    out.extend_from_slice(HEAD.as_bytes());
    out.resize(HEAD.len() + fill, b'x');
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// The first half of an ordinary event, for [`Fault::CloseMidMessage`].
pub(crate) fn half_message() -> Vec<u8> {
    let mut event = MessageBuf::new();
    event
        .header("Event", "Newchannel")
        .header("Privilege", "call,all")
        .header("Channel", "PJSIP/sim-cut-00000001")
        .header("ChannelState", 4)
        .header("ChannelStateDesc", "Ring")
        .header("Uniqueid", "1700000000.999")
        .end();
    let mut bytes = event.into_bytes();
    bytes.truncate(bytes.len() / 2);
    bytes
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests take one real instant as the base of virtual time
mod tests {
    use std::time::{Duration, Instant};

    use super::{SlowReader, garbage, oversized_event, random_garbage};
    use ami_proto::rng::Rng;

    #[test]
    fn slow_reader_rate_and_cap() {
        let start = Instant::now();
        let mut reader = SlowReader::new(start, 100);
        assert_eq!(reader.available(start), 10, "a tenth of a second of credit");
        reader.consume(start, 10);
        assert_eq!(reader.available(start), 0);
        assert_eq!(
            reader.next_credit_at(),
            Some(start + Duration::from_millis(10))
        );
        let later = start + Duration::from_millis(50);
        assert_eq!(reader.available(later), 5);
        reader.consume(later, 5);
        assert_eq!(reader.available(later), 0);
        // A long pause earns no more than the cap.
        let much_later = later + Duration::from_secs(60);
        assert_eq!(reader.available(much_later), 10);
        // Over one simulated second at most rate + cap bytes are read.
        let mut reader = SlowReader::new(start, 100);
        let mut total = 0;
        for ms in 0..=1000 {
            let now = start + Duration::from_millis(ms);
            let n = reader.available(now);
            reader.consume(now, n);
            total += n;
        }
        assert!((100..=111).contains(&total), "{total}");
        let stopped = SlowReader::new(start, 0);
        assert_eq!(stopped.available(start + Duration::from_secs(9)), 0);
        assert_eq!(stopped.next_credit_at(), None);
    }

    #[test]
    fn garbage_ends_with_an_empty_line() {
        assert_eq!(garbage(b"junk"), b"junk\r\n\r\n");
        assert_eq!(garbage(b"junk\n\n"), b"junk\n\n");
        assert_eq!(garbage(b""), b"");
        let random = random_garbage(&mut Rng::new(1), 500);
        assert!(random.ends_with(b"\r\n\r\n"));
        assert!(!random.contains(&b':'));
        let body = &random[..random.len() - 4];
        assert!(
            !body.windows(4).any(|w| w == b"\r\n\r\n"),
            "no early blank line"
        );
    }

    #[test]
    fn oversized_event_has_the_size_asked_for() {
        let event = oversized_event(100_000);
        assert_eq!(event.len(), 100_000);
        assert!(event.ends_with(b"\r\n\r\n"));
    }
}
