//! Command line: `mailgate run`, `check`, `explain`, `groups`, `directory sync` and
//! `audit tail`. Each
//! subcommand's `--help` shows an example.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::proto::{Mechanism, Protocol};

/// IMAP/POP3 access-gating proxy.
#[derive(Debug, Parser)]
#[command(name = "mailgate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve: listen, gate logins, splice to the upstream. SIGHUP or an edited config file
    /// reloads it; SIGTERM/SIGINT stop it.
    #[command(after_help = "Example:\n  mailgate run --config /etc/mailgate/mailgate.toml")]
    Run {
        /// Path of the main config file.
        #[arg(long, default_value = "config/mailgate.toml")]
        config: PathBuf,
    },
    /// Validate the config as `run` would start it: every key, the directory, certificates and
    /// keys, CA files, the audit file, listen addresses. Every error at once; exit 1 on any.
    #[command(
        after_help = "Example:\n  mailgate check --config /etc/mailgate/mailgate.toml && systemctl reload mailgate"
    )]
    Check {
        /// Path of the main config file.
        #[arg(long, default_value = "config/mailgate.toml")]
        config: PathBuf,
        /// Also bind to the `[policy.ldap]` server, read it and merge it with the directory
        /// file (without it, check never contacts the server).
        #[arg(long)]
        connect: bool,
    },
    /// Show a user's effective policy, where each value came from, and the decision for one
    /// login. Exit 0 whether it is allowed or refused; 1 only when the config does not load.
    #[command(after_help = EXPLAIN_EXAMPLES)]
    Explain {
        /// The user as the mail client would log in (any case).
        user: String,
        /// The listener's protocol.
        #[arg(long, value_enum)]
        protocol: ProtocolArg,
        /// How the client logs in. Default: xoauth2 when --client-id is given, otherwise the
        /// protocol's password login (login for IMAP, user for POP3).
        #[arg(long, value_enum)]
        mechanism: Option<MechanismArg>,
        /// OAuth client ID of the token (for xoauth2 / oauthbearer).
        #[arg(long)]
        client_id: Option<String>,
        /// Account the token was issued to (for xoauth2 / oauthbearer). Default: USER.
        #[arg(long)]
        token_user: Option<String>,
        /// The token is a service account's, obtained by domain-wide delegation.
        #[arg(long)]
        delegated: bool,
        /// Path of the main config file.
        #[arg(long, default_value = "config/mailgate.toml")]
        config: PathBuf,
    },
    /// List every group with its compliance state (compliant, non-compliant,
    /// non-compliant-locked) and the nested members that break its membership restriction.
    #[command(
        after_help = "Example:\n  mailgate groups --config /etc/mailgate/mailgate.toml\n  \
                      mailgate groups --json | jq '.groups[] | select(.state != \"compliant\")'"
    )]
    Groups {
        /// Path of the main config file.
        #[arg(long, default_value = "config/mailgate.toml")]
        config: PathBuf,
        /// One JSON document instead of text, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The organisation from LDAP / Active Directory (`[policy.ldap]`).
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Read the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Shared-mailbox grants: authorise one (once, as the provider's administrator or the
    /// mailbox's owner), list them with their state, revoke one.
    Grant {
        #[command(subcommand)]
        command: GrantCommand,
    },
    /// Smart lockout for the helpdesk ("I'm locked out"): show or clear the failure counts of
    /// a user or a source address, through the running mailgate's admin listener (loopback).
    Throttle {
        #[command(subcommand)]
        command: ThrottleCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Obtain (or renew) a grant: RFC 8628 device flow by default (prints a URL and a code
    /// to enter there, then waits); `--redirect`: authorization code + PKCE with a loopback
    /// redirect. A running server uses the new grant at the next login, without a restart.
    #[command(after_help = "Examples:\n  mailgate grant authorize office\n  \
                            mailgate grant authorize office --client m365 --redirect")]
    Authorize {
        /// The grant's name, as `grant = "NAME"` in [[shared_mailbox]].
        name: String,
        /// The [[oauth.client]] to use. Default: the only one configured.
        #[arg(long)]
        client: Option<String>,
        /// Authorization code + PKCE: open the printed URL in a browser on this machine; the
        /// provider redirects to http://127.0.0.1:PORT/callback.
        #[arg(long)]
        redirect: bool,
        /// Port of the loopback redirect (0: any free port; the provider must allow any
        /// loopback port, RFC 8252 section 7.3).
        #[arg(long, default_value_t = 0)]
        redirect_port: u16,
        /// Give up after this many seconds without approval.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Path of the main config file.
        #[arg(long, default_value = "config/mailgate.toml")]
        config: PathBuf,
    },
    /// List the grants: mailboxes using each, scopes, when obtained and last refreshed, state.
    #[command(after_help = "Example:\n  mailgate grant status")]
    Status {
        /// Path of the main config file.
        #[arg(long, default_value = "config/mailgate.toml")]
        config: PathBuf,
    },
    /// Revoke a grant at the provider (when it has a revocation endpoint) and delete it here.
    /// Its mailboxes refuse logins (temporary failure) until it is authorised again.
    #[command(after_help = "Example:\n  mailgate grant revoke office")]
    Revoke {
        name: String,
        /// Path of the main config file.
        #[arg(long, default_value = "config/mailgate.toml")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Sync from the directory server now, through the running mailgate's admin listener
    /// (loopback). Prints the changes: users added, removed, moved between OUs, suspended;
    /// groups changed.
    #[command(after_help = "Examples:\n  mailgate directory sync --dry-run\n  \
                      mailgate directory sync\n  \
                      mailgate directory sync --force   # past the max_removed_fraction safety valve")]
    Sync(SyncArgs),
}

/// `mailgate directory sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Only show what the sync would change; apply nothing. Without an `[admin]` listener,
    /// compares against `cache_file` (the last sync the server applied) instead.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply even when it removes more than `max_removed_fraction` of the users.
    #[arg(long, conflicts_with = "dry_run")]
    pub force: bool,
    /// The admin listener to ask. Default: `[admin] bind` of the config, on loopback.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,
    /// Path of the main config file.
    #[arg(long, default_value = "config/mailgate.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ThrottleCommand {
    /// Failures, blocks and familiar sources of a user and/or a source address.
    #[command(
        after_help = "Examples:\n  mailgate throttle status --user alice@example.com\n  \
                            mailgate throttle status --ip 203.0.113.7"
    )]
    Status(ThrottleArgs),
    /// Unlock a user (both sides; familiar sources stay) or a source address.
    #[command(
        after_help = "Examples:\n  mailgate throttle clear --user alice@example.com\n  \
                            mailgate throttle clear --ip 203.0.113.7"
    )]
    Clear(ThrottleArgs),
}

