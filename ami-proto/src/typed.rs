//! Typed, zero-copy views over the events of Asterisk 22 (issue 12).
//!
//! A view borrows a [`Message`] and reads its headers when asked: nothing is copied
//! or parsed up front, and a header that is missing or does not parse is `None`, never
//! a panic. Accessors are named after Asterisk 22's documented fields
//! (`main/manager_channels.c`, `main/manager_bridges.c`, `apps/app_queue.c`, ...) and
//! return values as sent: the `<unknown>` Asterisk writes for an empty caller ID is
//! `Some("<unknown>")`. Coded fields are enums that keep the codes they do not know
//! ([`HangupCause::Unknown`], [`DialStatus::Other`], ...).
//!
//! [`TypedEvent::of`] (or [`Event::typed`](crate::Event::typed)) picks the view by
//! event name, compared case-insensitively; every other message is
//! [`TypedEvent::Other`]. Channel fields live in a [`ChannelSnapshot`], read with the
//! prefix Asterisk gives them (`Dest...` in dial and agent events, `LocalOne...` and
//! `LocalTwo...` in `LocalBridge`); bridge fields in a [`BridgeSnapshot`].
//!
//! ```
//! use ami_proto::parser::{Limits, Parsed, Parser};
//! use ami_proto::typed::{HangupCause, TypedEvent};
//!
//! let mut parser = Parser::new(Limits::default());
//! let mut messages = Vec::new();
//! parser.feed(
//!     b"Event: Hangup\r\nChannel: Local/busy@test-00000001;2\r\nChannelState: 6\r\n\
//!       Uniqueid: 1796134021.3\r\nCause: 17\r\nCause-txt: User busy\r\n\r\n",
//!     &mut |item| {
//!         if let Parsed::Message(message) = item {
//!             messages.push(message);
//!         }
//!     },
//! );
//! let TypedEvent::Hangup(hangup) = TypedEvent::of(&messages[0]) else {
//!     panic!("not a Hangup");
//! };
//! assert_eq!(hangup.cause(), Some(HangupCause::UserBusy));
//! assert_eq!(hangup.cause().unwrap().to_string(), "User busy");
//! assert_eq!(hangup.channel().uniqueid(), Some("1796134021.3"));
//! assert_eq!(hangup.channel().caller_id_num(), None);
//! ```

use std::fmt;

use crate::events::Event;
use crate::message::Message;

/// A header value read as `Self`: what the accessors return (`None` when it does not
/// parse).
trait FromValue<'a>: Sized {
    fn from_value(value: &'a str) -> Option<Self>;
}

impl<'a> FromValue<'a> for &'a str {
    fn from_value(value: &'a str) -> Option<Self> {
        Some(value)
    }
}

macro_rules! from_value_numbers {
    ($($number:ty),*) => {$(
        impl<'a> FromValue<'a> for $number {
            fn from_value(value: &'a str) -> Option<Self> {
                value.trim().parse().ok()
            }
        }
    )*};
}

from_value_numbers!(u16, u32, u64, i32);

impl<'a> FromValue<'a> for bool {
    /// Asterisk's `ast_true`/`ast_false` words: `1`/`0`, `Yes`/`No`, `True`/`False`, ...
    fn from_value(value: &'a str) -> Option<Self> {
        const TRUE: [&str; 6] = ["1", "yes", "true", "y", "t", "on"];
        const FALSE: [&str; 6] = ["0", "no", "false", "n", "f", "off"];
        let value = value.trim();
        let is = |words: &[&str]| words.iter().any(|w| value.eq_ignore_ascii_case(w));
        match (is(&TRUE), is(&FALSE)) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

/// The first value of `<prefix><key>` (case-insensitive) in `message`, without
/// building the key.
fn prefixed<'a>(message: &'a Message, prefix: &str, key: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return message.get(key);
    }
    let (prefix, key) = (prefix.as_bytes(), key.as_bytes());
    message
        .headers()
        .find(|(name, _)| {
            let name = name.as_bytes();
            name.len() == prefix.len() + key.len()
                && name[..prefix.len()].eq_ignore_ascii_case(prefix)
                && name[prefix.len()..].eq_ignore_ascii_case(key)
        })
        .map(|(_, value)| value)
}

// ---------------------------------------------------------------------------------
// Coded fields

