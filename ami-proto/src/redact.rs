//! Masking of credentials and other sensitive values before they reach logs
//! or `Debug`/`Display` output.
//!
//! Two tools live here:
//!
//! * [`Secret`] wraps a credential so that it can never be printed by accident.
//! * [`Redactor`] decides which header values are sensitive. The built-in keys
//!   `Secret`, `Password` and `Key` (the MD5 login digest) are always masked;
//!   drivers can add key names, key patterns and value patterns from their
//!   configuration, and literal values ([`Redactor::with_secret`]).
//!
//! There is no process-wide policy. Each connection's policy travels in its
//! [`Config::redactor`](crate::config::Config::redactor); the connection adds its
//! own secret value to it ([`Connection::redactor`](crate::connection::Connection::redactor))
//! and masks with it everything it logs and every error and close reason it
//! returns, including text the server sent. `Debug` impls that cannot reach a
//! connection (actions, messages) mask with the built-in policy
//! ([`Redactor::builtin`]), which is a plain `static`: no lock, no allocation.
//!
//! # Masking the client's own secret
//!
//! A secret value of at least [`MIN_MASKED_VALUE_LEN`] characters is masked
//! wherever it occurs: in any header value and in free text (error messages,
//! close reasons, banners), every occurrence replaced by [`MASK`], case-sensitively.
//! A shorter secret would mask unrelated text (a one-letter secret would
//! hit most words), so it is masked only where the key says it is a secret
//! (`Secret`, `Password`, `Key`, configured keys), as every value of those keys
//! is.
//!
//! What a connection masks with its policy: every header value and text it logs,
//! the text of every [`CloseReason`] (`AuthenticationFailed`, `NotAmi`,
//! `Transport`) and of every [`ActionError::Rejected`] it returns, the `message`
//! and a masked copy of the `response` alike. Successful replies, events and
//! unmatched responses are the application's data and are returned as received;
//! their `Debug` masks the built-in keys.

use std::borrow::Cow;
use std::fmt;

use memchr::memmem::Finder;
use regex_lite::{Regex, RegexBuilder};

use crate::error::{ActionError, CloseReason};
use crate::message::Message;

/// The text shown in place of a masked value.
pub const MASK: &str = "********";

/// Header keys that are always treated as secret (compared case-insensitively).
const BUILTIN_SECRET_KEYS: [&str; 3] = ["Secret", "Password", "Key"];

/// Shortest secret value, in characters, that [`Redactor::with_secret`] masks inside
/// any value or text. Shorter secrets are masked only under secret keys.
pub const MIN_MASKED_VALUE_LEN: usize = 4;

/// The built-in policy: the built-in keys only. A `static`, so reading it costs
/// nothing.
static BUILTIN: Redactor = Redactor {
    keys: Vec::new(),
    key_patterns: Vec::new(),
    value_patterns: Vec::new(),
    values: Vec::new(),
};

/// A credential (AMI secret, password) that prints as [`MASK`].
///
/// Neither `Debug` nor `Display` reveal the content; call [`Secret::expose`]
/// at the one place where the real value is needed (encoding the login).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// Returns the real credential. Do not log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// Error building a [`Redactor`] from configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedactError {
    /// A key or value pattern is not a valid regular expression.
    #[error("invalid redaction pattern {pattern:?}: {message}")]
    InvalidPattern {
        /// The pattern as configured.
        pattern: String,
        /// Why the regex engine refused it.
        message: String,
    },
}

/// Decides which header values are sensitive and masks them.
///
/// * Keys `Secret`, `Password` and `Key` are always secret (case-insensitive).
/// * Extra key names match case-insensitively and exactly.
/// * Key patterns match anywhere in the key, case-insensitively.
/// * Value patterns mask every (non-empty) match inside any value.
/// * Secret values ([`with_secret`](Redactor::with_secret)) mask every occurrence
///   inside any value or text.
///
/// Variable assignments (`Variable: NAME=value`, `ChanVariable(..): NAME=value`)
/// are masked after the `=` when `NAME` is itself a secret key, because
/// dialplan variables often carry credentials.
///
/// `Debug` shows the keys and patterns, and only how many secret values there are.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Extra secret key names, compared with `eq_ignore_ascii_case`.
    keys: Vec<String>,
    /// Compiled case-insensitive key patterns.
    key_patterns: Vec<Regex>,
    /// Compiled value patterns, applied to every value.
    value_patterns: Vec<Regex>,
    /// Literal secret values (each at least [`MIN_MASKED_VALUE_LEN`] characters),
    /// masked wherever they occur.
    values: Vec<Finder<'static>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("keys", &self.keys)
            .field("key_patterns", &self.key_patterns)
            .field("value_patterns", &self.value_patterns)
            .field("secret_values", &self.values.len())
            .finish()
    }
}

