//! Stage: policy. Pure: `(directory, attempt) -> Decision`, with provenance.
//!
//! Inputs: the loaded [`Directory`] and an [`Attempt`] (listener protocol, SASL mechanism,
//! claimed user, and for OAuth mechanisms the facts of the already verified token). Output: a
//! [`Decision`] whose [`Permit`] or [`Denial`] names the source of the deciding value
//! (`ou:/Sales`, `group:imap-pilot@example.com`, `user`, `default`, or `token`).
//!
//! The order is docs/policy.md "Decision, in order", steps 1 to 4:
//!
//! | step | check                                          | refusal                       |
//! |------|------------------------------------------------|-------------------------------|
//! | 1    | user unknown (and no `default_ou`)             | `unknown_user`                |
//! | 1    | user suspended                                 | `suspended`                   |
//! | 2    | protocol off (user switch, group, OU)          | `imap_disabled`/`pop_disabled`|
//! | 3    | password mechanism, `password_logins` off      | `password_login_disabled`     |
//! | 3    | password mechanism, IMAP with an allowlist     | `client_not_allowed`          |
//! | 3    | SASL authzid other than the user               | `mailbox_not_assigned`        |
//! | 4    | OAuth, no verified token handed in             | `invalid_token`               |
//! | 4    | OAuth, token user is not the SASL user         | `token_user_mismatch`         |
//! | 4    | OAuth, IMAP allowlist without the client ID    | `client_not_allowed`          |
//! | 4    | OAuth, IMAP allowlist, delegated token         | `delegation_not_supported`    |
//!
//! Token signatures, issuers, audiences and expiry are checked by the session before it calls
//! in (an invalid token never gets here); upstream and IdP failures are the session's too.
//! [`decide`] and [`explain`] run the same code, so `mailgate explain`, the audit
//! `policy_source` and the proxy's decision always agree.
//!
//! A refusal is not an error: `Decision::Deny` carries a [`Reason`], and only `Reason` picks the
//! wire reply class. What a refused person is told is [`refusal::reply`]'s job.
//!
//! Must not: do I/O, read the clock, or log.

use std::sync::Arc;

use std::time::SystemTime;

use crate::directory::{
    self, Directory, Enforce, ImapClients, Ou, Principal, Route, Settings, Sourced,
};
use crate::proto::{Mechanism, Protocol, ReplyClass};

mod explain;
pub mod refusal;
pub mod shared;

pub use explain::{Explanation, GroupLine, Standing};
pub use refusal::{DiscloseReasons, Identity, Reply, refusal_text, reply};

/// Facts of a verified OAuth token, as the session's verifier established them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFacts {
    /// The account the token was issued for (`email`, `upn` or `sub`, as the issuer names it).
    pub user: String,
    /// The OAuth client the token was issued to (`azp` / `client_id`).
    pub client_id: Option<String>,
    pub issuer: String,
    /// A service account's token obtained by domain-wide delegation.
    pub delegated: bool,
}

/// One login attempt, as the session presents it to policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt<'a> {
    /// The listener's protocol.
    pub protocol: Protocol,
    pub mechanism: Mechanism,
    /// The SASL (or LOGIN / USER) user name.
    pub user: &'a str,
    /// `Some` with verified facts for XOAUTH2 / OAUTHBEARER; `None` for password mechanisms.
    pub token: Option<&'a TokenFacts>,
    /// The SASL authorization identity (PLAIN's authzid), when the client sent one: the
    /// account an upstream that honours it (Dovecot master users) would open.
    pub authzid: Option<&'a str>,
}

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
    /// Source of the protocol switch that let it through, e.g. `ou:/Sales`,
    /// `group:imap-pilot@example.com`, `default`.
    pub source: String,
    /// The OU whose policy applied (the user's, or the default OU); for the audit `ou` field.
    pub ou: Option<Arc<str>>,
}