/// Declares an enum of numeric codes with an `Unknown(code)` variant for the rest.
macro_rules! coded {
    (
        $(#[$doc:meta])*
        $name:ident($int:ty) { $( $variant:ident = $code:literal, $text:literal; )* }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( #[doc = concat!("`", $code, "`: ", $text, ".")] $variant, )*
            /// A code this crate does not know, kept as sent.
            Unknown($int),
        }

        impl $name {
            /// The value of `code`; `Unknown(code)` for a code this crate does not know.
            pub fn from_code(code: $int) -> Self {
                match code {
                    $( $code => $name::$variant, )*
                    other => $name::Unknown(other),
                }
            }

            /// The numeric code.
            pub fn code(self) -> $int {
                match self {
                    $( $name::$variant => $code, )*
                    $name::Unknown(code) => code,
                }
            }

            /// Its text (also its `Display`); `Unknown` for an unknown code.
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                    $name::Unknown(_) => "Unknown",
                }
            }

            /// Parses a header value (a decimal code, blanks around it ignored); `None`
            /// when it is not a number.
            pub fn parse(value: &str) -> Option<Self> {
                value.trim().parse().ok().map($name::from_code)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl<'a> FromValue<'a> for $name {
            fn from_value(value: &'a str) -> Option<Self> {
                $name::parse(value)
            }
        }
    };
}

/// Declares an enum of textual values with an `Other(text)` variant for the rest.
macro_rules! named {
    (
        $(#[$doc:meta])*
        $name:ident { $( $variant:ident = $text:literal, )* }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name<'a> {
            $( #[doc = concat!("`", $text, "`.")] $variant, )*
            /// A value this crate does not know, kept as sent.
            Other(&'a str),
        }

        impl<'a> $name<'a> {
            /// Parses a header value, ignoring ASCII case; never fails: an unknown
            /// value is `Other`.
            pub fn parse(value: &'a str) -> Self {
                $( if value.eq_ignore_ascii_case($text) { return $name::$variant; } )*
                $name::Other(value)
            }

            /// The value as Asterisk writes it (also its `Display`).
            pub fn as_str(&self) -> &'a str {
                match self {
                    $( $name::$variant => $text, )*
                    $name::Other(value) => value,
                }
            }
        }

        impl fmt::Display for $name<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'a> FromValue<'a> for $name<'a> {
            fn from_value(value: &'a str) -> Option<Self> {
                Some($name::parse(value))
            }
        }
    };
}

coded! {
    /// A channel's state (`ChannelState`; `ast_state2str` gives the `ChannelStateDesc` text).
    ChannelState(u32) {
        Down = 0, "Down";
        Reserved = 1, "Rsrvd";
        OffHook = 2, "OffHook";
        Dialing = 3, "Dialing";
        Ring = 4, "Ring";
        Ringing = 5, "Ringing";
        Up = 6, "Up";
        Busy = 7, "Busy";
        DialingOffHook = 8, "Dialing Offhook";
        PreRing = 9, "Pre-ring";
        Mute = 65536, "Mute";
    }
}

coded! {
    /// The `Reason` of an `OriginateResponse`: the last control frame seen
    /// (`AST_CONTROL_*`), 0 when the call could not be placed.
    OriginateReason(i32) {
        Failed = 0, "failed (no such channel or extension)";
        Hangup = 1, "hung up";
        Ring = 2, "ring";
        Ringing = 3, "ringing (no answer)";
        Answered = 4, "answered";
        Busy = 5, "busy";
        TakeOffHook = 6, "take off hook";
        OffHook = 7, "off hook";
        Congestion = 8, "congestion";
    }
}

coded! {
    /// The `Status` of a `Reload` event.
    ReloadStatus(i32) {
        Success = 0, "Success";
        Queued = 1, "Request queued";
        NotFound = 2, "Module not found";
        Error = 3, "Error";
        InProgress = 4, "Reload already in progress";
        Uninitialized = 5, "Module uninitialized";
        NotSupported = 6, "Reload not supported";
    }
}

coded! {
    /// The `Status` of an `ExtensionStatus` event (its `StatusText` is the name; Asterisk
    /// writes `Unknown` for the removed and deactivated codes).
    ExtensionState(i32) {
        Removed = -2, "Removed";
        Deactivated = -1, "Deactivated";
        Idle = 0, "Idle";
        InUse = 1, "InUse";
        Busy = 2, "Busy";
        Unavailable = 4, "Unavailable";
        Ringing = 8, "Ringing";
        InUseRinging = 9, "InUse&Ringing";
        OnHold = 16, "Hold";
        InUseOnHold = 17, "InUse&Hold";
    }
}

/// Declares [`HangupCause`] from the table of `main/channel.c`.
macro_rules! hangup_causes {
    ($( $variant:ident = $code:literal, $symbol:literal, $text:literal; )*) => {
        /// A Q.850 hangup cause (`Cause` of `Hangup`, `HangupRequest`, ...), as in
        /// `include/asterisk/causes.h`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum HangupCause {
            /// `0`: no cause given (`AST_CAUSE_NOTDEFINED`; Asterisk's text `Unknown`).
            NotDefined,
            $( #[doc = concat!("`", $code, "` `", $symbol, "`: ", $text, ".")] $variant, )*
            /// A code this crate does not know, kept as sent.
            Unknown(i32),
        }

        impl HangupCause {
            /// The cause of `code`; `Unknown(code)` for a code this crate does not know.
            pub fn from_code(code: i32) -> Self {
                match code {
                    0 => HangupCause::NotDefined,
                    $( $code => HangupCause::$variant, )*
                    other => HangupCause::Unknown(other),
                }
            }

            /// The numeric code.
            pub fn code(self) -> i32 {
                match self {
                    HangupCause::NotDefined => 0,
                    $( HangupCause::$variant => $code, )*
                    HangupCause::Unknown(code) => code,
                }
            }

            /// Asterisk's text, as in `Cause-txt` (`ast_cause2str`; also the `Display`).
            pub fn name(self) -> &'static str {
                match self {
                    $( HangupCause::$variant => $text, )*
                    HangupCause::NotDefined | HangupCause::Unknown(_) => "Unknown",
                }
            }

            /// The symbolic name (`USER_BUSY`, as `HANGUPCAUSE` and `ast_str2cause` use it);
            /// `None` for 0 and unknown codes.
            pub fn symbol(self) -> Option<&'static str> {
                match self {
                    $( HangupCause::$variant => Some($symbol), )*
                    HangupCause::NotDefined | HangupCause::Unknown(_) => None,
                }
            }

            /// Parses a header value (a decimal code, blanks around it ignored); `None`
            /// when it is not a number.
            pub fn parse(value: &str) -> Option<Self> {
                value.trim().parse().ok().map(HangupCause::from_code)
            }
        }
    };
}

hangup_causes! {
    Unallocated = 1, "UNALLOCATED", "Unallocated (unassigned) number";
    NoRouteTransitNet = 2, "NO_ROUTE_TRANSIT_NET", "No route to specified transmit network";
    NoRouteDestination = 3, "NO_ROUTE_DESTINATION", "No route to destination";
    MisdialledTrunkPrefix = 5, "MISDIALLED_TRUNK_PREFIX", "Misdialed trunk prefix";
    ChannelUnacceptable = 6, "CHANNEL_UNACCEPTABLE", "Channel unacceptable";
    CallAwardedDelivered = 7, "CALL_AWARDED_DELIVERED",
        "Call awarded and being delivered in an established channel";
    PreEmpted = 8, "PRE_EMPTED", "Pre-empted";
    NumberPortedNotHere = 14, "NUMBER_PORTED_NOT_HERE", "Number ported elsewhere";
    NormalClearing = 16, "NORMAL_CLEARING", "Normal Clearing";
    UserBusy = 17, "USER_BUSY", "User busy";
    NoUserResponse = 18, "NO_USER_RESPONSE", "No user responding";
    NoAnswer = 19, "NO_ANSWER", "User alerting, no answer";
    SubscriberAbsent = 20, "SUBSCRIBER_ABSENT", "Subscriber absent";
    CallRejected = 21, "CALL_REJECTED", "Call Rejected";
    NumberChanged = 22, "NUMBER_CHANGED", "Number changed";
    RedirectedToNewDestination = 23, "REDIRECTED_TO_NEW_DESTINATION",
        "Redirected to new destination";
    AnsweredElsewhere = 26, "ANSWERED_ELSEWHERE", "Answered elsewhere";
    DestinationOutOfOrder = 27, "DESTINATION_OUT_OF_ORDER", "Destination out of order";
    InvalidNumberFormat = 28, "INVALID_NUMBER_FORMAT", "Invalid number format";
    FacilityRejected = 29, "FACILITY_REJECTED", "Facility rejected";
    ResponseToStatusEnquiry = 30, "RESPONSE_TO_STATUS_ENQUIRY", "Response to STATus ENQuiry";
    NormalUnspecified = 31, "NORMAL_UNSPECIFIED", "Normal, unspecified";
    NormalCircuitCongestion = 34, "NORMAL_CIRCUIT_CONGESTION", "Circuit/channel congestion";
    NetworkOutOfOrder = 38, "NETWORK_OUT_OF_ORDER", "Network out of order";
    NormalTemporaryFailure = 41, "NORMAL_TEMPORARY_FAILURE", "Temporary failure";
    SwitchCongestion = 42, "SWITCH_CONGESTION", "Switching equipment congestion";
    AccessInfoDiscarded = 43, "ACCESS_INFO_DISCARDED", "Access information discarded";
    RequestedChanUnavail = 44, "REQUESTED_CHAN_UNAVAIL", "Requested channel not available";
    FacilityNotSubscribed = 50, "FACILITY_NOT_SUBSCRIBED", "Facility not subscribed";
    OutgoingCallBarred = 52, "OUTGOING_CALL_BARRED", "Outgoing call barred";
    IncomingCallBarred = 54, "INCOMING_CALL_BARRED", "Incoming call barred";
    BearerCapabilityNotAuth = 57, "BEARERCAPABILITY_NOTAUTH", "Bearer capability not authorized";
    BearerCapabilityNotAvail = 58, "BEARERCAPABILITY_NOTAVAIL", "Bearer capability not available";
    BearerCapabilityNotImpl = 65, "BEARERCAPABILITY_NOTIMPL", "Bearer capability not implemented";
    ChanNotImplemented = 66, "CHAN_NOT_IMPLEMENTED", "Channel not implemented";
    FacilityNotImplemented = 69, "FACILITY_NOT_IMPLEMENTED", "Facility not implemented";
    InvalidCallReference = 81, "INVALID_CALL_REFERENCE", "Invalid call reference value";
    IncompatibleDestination = 88, "INCOMPATIBLE_DESTINATION", "Incompatible destination";
    InvalidMsgUnspecified = 95, "INVALID_MSG_UNSPECIFIED", "Invalid message unspecified";
    MandatoryIeMissing = 96, "MANDATORY_IE_MISSING", "Mandatory information element is missing";
    MessageTypeNonexist = 97, "MESSAGE_TYPE_NONEXIST", "Message type nonexist.";
    WrongMessage = 98, "WRONG_MESSAGE", "Wrong message";
    IeNonexist = 99, "IE_NONEXIST", "Info. element nonexist or not implemented";
    InvalidIeContents = 100, "INVALID_IE_CONTENTS", "Invalid information element contents";
    WrongCallState = 101, "WRONG_CALL_STATE", "Message not compatible with call state";
    RecoveryOnTimerExpire = 102, "RECOVERY_ON_TIMER_EXPIRE", "Recover on timer expiry";
    MandatoryIeLengthError = 103, "MANDATORY_IE_LENGTH_ERROR", "Mandatory IE length error";
    ProtocolError = 111, "PROTOCOL_ERROR", "Protocol error, unspecified";
    Interworking = 127, "INTERWORKING", "Interworking, unspecified";
}

