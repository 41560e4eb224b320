//! Command line: `mailgate run`, `check`, `explain` and `groups`. Each subcommand's `--help`
//! shows an example.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Validate the config (and its certificates and CA files); exit 1 on any error.
    #[command(
        after_help = "Example:\n  mailgate check --config /etc/mailgate/mailgate.toml && systemctl reload mailgate"
    )]
    Check {
        /// Path of the main config file.
        #[arg(long, default_value = "config/mailgate.toml")]
        config: PathBuf,
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
    #[command(after_help = "Example:\n  mailgate groups --config /etc/mailgate/mailgate.toml")]
    Groups {
        /// Path of the main config file.
        #[arg(long, default_value = "config/mailgate.toml")]
        config: PathBuf,
    },
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
        let Command::Check { config } = cli.command else {
            panic!("check")
        };
        assert_eq!(config, PathBuf::from("config/mailgate.toml"));
    }
}