/// Why a login is refused, and where that came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    /// Source of the value that refused it: `ou:/Sales`, `group:…`, `user` (switch or
    /// suspension), `token` (token facts), `default` (unknown user).
    pub source: String,
    /// The OU whose policy applied; `None` for an unknown user.
    pub ou: Option<Arc<str>>,
    /// For refusals by a setting (protocol off, password logins off, client allowlist,
    /// delegation): the effective report-only switch, which may turn this refusal into a
    /// `would_deny` ([`Denial::enforced_at`]). `None` for refusals that are always enforced:
    /// an unknown or suspended account, an unproven or mismatched identity, another mailbox.
    /// Letting those through would not be a staged rollout of a policy but a hole.
    pub enforce: Option<Sourced<Enforce>>,
}

impl Denial {
    /// Is this refusal enforced at `now`? `false`: report only, record `would_deny` and let
    /// the login through.
    pub fn enforced_at(&self, now: SystemTime) -> bool {
        self.enforce.as_ref().is_none_or(|e| e.value.at(now))
    }
}

/// The audit reason codes (docs/wire.md "Reason codes"), one to one.
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
    /// A SASL authorization identity other than the user (another mailbox) that no shared
    /// mailbox assignment allows.
    MailboxNotAssigned,
    /// The grant of the shared mailbox needs re-authorisation, or its provider did not answer.
    GrantUnavailable,
    /// Too many failed logins from this address or for this user: temporarily blocked.
    RateLimited,
    /// The downstream closed (or failed, or sent more than a login may have pipelined behind
    /// it) while its allowed login was being verified or replayed; the upstream login was
    /// abandoned, and no login answer was sent.
    ClientClosed,
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
            | Reason::DelegationNotSupported
            | Reason::MailboxNotAssigned => ReplyClass::Authorization,
            Reason::InvalidToken | Reason::UpstreamRejected => ReplyClass::Authentication,
            Reason::UpstreamUnavailable
            | Reason::IdpUnavailable
            | Reason::GrantUnavailable
            | Reason::RateLimited
            | Reason::ClientClosed => ReplyClass::Unavailable,
        }
    }

    /// A refusal by one of the policy settings, which `enforce = false` may turn into a
    /// `would_deny`.
    pub fn by_setting(self) -> bool {
        matches!(
            self,
            Reason::ImapDisabled
                | Reason::PopDisabled
                | Reason::PasswordLoginDisabled
                | Reason::ClientNotAllowed
                | Reason::DelegationNotSupported
        )
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
            Reason::MailboxNotAssigned => "mailbox_not_assigned",
            Reason::GrantUnavailable => "grant_unavailable",
            Reason::RateLimited => "rate_limited",
            Reason::ClientClosed => "client_closed",
        }
    }
}

/// Decide one login attempt. The hook the session calls before any replay.
pub fn decide(directory: &Directory, attempt: &Attempt) -> Decision {
    evaluate(directory, attempt).1
}

/// Decide one login attempt and say why: the effective settings and the source of each, the
/// group memberships, and the [`Decision`] that [`decide`] returns for the same input.
/// `now` decides whether a report-only refusal has reached its `enforce_from` day.
pub fn explain(directory: &Directory, attempt: &Attempt, now: SystemTime) -> Explanation {
    let (subject, decision) = evaluate(directory, attempt);
    explain::build(directory, attempt, subject, decision, now)
}

/// Where the mailboxes of `user` live, when the directory routes them (`upstream` on the user,
/// a group policy or an OU, inherited), with the source of that setting. `None`: the listener's
/// upstream. Unknown users in the default OU follow the OU's.
pub fn route<'d>(directory: &'d Directory, user: &str) -> Option<&'d Sourced<Route>> {
    match directory.principal(user) {
        Some(p) => p.effective.upstream.as_ref(),
        None => directory.default_ou()?.effective.upstream.as_ref(),
    }
}

/// Who the attempt was matched to.
#[derive(Debug, Clone, Copy)]
enum Subject<'d> {
    Known(&'d Principal, &'d Ou),
    /// Not in the directory, placed in the configured default OU.
    DefaultOu(&'d Ou),
    Unknown,
}