impl fmt::Display for HangupCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl<'a> FromValue<'a> for HangupCause {
    fn from_value(value: &'a str) -> Option<Self> {
        HangupCause::parse(value)
    }
}

/// The `Cause` of a `SoftHangupRequest`: not a Q.850 cause, despite the name, but the
/// `AST_SOFTHANGUP_*` flags of the request (`ast_softhangup`), e.g. 16 when the dialplan
/// ended, 32 for `channel request hangup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SoftHangupFlags(pub u32);

impl SoftHangupFlags {
    /// `AST_SOFTHANGUP_DEV`: requested by the device or another internal reason.
    pub const DEV: SoftHangupFlags = SoftHangupFlags(1 << 0);
    /// `AST_SOFTHANGUP_ASYNCGOTO`: to send the channel elsewhere, not to hang it up.
    pub const ASYNC_GOTO: SoftHangupFlags = SoftHangupFlags(1 << 1);
    /// `AST_SOFTHANGUP_SHUTDOWN`: Asterisk is shutting down.
    pub const SHUTDOWN: SoftHangupFlags = SoftHangupFlags(1 << 2);
    /// `AST_SOFTHANGUP_TIMEOUT`: the channel's absolute timeout expired.
    pub const TIMEOUT: SoftHangupFlags = SoftHangupFlags(1 << 3);
    /// `AST_SOFTHANGUP_APPUNLOAD`: an application or driver unloaded, or the dialplan ended.
    pub const APP_UNLOAD: SoftHangupFlags = SoftHangupFlags(1 << 4);
    /// `AST_SOFTHANGUP_EXPLICIT`: requested by another party (`channel request hangup`).
    pub const EXPLICIT: SoftHangupFlags = SoftHangupFlags(1 << 5);
    /// `AST_SOFTHANGUP_HANGUP_EXEC`: the channel runs its hangup dialplan.
    pub const HANGUP_EXEC: SoftHangupFlags = SoftHangupFlags(1 << 7);

    /// The known flags with their `AST_SOFTHANGUP_*` names.
    const NAMES: [(SoftHangupFlags, &'static str); 7] = [
        (SoftHangupFlags::DEV, "DEV"),
        (SoftHangupFlags::ASYNC_GOTO, "ASYNCGOTO"),
        (SoftHangupFlags::SHUTDOWN, "SHUTDOWN"),
        (SoftHangupFlags::TIMEOUT, "TIMEOUT"),
        (SoftHangupFlags::APP_UNLOAD, "APPUNLOAD"),
        (SoftHangupFlags::EXPLICIT, "EXPLICIT"),
        (SoftHangupFlags::HANGUP_EXEC, "HANGUP_EXEC"),
    ];

    /// The flags as a number.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: SoftHangupFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The `AST_SOFTHANGUP_*` names of the known flags set, lowest first.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .into_iter()
            .filter(move |&(flag, _)| self.contains(flag))
            .map(|(_, name)| name)
    }

    /// Parses a header value (decimal; Asterisk writes the C `int`, so all flags are
    /// `-1`); `None` when it is not a number.
    pub fn parse(value: &str) -> Option<Self> {
        let value: i64 = value.trim().parse().ok()?;
        // Two's complement, as the C int holds it.
        Some(SoftHangupFlags(value as u32))
    }
}

/// The names of the known flags joined with `|`, then any unknown bits in hex
/// (`EXPLICIT`, `DEV|0x100`); `0` when none is set.
impl fmt::Display for SoftHangupFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known = Self::NAMES.iter().fold(0, |bits, (flag, _)| bits | flag.0);
        let mut first = true;
        let mut separator = |f: &mut fmt::Formatter<'_>| {
            let result = if first { Ok(()) } else { f.write_str("|") };
            first = false;
            result
        };
        for name in self.names() {
            separator(f)?;
            f.write_str(name)?;
        }
        if self.0 & !known != 0 {
            separator(f)?;
            write!(f, "{:#x}", self.0 & !known)?;
        }
        if self.0 == 0 {
            f.write_str("0")?;
        }
        Ok(())
    }
}

impl std::ops::BitOr for SoftHangupFlags {
    type Output = SoftHangupFlags;

    fn bitor(self, other: SoftHangupFlags) -> SoftHangupFlags {
        SoftHangupFlags(self.0 | other.0)
    }
}

impl<'a> FromValue<'a> for SoftHangupFlags {
    fn from_value(value: &'a str) -> Option<Self> {
        SoftHangupFlags::parse(value)
    }
}

named! {
    /// The `DialStatus` of `DialEnd` (`ANSWER`, `BUSY`, ...) and `DialState` (`RINGING`, ...).
    DialStatus {
        Answer = "ANSWER",
        Busy = "BUSY",
        NoAnswer = "NOANSWER",
        Cancel = "CANCEL",
        Congestion = "CONGESTION",
        ChanUnavail = "CHANUNAVAIL",
        DontCall = "DONTCALL",
        Torture = "TORTURE",
        InvalidArgs = "INVALIDARGS",
        Abort = "ABORT",
        Continue = "CONTINUE",
        Goto = "GOTO",
        Ringing = "RINGING",
        Proceeding = "PROCEEDING",
        Progress = "PROGRESS",
    }
}

named! {
    /// The `PeerStatus` of a `PeerStatus` event (PJSIP sends `Reachable`/`Unreachable`).
    PeerState {
        Unknown = "Unknown",
        Registered = "Registered",
        Unregistered = "Unregistered",
        Rejected = "Rejected",
        Lagged = "Lagged",
        Reachable = "Reachable",
        Unreachable = "Unreachable",
    }
}

named! {
    /// The `ContactStatus` of a `ContactStatus` event (PJSIP's contact status labels).
    ContactState {
        Unknown = "Unknown",
        Reachable = "Reachable",
        Unreachable = "Unreachable",
        NonQualified = "NonQualified",
        Unqualified = "Unqualified",
        Removed = "Removed",
        Updated = "Updated",
        Created = "Created",
    }
}

