//! Stage: policy. Pure: `(login, listener protocol) -> Decision`, with provenance.
//!
//! Inputs: the decoded [`LoginRequest`] and the listener's [`Protocol`]. Output: a
//! [`Decision`]. No I/O, no clock. In this first cut every login is allowed and the upstream
//! checks the credentials; the directory and OU policy fill this in (TODO(#3)).
//!
//! A refusal is not an error: `Decision::Deny` carries a [`Reason`], and only `Reason` picks the
//! wire reply class.

use crate::proto::{LoginRequest, Protocol, ReplyClass};

/// The verdict on one login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a decision that is not acted on lets every login through"]
pub enum Decision {
    Allow(Permit),
    Deny(Denial),
}

/// Why a login may go ahead, and where that came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    /// e.g. `ou:/Sales`, `group:imap-pilot@example.com`, `user`, `default`.
    pub source: String,
}

/// Why a login is refused, and where that came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub source: String,
}

/// The audit reason codes of SPEC, one to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Ok,
    UnknownUser,
    Suspended,
    ImapDisabled,
    PopDisabled,
    PasswordLoginDisabled,
    ClientNotAllowed,
    InvalidToken,
    TokenUserMismatch,
    DelegationNotSupported,
    UpstreamRejected,
    UpstreamUnavailable,
    IdpUnavailable,
}

impl Reason {
    /// The wire reply class (RFC 5530 / RFC 3206 code) for this reason.
    pub fn class(self) -> ReplyClass {
        match self {
            Reason::Ok
            | Reason::UnknownUser
            | Reason::Suspended
            | Reason::ImapDisabled
            | Reason::PopDisabled
            | Reason::PasswordLoginDisabled
            | Reason::ClientNotAllowed
            | Reason::TokenUserMismatch
            | Reason::DelegationNotSupported => ReplyClass::Authorization,
            Reason::InvalidToken | Reason::UpstreamRejected => ReplyClass::Authentication,
            Reason::UpstreamUnavailable | Reason::IdpUnavailable => ReplyClass::Unavailable,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::UnknownUser => "unknown_user",
            Reason::Suspended => "suspended",
            Reason::ImapDisabled => "imap_disabled",
            Reason::PopDisabled => "pop_disabled",
            Reason::PasswordLoginDisabled => "password_login_disabled",
            Reason::ClientNotAllowed => "client_not_allowed",
            Reason::InvalidToken => "invalid_token",
            Reason::TokenUserMismatch => "token_user_mismatch",
            Reason::DelegationNotSupported => "delegation_not_supported",
            Reason::UpstreamRejected => "upstream_rejected",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::IdpUnavailable => "idp_unavailable",
        }
    }
}

/// Decide one login attempt. The hook the session calls before any replay.
pub fn decide(_login: &LoginRequest, _protocol: Protocol) -> Decision {
    // TODO(#3): directory, OU inheritance, groups, user switches.
    Decision::Allow(Permit {
        source: "default".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_match_serde_names() {
        for r in [
            Reason::Ok,
            Reason::UnknownUser,
            Reason::Suspended,
            Reason::ImapDisabled,
            Reason::PopDisabled,
            Reason::PasswordLoginDisabled,
            Reason::ClientNotAllowed,
            Reason::InvalidToken,
            Reason::TokenUserMismatch,
            Reason::DelegationNotSupported,
            Reason::UpstreamRejected,
            Reason::UpstreamUnavailable,
            Reason::IdpUnavailable,
        ] {
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
    }

    #[test]
    fn temporary_failures_are_unavailable() {
        assert_eq!(Reason::UpstreamUnavailable.class(), ReplyClass::Unavailable);
        assert_eq!(Reason::IdpUnavailable.class(), ReplyClass::Unavailable);
        assert_eq!(Reason::UpstreamRejected.class(), ReplyClass::Authentication);
        assert_eq!(Reason::ImapDisabled.class(), ReplyClass::Authorization);
    }
}
