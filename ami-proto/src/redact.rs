//! Masking of credentials and other sensitive values before they reach logs
//! or `Debug`/`Display` output.
//!
//! Two tools live here:
//!
//! * [`Secret`] wraps a credential so that it can never be printed by accident.
//! * [`Redactor`] decides which header values are sensitive. The built-in keys
//!   `Secret`, `Password` and `Key` (the MD5 login digest) are always masked;
//!   drivers can add key names, key patterns and value patterns from their
//!   configuration.
//!
//! A process-wide policy ([`install`] / [`current`]) lets every `Debug` impl in
//! the crate (actions, messages) mask the configured keys without threading a
//! redactor through every call. Drivers install the policy from their
//! configuration at start-up; until then the built-in default applies.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use regex_lite::{Regex, RegexBuilder};

/// The text shown in place of a masked value.
pub const MASK: &str = "********";

/// Header keys that are always treated as secret (compared case-insensitively).
const BUILTIN_SECRET_KEYS: [&str; 3] = ["Secret", "Password", "Key"];

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
///
/// Variable assignments (`Variable: NAME=value`, `ChanVariable(..): NAME=value`)
/// are masked after the `=` when `NAME` is itself a secret key, because
/// dialplan variables often carry credentials.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Extra secret key names, compared with `eq_ignore_ascii_case`.
    keys: Vec<String>,
    /// Compiled case-insensitive key patterns.
    key_patterns: Vec<Regex>,
    /// Compiled value patterns, applied to every value.
    value_patterns: Vec<Regex>,
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
        })
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
    /// a secret key, otherwise with secret variable assignments and value
    /// pattern matches masked. Borrows when nothing needed masking.
    pub fn redact<'a>(&self, key: &str, value: &'a str) -> Cow<'a, str> {
        if self.is_secret_key(key) {
            return Cow::Borrowed(MASK);
        }
        let value = if is_variable_key(key) {
            self.mask_assignments(value)
        } else {
            Cow::Borrowed(value)
        };
        self.apply_value_patterns(value)
    }

    /// Returns the value of dialplan variable `name` as it may be shown:
    /// masked when `name` is a secret key, else with value patterns applied.
    /// Used for `SetVar`-like pairs where the name and value are separate.
    pub fn redact_variable<'a>(&self, name: &str, value: &'a str) -> Cow<'a, str> {
        if self.is_secret_key(name.trim()) {
            Cow::Borrowed(MASK)
        } else {
            self.apply_value_patterns(Cow::Borrowed(value))
        }
    }

    /// Writes `headers` as a debug map with every value redacted by this
    /// redactor. See [`fmt_headers`] for the global-policy version.
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

/// The process-wide policy read by `Debug`/`Display` impls.
static POLICY: LazyLock<RwLock<Arc<Redactor>>> =
    LazyLock::new(|| RwLock::new(Arc::new(Redactor::default())));

/// Replaces the process-wide redaction policy.
///
/// Drivers call this once at start-up with the redactor built from their
/// configuration (`redaction_keys`, `redaction_key_patterns`,
/// `redaction_value_patterns`). Thread safe; formatting already in progress
/// keeps the policy it started with.
pub fn install(redactor: Redactor) {
    // A poisoned lock still holds a complete Arc (the write is a single
    // assignment), so recovering the guard is safe.
    let mut policy = POLICY.write().unwrap_or_else(PoisonError::into_inner);
    *policy = Arc::new(redactor);
}

/// The current process-wide policy: the built-in default until [`install`]
/// is called.
pub fn current() -> Arc<Redactor> {
    Arc::clone(&POLICY.read().unwrap_or_else(PoisonError::into_inner))
}

/// Writes `headers` as a debug map with values redacted through the
/// process-wide policy ([`current`]). Meant to be called from `Debug` impls of
/// types that hold AMI headers.
pub fn fmt_headers<'a>(
    f: &mut fmt::Formatter<'_>,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
) -> fmt::Result {
    current().fmt_headers(f, headers)
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

    /// Formats headers through the global policy.
    struct Global(Vec<(&'static str, &'static str)>);

    impl fmt::Debug for Global {
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
    fn install_replaces_the_global_policy() {
        // Unique names so that tests running in parallel are unaffected.
        let headers = || Global(vec![("ZzInstallTestKey", "zz-value"), ("Secret", "s3")]);
        let before = format!("{:?}", headers());
        assert!(
            before.contains("zz-value") && !before.contains("s3"),
            "{before}"
        );

        install(Redactor::new(["ZzInstallTestKey"], NONE, NONE).unwrap());
        let after = format!("{:?}", headers());
        install(Redactor::default());

        assert!(
            !after.contains("zz-value") && !after.contains("s3"),
            "{after}"
        );
        assert!(current().is_secret_key("Password"));
        assert!(!current().is_secret_key("ZzInstallTestKey"));
    }
}