named! {
    /// The `Direction` of a DTMF event.
    DtmfDirection {
        Received = "Received",
        Sent = "Sent",
    }
}

named! {
    /// How a queue member was added (`Membership`).
    Membership {
        Static = "static",
        Dynamic = "dynamic",
        Realtime = "realtime",
    }
}

named! {
    /// Who ended a queue call (`Reason` of `AgentComplete`).
    CompleteReason {
        Caller = "caller",
        Agent = "agent",
        Transfer = "transfer",
    }
}

/// A device state (`AST_DEVICE_*`): by name in `DeviceStateChange.State`
/// (`NOT_INUSE`), by code in `QueueMemberStatus.Status` (`1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceState<'a> {
    /// `0` `UNKNOWN`: valid, but the channel did not know its state.
    Unknown,
    /// `1` `NOT_INUSE`: not used.
    NotInUse,
    /// `2` `INUSE`: in use.
    InUse,
    /// `3` `BUSY`: busy.
    Busy,
    /// `4` `INVALID`: not known to Asterisk.
    Invalid,
    /// `5` `UNAVAILABLE`: unavailable (not registered).
    Unavailable,
    /// `6` `RINGING`: ringing.
    Ringing,
    /// `7` `RINGINUSE`: ringing and in use.
    RingInUse,
    /// `8` `ONHOLD`: on hold.
    OnHold,
    /// A name or code this crate does not know, kept as sent.
    Other(&'a str),
}

impl<'a> DeviceState<'a> {
    /// The known states in code order, with their names and `ast_devstate_str` texts.
    const TABLE: [(DeviceState<'static>, &'static str, &'static str); 9] = [
        (DeviceState::Unknown, "UNKNOWN", "Unknown"),
        (DeviceState::NotInUse, "NOT_INUSE", "Not in use"),
        (DeviceState::InUse, "INUSE", "In use"),
        (DeviceState::Busy, "BUSY", "Busy"),
        (DeviceState::Invalid, "INVALID", "Invalid"),
        (DeviceState::Unavailable, "UNAVAILABLE", "Unavailable"),
        (DeviceState::Ringing, "RINGING", "Ringing"),
        (DeviceState::RingInUse, "RINGINUSE", "Ring+Inuse"),
        (DeviceState::OnHold, "ONHOLD", "On Hold"),
    ];

    /// Parses a name (`NOT_INUSE`, ASCII case ignored) or a decimal code (`1`); never
    /// fails: anything else is `Other`.
    pub fn parse(value: &'a str) -> Self {
        let trimmed = value.trim();
        let known = match trimmed.parse::<usize>() {
            Ok(code) => Self::TABLE.get(code),
            Err(_) => Self::TABLE
                .iter()
                .find(|(_, name, _)| trimmed.eq_ignore_ascii_case(name)),
        };
        known.map_or(DeviceState::Other(value), |&(state, _, _)| state)
    }

    /// The `AST_DEVICE_*` code; `None` for `Other`.
    pub fn code(&self) -> Option<u8> {
        Self::TABLE
            .iter()
            .position(|(state, _, _)| state == self)
            .map(|code| code as u8)
    }

    /// The name (`NOT_INUSE`; also the `Display`), or the value kept in `Other`.
    pub fn as_str(&self) -> &'a str {
        match self {
            DeviceState::Other(value) => value,
            known => known.entry().map_or("", |(_, name, _)| name),
        }
    }

    /// Asterisk's description (`Not in use`, as `ast_devstate_str`); `None` for `Other`.
    pub fn description(&self) -> Option<&'static str> {
        self.entry().map(|(_, _, text)| text)
    }

    fn entry(&self) -> Option<(DeviceState<'static>, &'static str, &'static str)> {
        Self::TABLE
            .iter()
            .find(|(state, _, _)| state == self)
            .copied()
    }
}

impl fmt::Display for DeviceState<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'a> FromValue<'a> for DeviceState<'a> {
    fn from_value(value: &'a str) -> Option<Self> {
        Some(DeviceState::parse(value))
    }
}

// ---------------------------------------------------------------------------------
// Snapshots

/// Declares a snapshot: a group of fields that share a key prefix.
macro_rules! snapshot {
    (
        $(#[$doc:meta])*
        $name:ident { $( $method:ident: $type:ty = $key:literal, $mdoc:literal; )* }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq)]
        pub struct $name<'a> {
            message: &'a Message,
            prefix: &'a str,
        }

        impl<'a> $name<'a> {
            /// The snapshot of `message` whose keys start with `prefix` (`""` for none).
            pub fn new(message: &'a Message, prefix: &'a str) -> Self {
                $name { message, prefix }
            }

            /// The prefix of its keys.
            pub fn prefix(&self) -> &'a str {
                self.prefix
            }

            /// The message it is read from.
            pub fn message(&self) -> &'a Message {
                self.message
            }

            $(
                #[doc = concat!("`<prefix>", $key, "`: ", $mdoc, ".")]
                pub fn $method(&self) -> Option<$type> {
                    FromValue::from_value(prefixed(self.message, self.prefix, $key)?)
                }
            )*
        }

        impl fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("prefix", &self.prefix)
                    $( .field(stringify!($method), &self.$method()) )*
                    .finish()
            }
        }
    };
}

snapshot! {
    /// A channel's fields in an event (`ast_manager_build_channel_state_string_prefix`).
    ChannelSnapshot {
        channel: &'a str = "Channel", "the channel's name";
        channel_state: ChannelState = "ChannelState", "its state";
        channel_state_desc: &'a str = "ChannelStateDesc", "its state as text";
        caller_id_num: &'a str = "CallerIDNum", "caller ID number (`<unknown>` when empty)";
        caller_id_name: &'a str = "CallerIDName",
            "caller ID name, C-escaped (`<unknown>` when empty)";
        connected_line_num: &'a str = "ConnectedLineNum",
            "connected line number (`<unknown>` when empty)";
        connected_line_name: &'a str = "ConnectedLineName",
            "connected line name, C-escaped (`<unknown>` when empty)";
        language: &'a str = "Language", "the channel's language";
        account_code: &'a str = "AccountCode", "its account code";
        context: &'a str = "Context", "dialplan context";
        exten: &'a str = "Exten", "dialplan extension";
        priority: i32 = "Priority", "dialplan priority";
        uniqueid: &'a str = "Uniqueid", "the channel's unique ID";
        linkedid: &'a str = "Linkedid", "the unique ID of the call's oldest channel";
        tenantid: &'a str = "Tenantid", "the tenant ID, when set";
    }
}

impl ChannelSnapshot<'_> {
    /// Whether the event carries this snapshot (its `<prefix>Channel` or
    /// `<prefix>Uniqueid` header); e.g. a `DialBegin` of an Originate has no caller.
    pub fn is_present(&self) -> bool {
        self.channel().is_some() || self.uniqueid().is_some()
    }
}

