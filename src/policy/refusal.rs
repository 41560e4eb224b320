//! What a refused person is told: the text of a policy refusal, and whether to tell it at all.
//!
//! docs/wire.md, "Who learns the reason": a specific reason is shown only once the person has
//! proven who they are (a valid token). A password login refused by policy gets the generic
//! credentials failure (`AUTHENTICATIONFAILED`, "Authentication failed"), the same answer as a
//! wrong password, unless `disclose_reasons = "always"`. So by default an unknown user, a disabled
//! user and a wrong password look the same on the wire, and the proxy never tells a stranger which
//! accounts exist or how they are configured.
//!
//! The texts say what is off and whom to ask, never a secret and never the directory's layout
//! (no OU path, no group name: those are for the audit record). The session appends the short
//! reference that finds the audit record. Pure: no I/O.

use serde::Deserialize;

use super::{Denial, Reason};
use crate::proto::{Mechanism, Protocol, ReplyClass};

/// The generic credentials failure, identical to what a wrong password earns. The session adds
/// " (ref …)", as it does to an upstream rejection.
pub use crate::proto::GENERIC_FAILURE;

/// The refusal while an address or user is blocked after repeated failures.
pub const RATE_LIMITED: &str = "Too many failed logins; try again later";

/// Temporary failures, shown to everyone: they say nothing about the account.
pub const TEMPORARY_FAILURE: &str = "Mail service temporarily unavailable, try again later";

/// `[policy] disclose_reasons`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscloseReasons {
    /// Specific reasons only after a valid token (the default: no account enumeration).
    #[default]
    Never,
    /// Specific reasons for password logins too. Helps a helpdesk, tells strangers which
    /// accounts exist.
    Always,
}

impl DiscloseReasons {
    pub fn as_str(self) -> &'static str {
        match self {
            DiscloseReasons::Never => "never",
            DiscloseReasons::Always => "always",
        }
    }
}

/// Has the person on the other end proven who they are?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A password mechanism: policy runs before the upstream checks the password, so anyone
    /// can claim any user name.
    Unproven,
    /// A token the session verified before asking policy.
    Proven,
}

impl Identity {
    /// OAuth attempts only reach policy with a verified token; password ones are unchecked.
    pub fn of(mechanism: Mechanism) -> Identity {
        if mechanism.is_password() {
            Identity::Unproven
        } else {
            Identity::Proven
        }
    }
}

/// The answer to send for a denial: its class and its one-line text (no reference yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub class: ReplyClass,
    pub text: String,
    /// Whether `text` names the specific reason (false: the generic failure).
    pub specific: bool,
}

/// The reply for `denial`: the specific refusal text and class when the identity is proven or
/// `disclose` is `Always`, otherwise the generic credentials failure. Temporary failures are
/// always shown as such: they leak nothing and must never read as a wrong password.
pub fn reply(
    denial: &Denial,
    protocol: Protocol,
    identity: Identity,
    disclose: DiscloseReasons,
    contact: &str,
) -> Reply {
    let class = denial.reason.class();
    // A token presented for another name answers as an unassigned shared mailbox does (and as
    // a wrong password): class, text and all, so a token holder cannot enumerate shared
    // mailboxes (`refusal_text`).
    let show = denial.reason != Reason::TokenUserMismatch
        && (class == ReplyClass::Unavailable
            || identity == Identity::Proven
            || disclose == DiscloseReasons::Always);
    if show {
        Reply {
            class,
            text: refusal_text(denial, protocol, contact),
            specific: true,
        }
    } else {
        Reply {
            class: ReplyClass::Authentication,
            text: GENERIC_FAILURE.to_owned(),
            specific: false,
        }
    }
}

/// The specific text for a denial: what is off, and whom to ask (`contact`, e.g.
/// `it-help@example.com`; empty means "your administrator"). One line, no secrets.
pub fn refusal_text(denial: &Denial, protocol: Protocol, contact: &str) -> String {
    let proto = match protocol {
        Protocol::Imap => "IMAP",
        Protocol::Pop3 => "POP",
    };
    let what = match denial.reason {
        Reason::Ok => return "Logged in".to_owned(),
        // Shared mailboxes: an unassigned mailbox reads like a wrong password, so the
        // answer does not confirm that the mailbox exists. A token presented for another
        // name reads the same: otherwise a token holder could tell a shared mailbox it is not
        // assigned to (generic) from a name that is none (a specific text) and enumerate
        // them. The audit keeps the specific reason for the operator.
        Reason::UpstreamRejected | Reason::MailboxNotAssigned | Reason::TokenUserMismatch => {
            return GENERIC_FAILURE.to_owned();
        }
        Reason::UpstreamUnavailable
        | Reason::IdpUnavailable
        | Reason::GrantUnavailable
        | Reason::ClientClosed => {
            return TEMPORARY_FAILURE.to_owned();
        }
        Reason::RateLimited => return RATE_LIMITED.to_owned(),
        Reason::InvalidToken => {
            "Your sign-in token is not valid or has expired. Sign in to your account again"
                .to_owned()
        }
        Reason::UnknownUser => {
            "This account is not set up for mail access through this server".to_owned()
        }
        Reason::Suspended => "Your account is suspended".to_owned(),
        Reason::ImapDisabled | Reason::PopDisabled => {
            format!("{proto} access is turned off for your account by your organisation")
        }
        Reason::PasswordLoginDisabled => format!(
            "Your organisation does not allow {proto} logins with a password. Use a mail app \
             that signs in with your organisation account (OAuth)"
        ),
        Reason::ClientNotAllowed => {
            format!("This mail app is not on your organisation's list of allowed {proto} apps")
        }
        Reason::DelegationNotSupported => format!(
            "Service account tokens obtained by domain-wide delegation are not accepted for \
             {proto} under your organisation's app allowlist"
        ),
    };
    format!("{what}. Ask {}.", contact_or_default(contact))
}

/// The contact as one clean line: control characters would break the protocol line (the
/// front-end strips CR/LF anyway, this keeps the text readable).
fn contact_or_default(contact: &str) -> String {
    let clean: String = contact
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .trim_end_matches('.')
        .to_owned();
    if clean.is_empty() {
        "your administrator".to_owned()
    } else {
        clean
    }
}