/// `mailgate throttle status|clear`.
#[derive(Debug, Args)]
pub struct ThrottleArgs {
    /// The user as the mail client logs in (any case).
    #[arg(long)]
    pub user: Option<String>,
    /// A client address (an IPv6 address counts as its /64).
    #[arg(long)]
    pub ip: Option<std::net::IpAddr>,
    /// The admin listener to ask. Default: `[admin] bind` of the config, on loopback.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,
    /// Config file naming the admin listener (used when --admin is not given).
    #[arg(long, default_value = "config/mailgate.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Show audit records as an aligned table (or JSON lines), filtered, optionally following
    /// the file across log rotation.
    #[command(after_help = TAIL_HELP)]
    Tail(TailArgs),
}

const TAIL_HELP: &str = "\
Filters combine (AND). --user, --decision and --reason select auth records; a selected
session is shown whole: its connect, the matching auth records and its session_end.
--protocol selects sessions by their connect record. These four hide reload records.
--since and --session apply to every record.

Examples:
  mailgate audit tail --follow
  mailgate audit tail --user alice@example.com --since 2h
  mailgate audit tail --decision deny --reason client_not_allowed --protocol imap
  mailgate audit tail --session 3f2a9c01d4e7      # the ref from a refusal message
  mailgate audit tail --file /var/log/mailgate/audit.log.1 --json | jq .user";