snapshot! {
    /// A bridge's fields in an event (`ast_manager_build_bridge_state_string_prefix`).
    BridgeSnapshot {
        bridge_uniqueid: &'a str = "BridgeUniqueid", "the bridge's unique ID";
        bridge_type: &'a str = "BridgeType", "its type (`basic`, `holding`, ...)";
        bridge_technology: &'a str = "BridgeTechnology",
            "its mixing technology (`simple_bridge`, ...)";
        bridge_creator: &'a str = "BridgeCreator", "what created it (`<unknown>` when not set)";
        bridge_name: &'a str = "BridgeName", "its name (`<unknown>` when not set)";
        bridge_num_channels: u32 = "BridgeNumChannels", "channels in it";
        bridge_video_source_mode: &'a str = "BridgeVideoSourceMode",
            "how its video source is chosen";
        bridge_video_source: &'a str = "BridgeVideoSource",
            "the video source channel, when there is one";
    }
}

impl BridgeSnapshot<'_> {
    /// Whether the event carries this snapshot (its `<prefix>BridgeUniqueid` header).
    pub fn is_present(&self) -> bool {
        self.bridge_uniqueid().is_some()
    }
}

// ---------------------------------------------------------------------------------
// Views

/// Declares a view: a struct over a message with a method per snapshot, sub-view and
/// field, and a `Debug` that shows them all.
macro_rules! record {
    (
        $(#[$doc:meta])*
        $name:ident {
            $( @channel $channel:ident = $channel_prefix:literal, $channel_doc:literal; )*
            $( @bridge $bridge:ident = $bridge_prefix:literal, $bridge_doc:literal; )*
            $( @view $sub:ident: $sub_type:ident, $sub_doc:literal; )*
            $( $method:ident: $type:ty = $key:literal, $mdoc:literal; )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq)]
        pub struct $name<'a> {
            message: &'a Message,
        }

        impl<'a> $name<'a> {
            /// Reads `message` as this view, whatever its name.
            pub fn new(message: &'a Message) -> Self {
                $name { message }
            }

            /// The message viewed.
            pub fn message(&self) -> &'a Message {
                self.message
            }

            $(
                #[doc = $channel_doc]
                pub fn $channel(&self) -> ChannelSnapshot<'a> {
                    ChannelSnapshot::new(self.message, $channel_prefix)
                }
            )*
            $(
                #[doc = $bridge_doc]
                pub fn $bridge(&self) -> BridgeSnapshot<'a> {
                    BridgeSnapshot::new(self.message, $bridge_prefix)
                }
            )*
            $(
                #[doc = $sub_doc]
                pub fn $sub(&self) -> $sub_type<'a> {
                    $sub_type::new(self.message)
                }
            )*
            $(
                #[doc = concat!("`", $key, "`: ", $mdoc, ".")]
                pub fn $method(&self) -> Option<$type> {
                    FromValue::from_value(self.message.get($key)?)
                }
            )*
        }

        impl fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    $( .field(stringify!($channel), &self.$channel()) )*
                    $( .field(stringify!($bridge), &self.$bridge()) )*
                    $( .field(stringify!($sub), &self.$sub()) )*
                    $( .field(stringify!($method), &self.$method()) )*
                    .finish()
            }
        }
    };
}