impl Redactor {
    /// Builds a redactor from configured extra key names
    /// (`redaction_keys`), key patterns (`redaction_key_patterns`) and value
    /// patterns (`redaction_value_patterns`). The built-in keys are always on.
    pub fn new(
        keys: impl IntoIterator<Item = impl Into<String>>,
        key_patterns: impl IntoIterator<Item = impl Into<String>>,
        value_patterns: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Redactor, RedactError> {
        let keys = keys.into_iter().map(Into::into).collect();
        let key_patterns = key_patterns
            .into_iter()
            .map(|p| compile(p.into(), true))
            .collect::<Result<_, _>>()?;
        let value_patterns = value_patterns
            .into_iter()
            .map(|p| compile(p.into(), false))
            .collect::<Result<_, _>>()?;
        Ok(Redactor {
            keys,
            key_patterns,
            value_patterns,
            values: Vec::new(),
        })
    }

    /// The built-in policy (keys `Secret`, `Password`, `Key`), used where no
    /// connection's policy can be reached, e.g. the `Debug` of a [`Message`] or an
    /// [`Action`](crate::action::Action). A `static`: no lock, no allocation.
    pub fn builtin() -> &'static Redactor {
        &BUILTIN
    }

    /// This policy plus `secret`'s value, masked wherever it occurs in any value
    /// or text. A value shorter than [`MIN_MASKED_VALUE_LEN`] characters is not
    /// added (it would mask unrelated text); it stays masked under secret keys.
    ///
    /// [`Connection::new`](crate::connection::Connection::new) does this with the
    /// configured secret; call it for other credentials the server may echo.
    pub fn with_secret(mut self, secret: &Secret) -> Redactor {
        let value = secret.expose();
        let known = self.values.iter().any(|f| f.needle() == value.as_bytes());
        if value.chars().count() >= MIN_MASKED_VALUE_LEN && !known {
            self.values.push(Finder::new(value).into_owned());
        }
        self
    }

    /// Whether [`with_secret`](Redactor::with_secret) added at least one value.
    pub fn has_secret_values(&self) -> bool {
        !self.values.is_empty()
    }

