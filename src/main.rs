//! The `mailgate` binary: parse the command line, load the config, dispatch. `anyhow` lives here
//! only, to add context to startup failures.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use mailgate::cli::{AuditCommand, Cli, Command, TailArgs};
use mailgate::config::Config;
use mailgate::server::Server;

fn main() -> ExitCode {
    // One crypto provider for the whole process, installed before anything builds a TLS config,
    // so a dependency turning on another provider cannot cause a runtime panic.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Audit {
            command: AuditCommand::Tail(args),
        } => audit_tail(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mailgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    let mut problems = Vec::new();
    // `check` never writes: a self-signed certificate still to be generated is not checked.
    if let Some(tls) = &config.tls
        && (!tls.generate_self_signed || (tls.cert_file.exists() && tls.key_file.exists()))
        && let Err(e) = mailgate::tls::server_config(tls)
    {
        problems.push(format!("tls: {e}"));
    }
    for (name, upstream) in &config.upstreams {
        if let Err(e) = mailgate::upstream::Connector::new(upstream.clone()) {
            problems.push(format!("upstream {name:?}: {e}"));
        }
    }
    if !problems.is_empty() {
        eprintln!("{}: {} error(s)", path.display(), problems.len());
        for p in &problems {
            eprintln!("{p}");
        }
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "{}: ok ({} listener(s), {} upstream(s))",
        path.display(),
        config.listeners.len(),
        config.upstreams.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))?;
    init_tracing(&config.log.filter)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let server = Server::bind(&config).await.context("starting listeners")?;
        // SIGHUP and edits to the config files reload; the watcher ends with the runtime.
        tokio::spawn(mailgate::config::reload::watch(
            path.to_path_buf(),
            server.reloader(),
            None,
        ));
        server.run(shutdown_signal()).await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn audit_tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    use mailgate::audit::tail;
    use mailgate::config::AuditSink;

    let file = match args.file {
        Some(file) => file,
        None => {
            let config = Config::load(&args.config)
                .map_err(|e| anyhow::anyhow!("{}:\n{e}", args.config.display()))?;
            match config.audit.sink {
                AuditSink::File(file) => file,
                AuditSink::Stdout => anyhow::bail!(
                    "{}: audit records go to stdout (audit.stdout = true); pass --file",
                    args.config.display()
                ),
                AuditSink::Disabled => anyhow::bail!(
                    "{}: no [audit] table, so no audit file; pass --file",
                    args.config.display()
                ),
            }
        }
    };
    let since = args
        .since
        .as_deref()
        .map(|s| tail::parse_since(s, std::time::SystemTime::now()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--since {e}"))?;
    let options = tail::Options {
        file,
        follow: args.follow,
        filter: tail::Filter {
            user: args.user,
            decision: args.decision.map(Into::into),
            reason: args.reason,
            protocol: args.protocol.map(Into::into),
            session: args.session,
            since,
        },
        format: if args.json {
            tail::Format::Json
        } else {
            tail::Format::Table
        },
        poll: tail::POLL,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let summary = tail::run(&options, &mut out)?;
    if summary.malformed > 0 {
        eprintln!(
            "mailgate: skipped {} line(s) that are not audit records",
            summary.malformed
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs go to stderr (journald adds timestamps; RUST_LOG overrides the config filter).
fn init_tracing(filter: &str) -> anyhow::Result<()> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .with_context(|| format!("log filter {filter:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}
