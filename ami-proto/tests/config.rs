//! `Config::validate` and `Limits::validate`: one test per setting that cannot work.

use std::time::Duration;

use ami_proto::action::{EncodeError, EventMask};
use ami_proto::{AuthMethod, Config, ConfigError, Limits, MAX_LIMIT, Parsed, Parser};

fn config() -> Config {
    Config::new("pbx1", "admin", "s3cret")
}

fn refused(change: impl FnOnce(&mut Config)) -> ConfigError {
    let mut cfg = config();
    change(&mut cfg);
    cfg.validate().expect_err("the setting must be refused")
}

#[test]
fn the_defaults_are_valid() {
    assert_eq!(config().validate(), Ok(()));
    assert_eq!(Limits::default().validate(), Ok(()));
}

#[test]
fn long_durations_are_valid_they_mean_no_deadline() {
    let mut cfg = config();
    cfg.connect_timeout = Duration::MAX;
    cfg.read_timeout = Duration::MAX;
    cfg.action_timeout = Duration::MAX;
    cfg.heartbeat_interval = Duration::MAX;
    cfg.heartbeat_timeout = Duration::MAX;
    cfg.close_timeout = Duration::MAX;
    cfg.event_drop_log_interval = Duration::MAX;
    assert_eq!(cfg.validate(), Ok(()));
}

#[test]
fn an_empty_server_key_is_refused() {
    let e = refused(|c| c.server_key.clear());
    assert_eq!(e, ConfigError::EmptyServerKey);
    assert_eq!(e.setting(), "server_key");
}

#[test]
fn zero_timeouts_are_refused_each_by_name() {
    type Set = fn(&mut Config);
    let cases: [(&str, Set); 5] = [
        ("connect_timeout", |c| c.connect_timeout = Duration::ZERO),
        ("read_timeout", |c| c.read_timeout = Duration::ZERO),
        ("action_timeout", |c| c.action_timeout = Duration::ZERO),
        ("heartbeat_timeout", |c| {
            c.heartbeat_timeout = Duration::ZERO
        }),
        ("close_timeout", |c| c.close_timeout = Duration::ZERO),
    ];
    for (setting, set) in cases {
        let e = refused(set);
        assert_eq!(e, ConfigError::ZeroTimeout { setting });
        assert_eq!(e.setting(), setting);
        assert!(e.to_string().contains(setting), "{e}");
    }
}

#[test]
fn heartbeat_settings_are_checked_only_while_heartbeats_are_on() {
    assert_eq!(
        refused(|c| c.heartbeat_max_misses = 0),
        ConfigError::ZeroHeartbeatMaxMisses
    );
    let mut off = config();
    off.heartbeat_interval = Duration::ZERO;
    off.heartbeat_timeout = Duration::ZERO;
    off.heartbeat_max_misses = 0;
    assert_eq!(off.validate(), Ok(()));
}

#[test]
fn zero_capacities_are_refused() {
    assert_eq!(
        refused(|c| c.max_pending_actions = 0),
        ConfigError::ZeroMaxPendingActions
    );
    assert_eq!(
        refused(|c| c.max_list_items = 0),
        ConfigError::ZeroMaxListItems
    );
    assert_eq!(
        refused(|c| c.event_queue_capacity = 0),
        ConfigError::ZeroEventQueueCapacity
    );
    assert_eq!(
        refused(|c| c.write_buffer_limit = 0),
        ConfigError::ZeroWriteBufferLimit
    );
}

#[test]
fn limits_must_fit_the_parser_and_agree() {
    let limits = |max_frame_size, max_command_output| Limits {
        max_frame_size,
        max_command_output,
    };
    assert_eq!(
        limits(0, 1024).validate(),
        Err(ConfigError::ZeroMaxFrameSize)
    );
    assert_eq!(
        limits(MAX_LIMIT + 1, MAX_LIMIT + 1).validate(),
        Err(ConfigError::MaxFrameSizeTooLarge {
            size: MAX_LIMIT + 1
        })
    );
    assert_eq!(
        limits(1024, MAX_LIMIT + 1).validate(),
        Err(ConfigError::MaxCommandOutputTooLarge {
            size: MAX_LIMIT + 1
        })
    );
    assert_eq!(
        limits(1024, 512).validate(),
        Err(ConfigError::MaxCommandOutputBelowFrameSize {
            max_command_output: 512,
            max_frame_size: 1024
        })
    );
    assert_eq!(limits(1, 1).validate(), Ok(()));
    assert_eq!(limits(MAX_LIMIT, MAX_LIMIT).validate(), Ok(()));
    // Config::validate checks its limits.
    let e = refused(|c| c.limits = limits(usize::MAX, usize::MAX));
    assert_eq!(e.setting(), "limits.max_frame_size");
    let e = refused(|c| c.limits = limits(1024, 512));
    assert_eq!(e.setting(), "limits.max_command_output");
}

#[test]
fn a_login_that_cannot_be_encoded_is_refused() {
    let e = refused(|c| c.username = "admin\r\nAction: Originate".into());
    assert!(matches!(
        &e,
        ConfigError::UnencodableLogin(EncodeError::HeaderInjection { key }) if key == "Username"
    ));
    assert_eq!(e.setting(), "username");
    let e = refused(|c| c.secret = "s3cret\n".into());
    assert_eq!(e.setting(), "secret");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    let e = refused(|c| c.events = EventMask::Classes(vec!["call\r\n".into()]));
    assert_eq!(e.setting(), "events");
    // With MD5 the secret never crosses the wire: a CR in it does not matter.
    let mut md5 = config();
    md5.auth = AuthMethod::Md5;
    md5.secret = "s3cret\r".into();
    assert_eq!(md5.validate(), Ok(()));
}

/// Limits past `u32` offsets are lowered, not trusted: no overflow, no panic, and
/// messages held across inputs still parse.
#[test]
fn a_parser_with_the_largest_limits_never_panics() {
    let mut parser = Parser::new(Limits {
        max_frame_size: usize::MAX,
        max_command_output: usize::MAX,
    });
    assert_eq!(parser.limits().max_frame_size, MAX_LIMIT);
    let mut names = Vec::new();
    let input: &[u8] = b"Event: A\r\nKey: value\r\n\r\nEvent: B\r\n\r\n";
    for piece in input.chunks(3) {
        parser.feed(piece, &mut |item| {
            if let Parsed::Message(m) = item {
                names.push(m.event_name().unwrap_or_default().to_owned());
            }
        });
    }
    assert_eq!(names, ["A", "B"]);
}