    /// Returns free text (an error message, a banner, a reason) as it may be
    /// shown: every occurrence of a secret value and every value pattern match
    /// masked. Borrows, without allocating, when nothing needed masking.
    pub fn mask_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        for finder in &self.values {
            if let Some(masked) = mask_literal(finder, &text) {
                text = Cow::Owned(masked);
            }
        }
        self.apply_value_patterns(text)
    }

    /// `message` formatted for `Debug` through this policy, e.g. for a log line:
    /// `tracing::trace!(message = ?redactor.message(&message))`.
    pub fn message<'a>(&'a self, message: &'a Message) -> RedactedMessage<'a> {
        RedactedMessage {
            redactor: self,
            message,
        }
    }

    /// Whether the whole value of header `key` must be masked.
    pub fn is_secret_key(&self, key: &str) -> bool {
        BUILTIN_SECRET_KEYS
            .iter()
            .any(|k| k.eq_ignore_ascii_case(key))
            || self.keys.iter().any(|k| k.eq_ignore_ascii_case(key))
            || self.key_patterns.iter().any(|re| re.is_match(key))
    }

    /// Returns `value` as it may be shown for header `key`: fully masked for
    /// a secret key, otherwise with secret variable assignments, secret values
    /// and value pattern matches masked. Borrows when nothing needed masking.
    pub fn redact<'a>(&self, key: &str, value: &'a str) -> Cow<'a, str> {
        if self.is_secret_key(key) {
            return Cow::Borrowed(MASK);
        }
        let value = if is_variable_key(key) {
            self.mask_assignments(value)
        } else {
            Cow::Borrowed(value)
        };
        match value {
            Cow::Borrowed(value) => self.mask_text(value),
            Cow::Owned(value) => Cow::Owned(self.mask_text(&value).into_owned()),
        }
    }

    /// Returns the value of dialplan variable `name` as it may be shown:
    /// masked when `name` is a secret key, else with value patterns applied.
    /// Used for `SetVar`-like pairs where the name and value are separate.
    pub fn redact_variable<'a>(&self, name: &str, value: &'a str) -> Cow<'a, str> {
        if self.is_secret_key(name.trim()) {
            Cow::Borrowed(MASK)
        } else {
            self.mask_text(value)
        }
    }

    /// Writes `headers` as a debug map with every value redacted by this
    /// redactor. See [`fmt_headers`] for the built-in policy.
    ///
    /// Besides per-header masking, a `Variable` header naming a secret
    /// variable without `=` (as in `SetVar` actions and `VarSet` events)
    /// masks the `Value` headers of the same message.
    pub fn fmt_headers<'a>(
        &self,
        f: &mut fmt::Formatter<'_>,
        headers: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> fmt::Result {
        // Collected because the Variable/Value pairing needs two passes.
        let headers: Vec<(&str, &str)> = headers.collect();
        let mask_value_headers = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("Variable") && !v.contains('=') && self.is_secret_key(v.trim())
        });
        let mut map = f.debug_map();
        for (key, value) in headers {
            let shown = if mask_value_headers && key.eq_ignore_ascii_case("Value") {
                Cow::Borrowed(MASK)
            } else {
                self.redact(key, value)
            };
            map.entry(&key, &shown);
        }
        map.finish()
    }

    /// Masks what follows `=` in a `NAME=value[,NAME=value...]` assignment
    /// list once a secret `NAME` is found. Everything after that `=` is masked,
    /// even later assignments, because a secret may itself contain commas.
    fn mask_assignments<'a>(&self, value: &'a str) -> Cow<'a, str> {
        let mut start = 0;
        loop {
            let rest = &value[start..];
            let next_comma = rest.find(',');
            if let Some(eq) = rest.find('=') {
                let name = &rest[..eq];
                // A comma before the `=` means this segment has no name of its own.
                if next_comma.is_none_or(|c| c > eq) && self.is_secret_key(name.trim()) {
                    let keep = start + eq + 1;
                    return Cow::Owned(format!("{}{MASK}", &value[..keep]));
                }
            }
            match next_comma {
                Some(c) => start += c + 1,
                None => return Cow::Borrowed(value),
            }
        }
    }

    /// Replaces every non-empty match of every value pattern by [`MASK`].
    fn apply_value_patterns<'a>(&self, mut value: Cow<'a, str>) -> Cow<'a, str> {
        for re in &self.value_patterns {
            if let Some(masked) = mask_matches(re, &value) {
                value = Cow::Owned(masked);
            }
        }
        value
    }

    /// Masks `text` in place; no allocation when nothing needed masking.
    fn mask_string(&self, text: &mut String) {
        if let Cow::Owned(masked) = self.mask_text(text) {
            *text = masked;
        }
    }

    /// `reason` with the server's (or transport's) text in it masked.
    pub(crate) fn mask_reason(&self, mut reason: CloseReason) -> CloseReason {
        match &mut reason {
            CloseReason::NotAmi { first_line: text }
            | CloseReason::AuthenticationFailed { message: text }
            | CloseReason::Transport(text) => self.mask_string(text),
            CloseReason::LoginFailed { error } => {
                let masked = self.mask_error((**error).clone());
                **error = masked;
            }
            // Names the header, never its value.
            CloseReason::Unencodable { .. } => {}
            CloseReason::Graceful
            | CloseReason::LogoffTimeout
            | CloseReason::ConnectTimeout
            | CloseReason::BannerTimeout
            | CloseReason::LoginTimeout
            | CloseReason::HeartbeatTimeout { .. }
            | CloseReason::PeerClosed => {}
        }
        reason
    }

    /// A copy of `message` with every header value redacted as in
    /// [`redact`](Redactor::redact) and every legacy body line as in
    /// [`mask_text`](Redactor::mask_text); `None` when nothing needed masking.
    pub(crate) fn mask_message(&self, message: &Message) -> Option<Message> {
        message.map_values(|key, value| match key {
            Some(key) => self.redact(key, value),
            None => self.mask_text(value),
        })
    }

    /// `error` with the server's text in it masked: the message of an error
    /// response and the response itself (a masked copy when anything in it
    /// needed masking).
    pub(crate) fn mask_error(&self, error: ActionError) -> ActionError {
        match error {
            ActionError::Rejected {
                mut message,
                response,
            } => {
                self.mask_string(&mut message);
                let response = match self.mask_message(&response) {
                    Some(masked) => Box::new(masked),
                    None => response,
                };
                ActionError::Rejected { message, response }
            }
            ActionError::ConnectionClosed { reason } => ActionError::ConnectionClosed {
                reason: self.mask_reason(reason),
            },
            other @ (ActionError::Timeout { .. }
            | ActionError::ListTooLong { .. }
            | ActionError::Discarded(_)
            | ActionError::MemoryLimit { .. }
            | ActionError::NotSent(_)) => other,
        }
    }
}