/// The one implementation behind [`decide`] and [`explain`].
fn evaluate<'d>(directory: &'d Directory, attempt: &Attempt) -> (Subject<'d>, Decision) {
    let subject = match directory.principal(attempt.user) {
        Some(p) => match directory.ou(p.ou) {
            Some(ou) => Subject::Known(p, ou),
            // Unreachable for a loaded directory (every principal's OU exists); refusing keeps
            // a broken invariant from ever turning into an allow.
            None => Subject::Unknown,
        },
        None => match directory.default_ou() {
            Some(ou) => Subject::DefaultOu(ou),
            None => Subject::Unknown,
        },
    };
    let (settings, ou) = match subject {
        Subject::Unknown => {
            let denial = Denial {
                reason: Reason::UnknownUser,
                source: SOURCE_DEFAULT.to_owned(),
                ou: None,
                enforce: None,
            };
            return (subject, Decision::Deny(denial));
        }
        Subject::Known(p, ou) if p.suspended => {
            let denial = Denial {
                reason: Reason::Suspended,
                source: SOURCE_USER.to_owned(),
                ou: Some(ou.path.clone()),
                enforce: None,
            };
            return (subject, Decision::Deny(denial));
        }
        Subject::Known(p, ou) => (&p.effective, ou),
        Subject::DefaultOu(ou) => (&ou.effective, ou),
    };
    let decision = match gate(settings, attempt) {
        Ok(source) => Decision::Allow(Permit {
            source,
            ou: Some(ou.path.clone()),
        }),
        Err((reason, source)) => Decision::Deny(Denial {
            reason,
            source,
            ou: Some(ou.path.clone()),
            enforce: reason.by_setting().then(|| settings.enforce.clone()),
        }),
    };
    (subject, decision)
}

/// Steps 2 to 4 on resolved settings. `Ok` holds the source of the protocol switch that let the
/// attempt through; `Err` the reason and the source of the value that refused it.
fn gate(s: &Settings, attempt: &Attempt) -> Result<String, (Reason, String)> {
    let (switch, off) = match attempt.protocol {
        Protocol::Imap => (&s.imap, Reason::ImapDisabled),
        Protocol::Pop3 => (&s.pop, Reason::PopDisabled),
    };
    if !switch.value {
        return Err((off, switch.source.to_string()));
    }
    let allowlist = attempt.protocol == Protocol::Imap
        && matches!(s.imap_clients.value, ImapClients::Allowlist(_));
    if attempt.mechanism.is_password() {
        if !s.password_logins.value {
            return Err((
                Reason::PasswordLoginDisabled,
                s.password_logins.source.to_string(),
            ));
        }
        // A password carries no client ID, so it can never be on an allowlist.
        if allowlist {
            return Err((Reason::ClientNotAllowed, s.imap_clients.source.to_string()));
        }
        // Issue 10 item 5: the upstream would open the authzid's mailbox while everything
        // above looked at the authcid; until shared mailboxes are assigned,
        // only the user's own name may be asked for.
        if let Some(authzid) = attempt.authzid
            && directory::lowercase(authzid) != directory::lowercase(attempt.user)
        {
            return Err((Reason::MailboxNotAssigned, SOURCE_DEFAULT.to_owned()));
        }
    } else {
        // The session hands in verified facts for every OAuth attempt; without them nothing
        // is proven, and that must never become an allow.
        let Some(token) = attempt.token else {
            return Err((Reason::InvalidToken, SOURCE_TOKEN.to_owned()));
        };
        if directory::lowercase(&token.user) != directory::lowercase(attempt.user) {
            return Err((Reason::TokenUserMismatch, SOURCE_TOKEN.to_owned()));
        }
        if allowlist {
            if !s.imap_clients.value.allows(token.client_id.as_deref()) {
                return Err((Reason::ClientNotAllowed, s.imap_clients.source.to_string()));
            }
            if token.delegated {
                return Err((
                    Reason::DelegationNotSupported,
                    s.imap_clients.source.to_string(),
                ));
            }
            // Let through by the allowlist: that is where the decision came from, not the
            // IMAP switch above it.
            return Ok(s.imap_clients.source.to_string());
        }
    }
    Ok(switch.source.to_string())
}

/// Source of the built-in rule "nothing is allowed that the directory does not allow".
pub const SOURCE_DEFAULT: &str = "default";
/// Source of a refusal decided by the user's own record (suspension).
pub const SOURCE_USER: &str = "user";
/// Source of a refusal decided by the token's facts (its user, or its absence).
pub const SOURCE_TOKEN: &str = "token";

#[cfg(test)]
mod tests;

#[cfg(test)]
mod rollout_tests;
