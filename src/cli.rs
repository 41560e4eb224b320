//! Command line: `mailgate run` and `mailgate check`. Each subcommand's `--help` shows an example.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