/// `Debug` of a [`Message`] through a given [`Redactor`]; from
/// [`Redactor::message`].
#[derive(Clone, Copy)]
pub struct RedactedMessage<'a> {
    redactor: &'a Redactor,
    message: &'a Message,
}

impl fmt::Debug for RedactedMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.redactor.fmt_headers(f, self.message.headers())
    }
}

/// Returns `text` with every occurrence of `finder`'s needle replaced by [`MASK`],
/// or `None` when there is none.
fn mask_literal(finder: &Finder<'_>, text: &str) -> Option<String> {
    let mut found = finder.find_iter(text.as_bytes()).peekable();
    found.peek()?;
    let len = finder.needle().len();
    let mut out = String::with_capacity(text.len() + MASK.len());
    let mut last = 0;
    for start in found {
        // The needle is UTF-8, so a match starts and ends on char boundaries.
        out.push_str(text.get(last..start).unwrap_or_default());
        out.push_str(MASK);
        last = start + len;
    }
    out.push_str(text.get(last..).unwrap_or_default());
    Some(out)
}

/// Compiles one configured pattern.
fn compile(pattern: String, case_insensitive: bool) -> Result<Regex, RedactError> {
    RegexBuilder::new(&pattern)
        .case_insensitive(case_insensitive)
        .build()
        .map_err(|e| RedactError::InvalidPattern {
            message: e.to_string(),
            pattern,
        })
}

/// Returns `value` with every non-empty match of `re` replaced by [`MASK`],
/// or `None` when nothing matched. Empty matches are skipped: a pattern such as
/// `x*` would otherwise insert a mask between every character.
fn mask_matches(re: &Regex, value: &str) -> Option<String> {
    let mut out: Option<String> = None;
    let mut last = 0;
    for m in re.find_iter(value).filter(|m| !m.is_empty()) {
        let buf = out.get_or_insert_with(|| String::with_capacity(value.len()));
        buf.push_str(&value[last..m.start()]);
        buf.push_str(MASK);
        last = m.end();
    }
    let mut out = out?;
    out.push_str(&value[last..]);
    Some(out)
}

/// Keys whose values are `NAME=value` assignments: `Variable` and
/// `ChanVariable` / `ChanVariable(<channel>)`.
fn is_variable_key(key: &str) -> bool {
    const CHAN_VARIABLE: &str = "ChanVariable";
    key.eq_ignore_ascii_case("Variable")
        || key
            .get(..CHAN_VARIABLE.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(CHAN_VARIABLE))
}