/// Declares the event views and [`TypedEvent`] over them.
macro_rules! events {
    ($( $(#[$doc:meta])* $name:ident { $($body:tt)* } )*) => {
        $(
            record! { $(#[$doc])* $name { $($body)* } }

            impl<'a> $name<'a> {
                /// The event's name (`Event:` value), matched case-insensitively.
                pub const EVENT: &'static str = stringify!($name);

                /// The view of `message` if it is this event.
                pub fn of(message: &'a Message) -> Option<Self> {
                    message
                        .event_name()
                        .is_some_and(|name| name.eq_ignore_ascii_case(Self::EVENT))
                        .then_some($name { message })
                }
            }
        )*

        /// A message seen through the view of its event ([`TypedEvent::of`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum TypedEvent<'a> {
            $( #[doc = concat!("A `", stringify!($name), "` event.")] $name($name<'a>), )*
            /// Any other message: another event, a response.
            Other(&'a Message),
        }

        impl<'a> TypedEvent<'a> {
            /// The view of `message`, chosen by its event name (ASCII case ignored).
            pub fn of(message: &'a Message) -> Self {
                if let Some(name) = message.event_name() {
                    $(
                        if name.eq_ignore_ascii_case(stringify!($name)) {
                            return TypedEvent::$name($name { message });
                        }
                    )*
                }
                TypedEvent::Other(message)
            }

            /// The message viewed.
            pub fn message(&self) -> &'a Message {
                match self {
                    $( TypedEvent::$name(view) => view.message, )*
                    TypedEvent::Other(message) => message,
                }
            }
        }
    };
}

record! {
    /// A queue member's fields, shared by the `QueueMember*` events.
    QueueMember {
        queue: &'a str = "Queue", "the queue's name";
        member_name: &'a str = "MemberName", "the member's name";
        interface: &'a str = "Interface", "the channel it is rung on";
        state_interface: &'a str = "StateInterface", "the device whose state it follows";
        membership: Membership<'a> = "Membership", "how it was added";
        penalty: i32 = "Penalty", "its penalty";
        calls_taken: u32 = "CallsTaken", "calls it has taken";
        last_call: u64 = "LastCall", "when its last call ended (epoch seconds)";
        last_pause: u64 = "LastPause", "when it last paused (epoch seconds)";
        login_time: u64 = "LoginTime", "when it was added (epoch seconds)";
        in_call: bool = "InCall", "whether it is on a queue call";
        status: DeviceState<'a> = "Status", "its device state (a numeric `AST_DEVICE_*` code)";
        paused: bool = "Paused", "whether it is paused";
        paused_reason: &'a str = "PausedReason", "why it is paused";
        ringinuse: bool = "Ringinuse", "whether it is rung while in use";
        wrapuptime: u32 = "Wrapuptime", "its wrap-up time (seconds)";
    }
}

events! {
    /// `Newchannel`: a channel was created.
    Newchannel {
        @channel channel = "", "The new channel.";
    }
    /// `Newstate`: a channel's state changed.
    Newstate {
        @channel channel = "", "The channel, in its new state.";
    }
    /// `Hangup`: a channel was hung up.
    Hangup {
        @channel channel = "", "The channel hung up.";
        cause: HangupCause = "Cause", "why it was hung up";
        cause_txt: &'a str = "Cause-txt", "the cause as text";
        tech_cause: i32 = "TechCause", "a technology-specific cause, for off-nominal ends";
    }
    /// `HangupRequest`: a hangup was requested (e.g. by the `Hangup` action).
    HangupRequest {
        @channel channel = "", "The channel to hang up.";
        cause: HangupCause = "Cause", "the cause requested";
        tech_cause: i32 = "TechCause", "a technology-specific cause";
    }
    /// `SoftHangupRequest`: a soft hangup was requested.
    SoftHangupRequest {
        @channel channel = "", "The channel to hang up.";
        cause: SoftHangupFlags = "Cause",
            "the request's `AST_SOFTHANGUP_*` flags (not a Q.850 cause)";
        tech_cause: i32 = "TechCause", "a technology-specific cause";
    }
    /// `DialBegin`: a dial began.
    DialBegin {
        @channel channel = "", "The caller (absent when an Originate dials).";
        @channel dest = "Dest", "The channel dialed.";
        dial_string: &'a str = "DialString", "what was dialed";
    }
    /// `DialState`: a dial's progress changed (ringing, proceeding, ...).
    DialState {
        @channel channel = "", "The caller (absent when an Originate dials).";
        @channel dest = "Dest", "The channel dialed.";
        dial_status: DialStatus<'a> = "DialStatus", "the new state";
        forward: &'a str = "Forward", "where the call was forwarded, if it was";
    }
    /// `DialEnd`: a dial ended.
    DialEnd {
        @channel channel = "", "The caller (absent when an Originate dials).";
        @channel dest = "Dest", "The channel dialed.";
        dial_status: DialStatus<'a> = "DialStatus", "how it ended";
        forward: &'a str = "Forward", "where the call was forwarded, if it was";
    }
    /// `OriginateResponse`: an async Originate ended (PROTOCOL-NOTES 26).
    OriginateResponse {
        response: &'a str = "Response", "`Success` or `Failure`";
        channel: &'a str = "Channel", "the channel (or the dial string, on failure)";
        context: &'a str = "Context", "the context, for an Originate to an extension";
        exten: &'a str = "Exten", "the extension, for an Originate to an extension";
        application: &'a str = "Application", "the application, for an Originate to one";
        data: &'a str = "Data", "the application's arguments";
        reason: OriginateReason = "Reason", "the outcome";
        uniqueid: &'a str = "Uniqueid", "the channel's unique ID (`<unknown>` on failure)";
        caller_id_num: &'a str = "CallerIDNum", "the caller ID number given";
        caller_id_name: &'a str = "CallerIDName", "the caller ID name given";
    }
    /// `BridgeCreate`: a bridge was created.
    BridgeCreate {
        @bridge bridge = "", "The new bridge.";
    }
    /// `BridgeEnter`: a channel entered a bridge.
    BridgeEnter {
        @channel channel = "", "The channel that entered.";
        @bridge bridge = "", "The bridge.";
        swap_uniqueid: &'a str = "SwapUniqueid", "the channel it replaced, if any";
    }
    /// `BridgeLeave`: a channel left a bridge.
    BridgeLeave {
        @channel channel = "", "The channel that left.";
        @bridge bridge = "", "The bridge.";
    }
    /// `BridgeDestroy`: a bridge was destroyed.
    BridgeDestroy {
        @bridge bridge = "", "The bridge.";
    }
    /// `VarSet`: a variable was set (`Channel: none` for a global one).
    VarSet {
        @channel channel = "", "The channel.";
        variable: &'a str = "Variable", "the variable's name";
        value: &'a str = "Value", "its new value, C-escaped";
    }
    /// `UserEvent`: a user-defined event (the UserEvent application or action).
    UserEvent {
        @channel channel = "", "The channel of the UserEvent application (absent for the action).";
        user_event: &'a str = "UserEvent", "the user event's name";
    }
    /// `Hold`: a channel was put on hold.
    Hold {
        @channel channel = "", "The channel put on hold.";
        music_class: &'a str = "MusicClass", "the music on hold class suggested";
    }
    /// `Unhold`: a channel was taken off hold.
    Unhold {
        @channel channel = "", "The channel taken off hold.";
    }
    /// `DTMFBegin`: a DTMF digit started.
    DTMFBegin {
        @channel channel = "", "The channel.";
        digit: &'a str = "Digit", "the digit";
        direction: DtmfDirection<'a> = "Direction", "`Received` or `Sent`";
    }
    /// `DTMFEnd`: a DTMF digit ended.
    DTMFEnd {
        @channel channel = "", "The channel.";
        digit: &'a str = "Digit", "the digit";
        duration_ms: u64 = "DurationMs", "how long it lasted (ms)";
        direction: DtmfDirection<'a> = "Direction", "`Received` or `Sent`";
    }
    /// `NewCallerid`: a channel's caller ID changed.
    NewCallerid {
        @channel channel = "", "The channel, with its new caller ID.";
        cid_calling_pres: &'a str = "CID-CallingPres",
            "the presentation: code and text, as `0 (Presentation Allowed, Not Screened)`";
    }
    /// `NewConnectedLine`: a channel's connected line changed.
    NewConnectedLine {
        @channel channel = "", "The channel, with its new connected line.";
    }
    /// `Rename`: a channel's name changed.
    Rename {
        channel: &'a str = "Channel", "the old name";
        new_name: &'a str = "Newname", "the new name";
        uniqueid: &'a str = "Uniqueid", "the channel's unique ID";
    }
    /// `LocalBridge`: the two halves of a Local channel were joined.
    LocalBridge {
        @channel local_one = "LocalOne", "The `;1` half.";
        @channel local_two = "LocalTwo", "The `;2` half.";
        context: &'a str = "Context", "the Local channel's context";
        exten: &'a str = "Exten", "the Local channel's extension";
        local_optimization: bool = "LocalOptimization", "whether it may optimize itself away";
    }
    /// `DeviceStateChange`: a device's state changed (needs `res_manager_devicestate`).
    DeviceStateChange {
        device: &'a str = "Device", "the device";
        state: DeviceState<'a> = "State", "its new state";
    }
    /// `ExtensionStatus`: a hint's state changed.
    ExtensionStatus {
        exten: &'a str = "Exten", "the extension";
        context: &'a str = "Context", "its context";
        hint: &'a str = "Hint", "the hint";
        status: ExtensionState = "Status", "the new state";
        status_text: &'a str = "StatusText", "the new state as text";
    }
    /// `ContactStatus`: a PJSIP contact's state changed.
    ContactStatus {
        uri: &'a str = "URI", "the contact's URI";
        contact_status: ContactState<'a> = "ContactStatus", "its new state";
        aor: &'a str = "AOR", "its AOR";
        endpoint_name: &'a str = "EndpointName", "its endpoint";
        roundtrip_usec: u64 = "RoundtripUsec", "the round trip of the last qualify (µs)";
    }
    /// `PeerStatus`: a peer's (endpoint's) state changed.
    PeerStatus {
        channel_type: &'a str = "ChannelType", "the channel technology (`PJSIP`)";
        peer: &'a str = "Peer", "the peer, as `PJSIP/<endpoint>`";
        peer_status: PeerState<'a> = "PeerStatus", "its new state";
        cause: &'a str = "Cause", "why it changed";
        address: &'a str = "Address", "its new address";
        port: u16 = "Port", "its new port";
        time: &'a str = "Time", "the time to reach it";
    }
    /// `QueueCallerJoin`: a caller joined a queue.
    QueueCallerJoin {
        @channel channel = "", "The caller.";
        queue: &'a str = "Queue", "the queue";
        position: u32 = "Position", "its position in the queue";
        count: u32 = "Count", "callers in the queue";
    }
    /// `QueueCallerLeave`: a caller left a queue.
    QueueCallerLeave {
        @channel channel = "", "The caller.";
        queue: &'a str = "Queue", "the queue";
        position: u32 = "Position", "the position it left";
        count: u32 = "Count", "callers left in the queue";
    }
    /// `QueueCallerAbandon`: a caller hung up while waiting in a queue.
    QueueCallerAbandon {
        @channel channel = "", "The caller.";
        queue: &'a str = "Queue", "the queue";
        position: u32 = "Position", "its position when it left";
        original_position: u32 = "OriginalPosition", "its position when it joined";
        hold_time: u64 = "HoldTime", "how long it waited (seconds)";
    }
    /// `AgentCalled`: a queue member is being rung.
    AgentCalled {
        @channel channel = "", "The caller.";
        @channel dest = "Dest", "The member's channel.";
        queue: &'a str = "Queue", "the queue";
        member_name: &'a str = "MemberName", "the member's name";
        interface: &'a str = "Interface", "the member's interface";
    }
    /// `AgentConnect`: a queue member answered.
    AgentConnect {
        @channel channel = "", "The caller.";
        @channel dest = "Dest", "The member's channel.";
        queue: &'a str = "Queue", "the queue";
        member_name: &'a str = "MemberName", "the member's name";
        interface: &'a str = "Interface", "the member's interface";
        ring_time: u64 = "RingTime", "how long the member rang (seconds)";
        hold_time: u64 = "HoldTime", "how long the caller waited (seconds)";
    }
    /// `AgentComplete`: a queue call between a caller and a member ended.
    AgentComplete {
        @channel channel = "", "The caller.";
        @channel dest = "Dest", "The member's channel.";
        queue: &'a str = "Queue", "the queue";
        member_name: &'a str = "MemberName", "the member's name";
        interface: &'a str = "Interface", "the member's interface";
        hold_time: u64 = "HoldTime", "how long the caller waited (seconds)";
        talk_time: u64 = "TalkTime", "how long they talked (seconds)";
        reason: CompleteReason<'a> = "Reason", "who ended it";
    }
    /// `AgentRingNoAnswer`: a queue member did not answer.
    AgentRingNoAnswer {
        @channel channel = "", "The caller.";
        @channel dest = "Dest", "The member's channel.";
        queue: &'a str = "Queue", "the queue";
        member_name: &'a str = "MemberName", "the member's name";
        interface: &'a str = "Interface", "the member's interface";
        ring_time: u64 = "RingTime", "how long it rang (ms)";
    }
    /// `AgentDump`: a queue member hung up on the caller before being connected.
    AgentDump {
        @channel channel = "", "The caller.";
        @channel dest = "Dest", "The member's channel.";
        queue: &'a str = "Queue", "the queue";
        member_name: &'a str = "MemberName", "the member's name";
        interface: &'a str = "Interface", "the member's interface";
    }
    /// `QueueMemberStatus`: a queue member's state changed.
    QueueMemberStatus {
        @view member: QueueMember, "The member, in its new state.";
    }
    /// `QueueMemberAdded`: a member was added to a queue.
    QueueMemberAdded {
        @view member: QueueMember, "The member added.";
    }
    /// `QueueMemberRemoved`: a member was removed from a queue.
    QueueMemberRemoved {
        @view member: QueueMember, "The member removed.";
    }
    /// `QueueMemberPause`: a queue member was paused or unpaused.
    QueueMemberPause {
        @view member: QueueMember, "The member (`Paused` and `PausedReason` say how).";
    }
    /// `FullyBooted`: Asterisk is up (also sent to each new session).
    FullyBooted {
        status: &'a str = "Status", "`Fully Booted`";
        uptime: u64 = "Uptime", "seconds since Asterisk started";
        last_reload: u64 = "LastReload", "seconds since the last reload";
    }
    /// `Shutdown`: Asterisk is shutting down.
    Shutdown {
        shutdown: &'a str = "Shutdown", "`Cleanly` or `Uncleanly`";
        restart: bool = "Restart", "whether it will restart";
    }
    /// `Reload`: a module (or `All`) was reloaded.
    Reload {
        module: &'a str = "Module", "the module, or `All`";
        status: ReloadStatus = "Status", "the outcome";
    }
}

impl OriginateResponse<'_> {
    /// Whether the call was placed (`Response: Success`); `None` when neither
    /// `Success` nor `Failure`.
    pub fn success(&self) -> Option<bool> {
        let response = self.response()?;
        if response.eq_ignore_ascii_case("Success") {
            Some(true)
        } else if response.eq_ignore_ascii_case("Failure") {
            Some(false)
        } else {
            None
        }
    }

    /// The ActionID of the Originate (possibly another session's: PROTOCOL-NOTES 17).
    pub fn action_id(&self) -> Option<&str> {
        self.message.action_id()
    }
}

impl<'a> UserEvent<'a> {
    /// The first value of the user header `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.message.get(key)
    }
}

impl NewCallerid<'_> {
    /// The numeric presentation at the start of `CID-CallingPres`.
    pub fn calling_pres(&self) -> Option<i32> {
        let value = self.cid_calling_pres()?.trim_start();
        let end = value
            .char_indices()
            .find(|&(at, c)| !(c.is_ascii_digit() || (at == 0 && c == '-')))
            .map_or(value.len(), |(at, _)| at);
        value[..end].parse().ok()
    }
}

impl Shutdown<'_> {
    /// Whether the shutdown is clean (`Cleanly`) or not (`Uncleanly`).
    pub fn clean(&self) -> Option<bool> {
        let value = self.shutdown()?;
        if value.eq_ignore_ascii_case("Cleanly") {
            Some(true)
        } else if value.eq_ignore_ascii_case("Uncleanly") {
            Some(false)
        } else {
            None
        }
    }
}