/// `mailgate audit tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Audit file to read. Default: the `audit.file` of the config.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Keep reading as records are appended, across log rotation (rename or truncate).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only sessions where this user logged in or was refused (exact match).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Only sessions that opened (or were refused) this shared mailbox (exact, lowercase).
    #[arg(long, value_name = "MAILBOX")]
    pub mailbox: Option<String>,
    /// Only sessions with an auth record of this decision.
    #[arg(long, value_enum)]
    pub decision: Option<DecisionArg>,
    /// Only sessions with an auth record of this reason code (`ok` for allowed logins).
    #[arg(long, value_name = "REASON", value_parser = reason_codes())]
    pub reason: Option<String>,
    /// Only sessions on listeners of this protocol.
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolArg>,
    /// Only this session: its full id or its end (the `ref` in refusal texts).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Only records from this far back ("10m", "2h", "7d") or since an RFC 3339 time.
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Print the matching records as JSON lines, exactly as in the file.
    #[arg(long)]
    pub json: bool,
    /// Config file naming the audit file (used when --file is not given).
    #[arg(long, default_value = "config/mailgate.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecisionArg {
    Allow,
    Deny,
    /// Let through by a report-only policy that would refuse it.
    WouldDeny,
}

impl From<DecisionArg> for crate::audit::Verdict {
    fn from(d: DecisionArg) -> Self {
        match d {
            DecisionArg::Allow => crate::audit::Verdict::Allow,
            DecisionArg::Deny => crate::audit::Verdict::Deny,
            DecisionArg::WouldDeny => crate::audit::Verdict::WouldDeny,
        }
    }
}

const EXPLAIN_EXAMPLES: &str = "Examples:
  mailgate explain bob@example.com --protocol imap
  mailgate explain bob@example.com --protocol pop3 --mechanism user
  mailgate explain frank@example.com --protocol imap --mechanism xoauth2 --client-id com.apple.mail";

/// `--protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Imap,
    Pop3,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Protocol {
        match p {
            ProtocolArg::Imap => Protocol::Imap,
            ProtocolArg::Pop3 => Protocol::Pop3,
        }
    }
}

fn reason_codes() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(crate::audit::record::REASONS.map(|r| r.as_str()))
}

/// `--mechanism`, named as in audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MechanismArg {
    /// IMAP LOGIN.
    Login,
    /// SASL PLAIN (IMAP AUTHENTICATE, POP3 AUTH).
    Plain,
    /// SASL LOGIN (IMAP AUTHENTICATE, POP3 AUTH).
    SaslLogin,
    /// POP3 USER/PASS.
    User,
    Xoauth2,
    Oauthbearer,
}

impl MechanismArg {
    /// The mechanism on `protocol`, or `None` when that protocol has no such login (IMAP LOGIN
    /// on POP3, USER/PASS on IMAP).
    pub fn on(self, protocol: Protocol) -> Option<Mechanism> {
        match (self, protocol) {
            (MechanismArg::Login, Protocol::Imap) => Some(Mechanism::ImapLogin),
            (MechanismArg::User, Protocol::Pop3) => Some(Mechanism::UserPass),
            (MechanismArg::Login, Protocol::Pop3) | (MechanismArg::User, Protocol::Imap) => None,
            (MechanismArg::Plain, _) => Some(Mechanism::Plain),
            (MechanismArg::SaslLogin, _) => Some(Mechanism::Login),
            (MechanismArg::Xoauth2, _) => Some(Mechanism::XOAuth2),
            (MechanismArg::Oauthbearer, _) => Some(Mechanism::OAuthBearer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_to_shipped_config() {
        let cli = Cli::parse_from(["mailgate", "check"]);
        let Command::Check { config, .. } = cli.command else {
            panic!("check")
        };
        assert_eq!(config, PathBuf::from("config/mailgate.toml"));
    }

    #[test]
    fn audit_tail_parses_every_filter() {
        let cli = Cli::parse_from([
            "mailgate",
            "audit",
            "tail",
            "-f",
            "--user",
            "a@b",
            "--decision",
            "deny",
            "--reason",
            "suspended",
            "--protocol",
            "pop3",
            "--since",
            "10m",
            "--json",
            "--session",
            "abc",
        ]);
        let Command::Audit {
            command: AuditCommand::Tail(t),
        } = cli.command
        else {
            panic!("audit tail")
        };
        assert!(t.follow && t.json);
        assert_eq!(t.decision, Some(DecisionArg::Deny));
        assert_eq!(t.protocol, Some(ProtocolArg::Pop3));
        assert_eq!(t.reason.as_deref(), Some("suspended"));
        assert!(Cli::try_parse_from(["mailgate", "audit", "tail", "--reason", "nope"]).is_err());
    }
}