/// Writes `headers` as a debug map with values redacted through the built-in
/// policy ([`Redactor::builtin`]). Meant to be called from `Debug` impls of
/// types that hold AMI headers and cannot reach a connection's policy.
pub fn fmt_headers<'a>(
    f: &mut fmt::Formatter<'_>,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
) -> fmt::Result {
    BUILTIN.fmt_headers(f, headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Formats headers through a given redactor (not the global policy).
    struct With<'r>(&'r Redactor, Vec<(&'static str, &'static str)>);

    impl fmt::Debug for With<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.fmt_headers(f, self.1.iter().copied())
        }
    }

    /// Formats headers through the built-in policy.
    struct Builtin(Vec<(&'static str, &'static str)>);

    impl fmt::Debug for Builtin {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt_headers(f, self.0.iter().copied())
        }
    }

    const NONE: [&str; 0] = [];

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), MASK);
        assert_eq!(format!("{s}"), MASK);
        assert_eq!(format!("{:?}", Some(s.clone())), format!("Some({MASK})"));
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(Secret::from("a"), Secret::from(String::from("a")));
        assert_ne!(Secret::from("a"), Secret::from("b"));
    }

    #[test]
    fn builtin_keys_are_case_insensitive() {
        let r = Redactor::default();
        for key in ["Secret", "secret", "PASSWORD", "Password", "key", "KEY"] {
            assert!(r.is_secret_key(key), "{key}");
            assert_eq!(r.redact(key, "hunter2"), MASK);
        }
        for key in ["Username", "Keys", "SecretName", "Channel", ""] {
            assert!(!r.is_secret_key(key), "{key}");
        }
        assert!(matches!(
            r.redact("Channel", "PJSIP/100"),
            Cow::Borrowed("PJSIP/100")
        ));
    }

    #[test]
    fn extra_keys_are_exact_and_case_insensitive() {
        let r = Redactor::new(["Token"], NONE, NONE).unwrap();
        assert!(r.is_secret_key("token"));
        assert!(r.is_secret_key("TOKEN"));
        assert!(!r.is_secret_key("Tokens"));
        assert!(!r.is_secret_key("AuthToken"));
        // Built-ins stay on when extra keys are configured.
        assert!(r.is_secret_key("Secret"));
    }

    #[test]
    fn key_patterns_match_anywhere_case_insensitively() {
        let r = Redactor::new(NONE, ["pass", "^x-"], NONE).unwrap();
        assert!(r.is_secret_key("DbPassphrase"));
        assert!(r.is_secret_key("PASSCODE"));
        assert!(r.is_secret_key("X-Auth"));
        assert!(!r.is_secret_key("Auth-X-"));
        assert!(!r.is_secret_key("Channel"));
    }

    #[test]
    fn value_patterns_mask_every_match_in_any_value() {
        let r = Redactor::new(NONE, NONE, [r"\d{4}-\d{4}", "tok_[a-z]+"]).unwrap();
        assert_eq!(
            r.redact("Data", "a 1234-5678 b 9999-0000 tok_abc c"),
            format!("a {MASK} b {MASK} {MASK} c")
        );
        // Value patterns are case-sensitive unless the pattern says `(?i)`.
        assert_eq!(r.redact("Data", "TOK_abc"), "TOK_abc");
        assert!(matches!(r.redact("Data", "clean"), Cow::Borrowed("clean")));
    }

    #[test]
    fn empty_pattern_matches_do_not_mask() {
        let r = Redactor::new(NONE, NONE, ["x*"]).unwrap();
        assert_eq!(r.redact("Data", "abc"), "abc");
        assert_eq!(r.redact("Data", "axxb"), format!("a{MASK}b"));
    }

    #[test]
    fn invalid_patterns_are_reported() {
        let err = Redactor::new(NONE, ["("], NONE).unwrap_err();
        let RedactError::InvalidPattern { pattern, message } = &err;
        assert_eq!(pattern, "(");
        assert!(!message.is_empty());
        assert!(err.to_string().contains("\"(\""));
        assert!(Redactor::new(NONE, NONE, ["[z-a]"]).is_err());
    }

    #[test]
    fn secret_variable_assignments_are_masked() {
        let r = Redactor::default();
        assert_eq!(
            r.redact("Variable", "PASSWORD=x"),
            format!("PASSWORD={MASK}")
        );
        assert_eq!(
            r.redact("ChanVariable(PJSIP/1-0001)", "secret=x"),
            format!("secret={MASK}")
        );
        assert_eq!(r.redact("chanvariable", "Key=x,y"), format!("Key={MASK}"));
        // Only from the secret assignment on; earlier ones stay visible.
        assert_eq!(
            r.redact("Variable", "A=1,Password=p,w,B=2"),
            format!("A=1,Password={MASK}")
        );
        assert_eq!(r.redact("Variable", "A=b,c=d"), "A=b,c=d");
        assert_eq!(r.redact("Variable", "PASSWORD"), "PASSWORD");
        // Not a variable key: the assignment rule does not apply.
        assert_eq!(r.redact("Data", "PASSWORD=x"), "PASSWORD=x");
        assert_eq!(r.redact_variable("password", "x"), MASK);
        assert_eq!(r.redact_variable("CALLERID", "x"), "x");
    }

    #[test]
    fn fmt_headers_masks_values_and_variable_pairs() {
        let r = Redactor::new(["DbPass"], NONE, NONE).unwrap();
        let shown = format!(
            "{:?}",
            With(
                &r,
                vec![
                    ("Action", "Login"),
                    ("Username", "admin"),
                    ("Secret", "hunter2")
                ]
            )
        );
        assert_eq!(
            shown,
            format!(r#"{{"Action": "Login", "Username": "admin", "Secret": "{MASK}"}}"#)
        );
        let shown = format!(
            "{:?}",
            With(&r, vec![("Variable", "dbpass"), ("Value", "hunter2")])
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        let shown = format!(
            "{:?}",
            With(&r, vec![("Variable", "Foo"), ("Value", "bar")])
        );
        assert!(shown.contains("bar"), "{shown}");
    }

    #[test]
    fn redactors_are_independent_values() {
        // Two policies side by side: each masks its own key, not the other's, and
        // the built-in one (used by `Debug` impls without a connection) neither.
        let a = Redactor::new(["X-Token"], NONE, NONE).unwrap();
        let b = Redactor::new(["X-Other"], NONE, NONE).unwrap();
        let headers = || {
            vec![
                ("X-Token", "token-value"),
                ("X-Other", "other-value"),
                ("Secret", "s3"),
            ]
        };
        let shown_a = format!("{:?}", With(&a, headers()));
        let shown_b = format!("{:?}", With(&b, headers()));
        let shown_builtin = format!("{:?}", Builtin(headers()));
        assert!(
            !shown_a.contains("token-value") && shown_a.contains("other-value"),
            "{shown_a}"
        );
        assert!(
            shown_b.contains("token-value") && !shown_b.contains("other-value"),
            "{shown_b}"
        );
        assert!(
            shown_builtin.contains("token-value") && shown_builtin.contains("other-value"),
            "{shown_builtin}"
        );
        for shown in [shown_a, shown_b, shown_builtin] {
            assert!(!shown.contains("s3"), "{shown}");
        }
        assert!(Redactor::builtin().is_secret_key("Password"));
        assert!(!Redactor::builtin().is_secret_key("X-Token"));
    }

    #[test]
    fn secret_values_are_masked_in_values_and_text() {
        let r = Redactor::default().with_secret(&Secret::new("hunter2"));
        assert!(r.has_secret_values());
        assert_eq!(
            r.mask_text("hunter2 is hunter2, not Hunter2"),
            format!("{MASK} is {MASK}, not Hunter2")
        );
        assert_eq!(r.redact("Message", "bad hunter2"), format!("bad {MASK}"));
        assert_eq!(r.redact_variable("LEAD", "xhunter2x"), format!("x{MASK}x"));
        // After a secret assignment everything is masked; before it, the value is.
        assert_eq!(
            r.redact("Variable", "A=hunter2,PASSWORD=x"),
            format!("A={MASK},PASSWORD={MASK}")
        );
        // Nothing to mask: borrowed, no allocation.
        assert!(matches!(
            r.mask_text("clean text"),
            Cow::Borrowed("clean text")
        ));
        assert!(matches!(r.mask_text(""), Cow::Borrowed("")));
        assert!(matches!(
            r.redact("Data", "hunter"),
            Cow::Borrowed("hunter")
        ));
        // Multi-byte text around the match stays intact.
        let r = Redactor::default().with_secret(&Secret::new("pässwörd"));
        assert_eq!(r.mask_text("é pässwörd ü"), format!("é {MASK} ü"));
        // Value patterns apply to free text too.
        let r = Redactor::new(NONE, NONE, ["tok_[a-z]+"])
            .unwrap()
            .with_secret(&Secret::new("hunter2"));
        assert_eq!(r.mask_text("tok_abc hunter2"), format!("{MASK} {MASK}"));
        // `Debug` never shows a secret value.
        let shown = format!("{r:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("secret_values: 1"),
            "{shown}"
        );
    }

    #[test]
    fn short_secret_values_are_masked_only_under_secret_keys() {
        for short in ["", "a", "ab", "abc", "äöü"] {
            let r = Redactor::default().with_secret(&Secret::new(short));
            assert!(!r.has_secret_values(), "{short:?}");
            assert!(matches!(r.mask_text("a b abc äöü"), Cow::Borrowed(_)));
            assert_eq!(r.redact("Secret", short), MASK);
        }
        let r = Redactor::default().with_secret(&Secret::new("abcd"));
        assert!(r.has_secret_values());
        assert_eq!(r.mask_text("xabcdx abc"), format!("x{MASK}x abc"));
        // Adding the same value twice keeps one.
        let r = r.with_secret(&Secret::new("abcd"));
        assert!(format!("{r:?}").contains("secret_values: 1"));
    }

    #[test]
    fn masked_errors_and_reasons_hide_the_secret_value() {
        use crate::parser::{Limits, Parsed, Parser};

        let r = Redactor::default().with_secret(&Secret::new("hunter2"));
        let reason = r.mask_reason(CloseReason::AuthenticationFailed {
            message: "no hunter2".into(),
        });
        assert_eq!(
            reason,
            CloseReason::AuthenticationFailed {
                message: format!("no {MASK}")
            }
        );
        assert_eq!(
            r.mask_reason(CloseReason::Transport("hunter2".into())),
            CloseReason::Transport(MASK.into())
        );
        assert_eq!(
            r.mask_reason(CloseReason::NotAmi {
                first_line: "hunter2!".into()
            }),
            CloseReason::NotAmi {
                first_line: format!("{MASK}!")
            }
        );
        assert_eq!(
            r.mask_reason(CloseReason::PeerClosed),
            CloseReason::PeerClosed
        );

        let mut parsed = Vec::new();
        Parser::new(Limits::default()).feed(
            b"Response: Error\r\nActionID: a-1\r\nMessage: bad hunter2\r\nX: hunter2hunter2\r\n\r\n",
            &mut |item| parsed.push(item),
        );
        let [Parsed::Message(response)] = <[Parsed; 1]>::try_from(parsed).unwrap() else {
            panic!("one message");
        };
        let error = r.mask_error(ActionError::Rejected {
            message: "bad hunter2".into(),
            response: Box::new(response.clone()),
        });
        let ActionError::Rejected {
            message,
            response: masked,
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!(message, &format!("bad {MASK}"));
        assert_eq!(masked.get("Message"), Some(message.as_str()));
        assert_eq!(masked.get("X"), Some(format!("{MASK}{MASK}").as_str()));
        assert_eq!(masked.action_id(), Some("a-1"));
        assert_eq!(masked.response(), Some("Error"));
        assert!(!format!("{error:?}").contains("hunter2"));

        // Nothing to mask: the response is the very same message.
        let clean = Redactor::default().mask_error(ActionError::Rejected {
            message: "bad hunter2".into(),
            response: Box::new(response.clone()),
        });
        assert!(
            matches!(&clean, ActionError::Rejected { response: kept, .. } if **kept == response)
        );

        // The connection's keys are masked in the response handed back, too.
        let with_token = Redactor::new(["X-Token"], NONE, NONE).unwrap();
        let mut parsed = Vec::new();
        Parser::new(Limits::default()).feed(
            b"Response: Error\r\nMessage: no\r\nX-Token: tok\r\nSecret: s\r\n\r\n",
            &mut |item| parsed.push(item),
        );
        let [Parsed::Message(response)] = <[Parsed; 1]>::try_from(parsed).unwrap() else {
            panic!("one message");
        };
        let error = with_token.mask_error(ActionError::Rejected {
            message: "no".into(),
            response: Box::new(response),
        });
        let ActionError::Rejected { response, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(response.get("X-Token"), Some(MASK));
        assert_eq!(response.get("Secret"), Some(MASK));
        assert_eq!(response.get("Message"), Some("no"));

        let closed = r.mask_error(ActionError::ConnectionClosed {
            reason: CloseReason::Transport("hunter2".into()),
        });
        assert_eq!(
            closed,
            ActionError::ConnectionClosed {
                reason: CloseReason::Transport(MASK.into())
            }
        );
    }
}