impl<'a> TypedEvent<'a> {
    /// The event name as sent (empty for a message that is not an event).
    pub fn name(&self) -> &'a str {
        self.message().event_name().unwrap_or_default()
    }

    /// The channel snapshot whose keys start with `prefix` (`""`, `Dest`, `LocalOne`, ...).
    pub fn channel_snapshot(&self, prefix: &'a str) -> ChannelSnapshot<'a> {
        ChannelSnapshot::new(self.message(), prefix)
    }

    /// The bridge snapshot whose keys start with `prefix` (`""` for the usual one).
    pub fn bridge_snapshot(&self, prefix: &'a str) -> BridgeSnapshot<'a> {
        BridgeSnapshot::new(self.message(), prefix)
    }
}

impl Event {
    /// The event seen through its typed view.
    pub fn typed(&self) -> TypedEvent<'_> {
        TypedEvent::of(&self.message)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // an Event needs an instant
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::budget::MemoryBudget;
    use crate::events::Source;
    use crate::message::tests::parse_one as one;

    #[test]
    fn unknown_codes_are_kept() {
        assert_eq!(HangupCause::from_code(999), HangupCause::Unknown(999));
        assert_eq!(HangupCause::Unknown(999).code(), 999);
        assert_eq!(HangupCause::Unknown(999).to_string(), "Unknown");
        assert_eq!(HangupCause::Unknown(999).symbol(), None);
        assert_eq!(HangupCause::parse("-5"), Some(HangupCause::Unknown(-5)));
        assert_eq!(
            OriginateReason::parse("42"),
            Some(OriginateReason::Unknown(42))
        );
        assert_eq!(OriginateReason::Unknown(42).code(), 42);
        assert_eq!(ChannelState::parse("10"), Some(ChannelState::Unknown(10)));
        assert_eq!(ReloadStatus::parse("7"), Some(ReloadStatus::Unknown(7)));
        assert_eq!(ExtensionState::parse("3"), Some(ExtensionState::Unknown(3)));
        assert_eq!(DialStatus::parse("WEIRD"), DialStatus::Other("WEIRD"));
        assert_eq!(DialStatus::Other("WEIRD").as_str(), "WEIRD");
        assert_eq!(
            DeviceState::parse("SPARKLING"),
            DeviceState::Other("SPARKLING")
        );
        assert_eq!(DeviceState::parse("9"), DeviceState::Other("9"));
        assert_eq!(DeviceState::Other("9").code(), None);
        assert_eq!(PeerState::parse("Sleepy"), PeerState::Other("Sleepy"));
        assert_eq!(ContactState::parse("Sleepy").to_string(), "Sleepy");
        // Not numbers at all: no value, no panic.
        assert_eq!(HangupCause::parse("busy"), None);
        assert_eq!(OriginateReason::parse(""), None);
        assert_eq!(ChannelState::parse("99999999999999999999"), None);
    }

    #[test]
    fn codes_round_trip_with_asterisk_text() {
        for code in -3..200 {
            assert_eq!(HangupCause::from_code(code).code(), code);
            assert_eq!(OriginateReason::from_code(code).code(), code);
            assert_eq!(ExtensionState::from_code(code).code(), code);
        }
        for code in 0..70000 {
            assert_eq!(ChannelState::from_code(code).code(), code);
        }
        assert_eq!(HangupCause::from_code(16), HangupCause::NormalClearing);
        assert_eq!(HangupCause::from_code(17).name(), "User busy");
        assert_eq!(
            HangupCause::from_code(19).name(),
            "User alerting, no answer"
        );
        assert_eq!(HangupCause::from_code(21).symbol(), Some("CALL_REJECTED"));
        assert_eq!(
            HangupCause::from_code(34).to_string(),
            "Circuit/channel congestion"
        );
        assert_eq!(HangupCause::from_code(0).to_string(), "Unknown");
        assert_eq!(ChannelState::from_code(6).name(), "Up");
        assert_eq!(ChannelState::from_code(65536), ChannelState::Mute);
        assert_eq!(OriginateReason::from_code(5), OriginateReason::Busy);
        assert_eq!(OriginateReason::from_code(8), OriginateReason::Congestion);
        assert_eq!(DialStatus::parse("noanswer"), DialStatus::NoAnswer);
        assert_eq!(DialStatus::ChanUnavail.to_string(), "CHANUNAVAIL");
        assert_eq!(DeviceState::parse("NOT_INUSE"), DeviceState::NotInUse);
        assert_eq!(DeviceState::parse("7"), DeviceState::RingInUse);
        assert_eq!(DeviceState::OnHold.code(), Some(8));
        assert_eq!(DeviceState::InUse.as_str(), "INUSE");
        assert_eq!(DeviceState::NotInUse.description(), Some("Not in use"));
        assert_eq!(ExtensionState::from_code(9).name(), "InUse&Ringing");
    }

    #[test]
    fn soft_hangup_flags() {
        let explicit = SoftHangupFlags::parse("32").unwrap();
        assert_eq!(explicit, SoftHangupFlags::EXPLICIT);
        assert_eq!(explicit.to_string(), "EXPLICIT");
        let mixed = SoftHangupFlags(0x111);
        assert!(mixed.contains(SoftHangupFlags::DEV | SoftHangupFlags::APP_UNLOAD));
        assert_eq!(mixed.to_string(), "DEV|APPUNLOAD|0x100");
        assert_eq!(
            SoftHangupFlags::parse("-1"),
            Some(SoftHangupFlags(u32::MAX))
        );
        assert_eq!(SoftHangupFlags(0).to_string(), "0");
        assert_eq!(SoftHangupFlags(0x100).to_string(), "0x100");
        assert_eq!(SoftHangupFlags::parse("x"), None);
    }

    #[test]
    fn prefixed_snapshots_and_missing_fields() {
        let message = one(
            "Event: DialEnd\r\nDestChannel: Local/busy@test-00000007;1\r\n\
             DESTCHANNELSTATE: 5\r\nDestPriority: x\r\nDialStatus: BUSY\r\n\r\n",
        );
        let TypedEvent::DialEnd(dial) = TypedEvent::of(&message) else {
            panic!("not a DialEnd");
        };
        assert!(!dial.channel().is_present(), "an Originate has no caller");
        assert!(dial.dest().is_present());
        assert_eq!(dial.dest().channel(), Some("Local/busy@test-00000007;1"));
        assert_eq!(dial.dest().channel_state(), Some(ChannelState::Ringing));
        assert_eq!(dial.dest().priority(), None, "not a number");
        assert_eq!(dial.dest().uniqueid(), None);
        assert_eq!(dial.dial_status(), Some(DialStatus::Busy));
        assert_eq!(dial.forward(), None);
        let dest = TypedEvent::of(&message).channel_snapshot("dest");
        assert_eq!(dest.channel(), dial.dest().channel());
    }

    #[test]
    fn names_match_case_insensitively_and_others_pass_through() {
        let message = one("Event: dtmfend\r\nDigit: 5\r\nDurationMs: 150\r\n\r\n");
        let TypedEvent::DTMFEnd(dtmf) = TypedEvent::of(&message) else {
            panic!("not a DTMFEnd");
        };
        assert_eq!((dtmf.digit(), dtmf.duration_ms()), (Some("5"), Some(150)));
        assert_eq!(dtmf.direction(), None);
        assert!(DTMFEnd::of(&message).is_some());
        assert!(DTMFBegin::of(&message).is_none());
        let other = one("Event: Newexten\r\nChannel: x\r\n\r\n");
        assert_eq!(TypedEvent::of(&other), TypedEvent::Other(&other));
        let response = one("Response: Success\r\nEvent: ignored?\r\n\r\n");
        // An `Event:` header makes it an event (PROTOCOL-NOTES 15), named `ignored?`.
        assert_eq!(TypedEvent::of(&response).name(), "ignored?");
        let response = one("Response: Success\r\nPing: Pong\r\n\r\n");
        assert!(matches!(TypedEvent::of(&response), TypedEvent::Other(_)));
        assert_eq!(TypedEvent::of(&response).name(), "");
    }

    #[test]
    fn custom_accessors() {
        let message = one(
            "Event: NewCallerid\r\nChannel: a\r\nCID-CallingPres: 35 (Number Unavailable)\r\n\r\n",
        );
        let TypedEvent::NewCallerid(cid) = TypedEvent::of(&message) else {
            panic!("not a NewCallerid");
        };
        assert_eq!(cid.calling_pres(), Some(35));
        let message = one("Event: Shutdown\r\nShutdown: Uncleanly\r\nRestart: True\r\n\r\n");
        let shutdown = Shutdown::of(&message).unwrap();
        assert_eq!(
            (shutdown.clean(), shutdown.restart()),
            (Some(false), Some(true))
        );
        let message = one(
            "Event: OriginateResponse\r\nActionID: o-1\r\nResponse: Failure\r\nReason: 42\r\n\r\n",
        );
        let originate = OriginateResponse::of(&message).unwrap();
        assert_eq!(originate.success(), Some(false));
        assert_eq!(originate.action_id(), Some("o-1"));
        assert_eq!(originate.reason(), Some(OriginateReason::Unknown(42)));
    }

    #[test]
    fn an_event_gives_its_typed_view() {
        let source = Arc::new(Source {
            server_key: "pbx1".into(),
            budget: MemoryBudget::new(usize::MAX),
        });
        let message = one("Event: Hangup\r\nChannel: a\r\nCause: 999\r\n\r\n");
        let event = Event::new(source, Instant::now(), message);
        let TypedEvent::Hangup(hangup) = event.typed() else {
            panic!("not a Hangup");
        };
        assert_eq!(hangup.cause(), Some(HangupCause::Unknown(999)));
        assert_eq!(hangup.channel().channel(), Some("a"));
    }
}
