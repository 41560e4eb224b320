//! The `mailgate` binary: parse the command line, load the config, dispatch. `anyhow` lives here
//! only, to add context to startup failures.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use mailgate::cli::{
    AuditCommand, Cli, Command, DirectoryCommand, GrantCommand, MechanismArg, SyncArgs, TailArgs,
    ThrottleArgs, ThrottleCommand,
};
use mailgate::config::Config;
use mailgate::policy::{self, Attempt, Decision, Identity, TokenFacts};
use mailgate::proto::Protocol;
use mailgate::server::Server;

fn main() -> ExitCode {
    // One crypto provider for the whole process, installed before anything builds a TLS config,
    // so a dependency turning on another provider cannot cause a runtime panic.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config, connect } => check(&config, connect),
        Command::Explain {
            user,
            protocol,
            mechanism,
            client_id,
            token_user,
            delegated,
            config,
        } => explain(
            &config,
            &user,
            protocol.into(),
            mechanism,
            client_id,
            token_user,
            delegated,
        ),
        Command::Groups { config, json } => groups(&config, json),
        Command::Audit {
            command: AuditCommand::Tail(args),
        } => audit_tail(args),
        Command::Throttle { command } => throttle(command),
        Command::Grant { command } => grant(command),
        Command::Directory {
            command: DirectoryCommand::Sync(args),
        } => directory_sync(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mailgate: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path, connect: bool) -> anyhow::Result<ExitCode> {
    let Some(config) = startup_or_report(path, |w| eprintln!("warning: {w}")) else {
        return Ok(ExitCode::FAILURE);
    };
    // Only on request: a plain `check` (the unit's ExecStartPre) never contacts the server.
    if connect && let Some(ldap) = &config.policy.ldap {
        let problem = match ldap_now(&config, ldap) {
            Ok(snapshot) => match config.with_snapshot(&snapshot) {
                Ok(_) => {
                    println!(
                        "policy.ldap: read {} user(s) and {} group(s); they merge with the \
                         directory file",
                        snapshot.users.len(),
                        snapshot.groups.len()
                    );
                    None
                }
                Err(e) => Some(format!(
                    "policy.ldap: the synced directory is invalid:\n{e}"
                )),
            },
            Err(e) => Some(format!("policy.ldap: {e}")),
        };
        if let Some(problem) = problem {
            eprintln!("{}: 1 error(s)", path.display());
            eprintln!("{problem}");
            return Ok(ExitCode::FAILURE);
        }
    }
    println!(
        "{}: ok ({} listener(s), {} upstream(s))",
        path.display(),
        config.listeners.len(),
        config.upstreams.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// The start-up checks `check` and `run` share (`mailgate::startup`), reported the same way by
/// both: the config, or every problem on stderr (and `None`). Warnings go to `warn` (check
/// prints them, run logs them) only once the config is known to start.
fn startup_or_report(path: &Path, warn: impl Fn(&str)) -> Option<Config> {
    match mailgate::startup::check(path) {
        Ok(config) => {
            for warning in config.warnings() {
                warn(&warning);
            }
            Some(config)
        }
        Err(report) => {
            eprintln!("{}: {} error(s)", path.display(), report.len());
            eprintln!("{report}");
            None
        }
    }
}

/// An error and its causes, `: `-joined, each said once: many error types show their cause in
/// their own text and return it as `source()` too, which `{:#}` would print twice
/// ("cannot open x: No such file…: No such file…").
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Loads the config for a read-only subcommand; on errors prints them and says so. With
/// `[policy.ldap]`, the directory is merged with the last sync the server applied
/// (`cache_file`), or else with a live read of the server, so `explain` and `groups` show the
/// organisation mailgate enforces.
fn load_or_report(path: &Path) -> Option<Config> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            eprintln!("{errors}");
            return None;
        }
    };
    let Some(ldap) = config.policy.ldap.clone() else {
        return Some(config);
    };
    let snapshot = match ldap
        .cache_file
        .as_deref()
        .map(mailgate::ldap::sync::read_cache)
    {
        Some(Ok((snapshot, age))) => {
            eprintln!(
                "note: organisation from the LDAP cache file (last applied sync, {age} s old)"
            );
            snapshot
        }
        _ => match ldap_now(&config, &ldap) {
            Ok(snapshot) => {
                eprintln!("note: organisation read from the LDAP server now (no cache file)");
                snapshot
            }
            Err(e) => {
                eprintln!("policy.ldap: {e}");
                return None;
            }
        },
    };
    match config.with_snapshot(&snapshot) {
        Ok(merged) => Some(merged),
        Err(e) => {
            eprintln!("policy.ldap: the synced directory is invalid:\n{e}");
            None
        }
    }
}

/// One read of the LDAP server, for the command line.
fn ldap_now(
    _config: &Config,
    ldap: &mailgate::config::ldap::LdapConfig,
) -> anyhow::Result<mailgate::directory::ldap::Snapshot> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(mailgate::ldap::fetch(ldap))?)
}

/// `--admin`, or `[admin] bind` of the config on loopback: where the running mailgate answers
/// its operator routes.
fn admin_addr(
    admin: Option<std::net::SocketAddr>,
    config: &Path,
) -> anyhow::Result<std::net::SocketAddr> {
    if let Some(a) = admin {
        return Ok(a);
    }
    let loaded = Config::load(config).map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
    let bind = loaded
        .admin
        .map(|a| a.bind)
        .ok_or_else(|| anyhow::anyhow!("{} has no [admin] listener", config.display()))?;
    // The routes answer only on loopback: a wildcard bind is reached there (a bind to one
    // other address cannot serve them; see docs/operations.md "Password guessing").
    let ip = if bind.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        bind.ip()
    };
    Ok(std::net::SocketAddr::new(ip, bind.port()))
}

/// `mailgate directory sync [--dry-run|--force]`.
fn directory_sync(args: SyncArgs) -> anyhow::Result<ExitCode> {
    use mailgate::admin::throttle::ADMIN_HEADER;
    use mailgate::ldap::sync::Report;

    let config = Config::load(&args.config)
        .map_err(|e| anyhow::anyhow!("{}:\n{e}", args.config.display()))?;
    let Some(ldap) = config.policy.ldap.clone() else {
        anyhow::bail!("{}: no [policy.ldap] table", args.config.display());
    };
    if args.dry_run && args.admin.is_none() && config.admin.is_none() {
        // No running server to ask: compare a live read with the last applied sync.
        let old = match ldap.cache_file.as_deref() {
            Some(file) => mailgate::ldap::sync::read_cache(file)
                .map(|(s, _)| s)
                .unwrap_or_default(),
            None => Default::default(),
        };
        let new = ldap_now(&config, &ldap)?;
        let diff = mailgate::directory::ldap::Diff::between(&old, &new);
        println!("{diff}");
        if diff.removed_fraction() > ldap.max_removed_fraction {
            println!(
                "the safety valve would refuse this sync (max_removed_fraction {}); apply it \
                 with --force",
                ldap.max_removed_fraction
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let admin = admin_addr(args.admin, &args.config)?;
    let mut query = Vec::new();
    if args.dry_run {
        query.push(("dry_run", "1"));
    }
    if args.force {
        query.push(("force", "1"));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // A sync of a large tree takes a while: the server's own timeouts bound it.
    let wait = ldap.timeout * 4 + std::time::Duration::from_secs(60);
    let (status, body) = runtime
        .block_on(async {
            let client = reqwest::Client::builder().timeout(wait).build()?;
            let response = client
                .post(format!("http://{admin}/directory/sync"))
                .header(ADMIN_HEADER, "1")
                .query(&query)
                .send()
                .await?;
            let status = response.status();
            Ok::<_, reqwest::Error>((status, response.text().await?))
        })
        .with_context(|| format!("asking the admin listener at {admin}"))?;
    let Ok(report) = serde_json::from_str::<Report>(&body) else {
        anyhow::bail!("{admin} answered {status}: {}", body.trim());
    };
    if !report.changes.is_empty() {
        println!("{}", report.changes);
    }
    match (&report.error, report.applied) {
        (_, true) => {
            println!(
                "applied: {} user(s), {} group(s) in {} ms",
                report.users, report.groups, report.took_ms
            );
            Ok(ExitCode::SUCCESS)
        }
        (None, false) => {
            println!("dry run: nothing applied");
            Ok(ExitCode::SUCCESS)
        }
        (Some(e), false) => {
            eprintln!("not applied: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn explain(
    path: &Path,
    user: &str,
    protocol: Protocol,
    mechanism: Option<MechanismArg>,
    client_id: Option<String>,
    token_user: Option<String>,
    delegated: bool,
) -> anyhow::Result<ExitCode> {
    let arg = mechanism.unwrap_or(match (protocol, &client_id) {
        (_, Some(_)) => MechanismArg::Xoauth2,
        (Protocol::Imap, None) => MechanismArg::Login,
        (Protocol::Pop3, None) => MechanismArg::User,
    });
    let Some(mechanism) = arg.on(protocol) else {
        use clap::CommandFactory as _;
        // The subcommand's own Command, so the usage line printed is explain's, as clap does
        // for every other bad explain flag.
        let mut cli = Cli::command();
        // build() names the subcommands "mailgate explain" (not just "explain") for usage.
        cli.build();
        let explain = cli.find_subcommand_mut("explain").map(std::mem::take);
        explain
            .unwrap_or(cli)
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "--mechanism {} does not exist on {}",
                    clap::ValueEnum::to_possible_value(&arg)
                        .map(|v| v.get_name().to_owned())
                        .unwrap_or_default(),
                    protocol.as_str()
                ),
            )
            .exit();
    };
    if mechanism.is_password() && (client_id.is_some() || token_user.is_some() || delegated) {
        eprintln!(
            "note: --client-id, --token-user and --delegated describe a token; they are ignored \
             for the password mechanism {}",
            mechanism.as_str()
        );
    }
    let Some(config) = load_or_report(path) else {
        return Ok(ExitCode::FAILURE);
    };
    let token = TokenFacts {
        user: token_user.unwrap_or_else(|| user.to_owned()),
        client_id,
        issuer: "mailgate-explain".to_owned(),
        delegated,
    };
    let attempt = Attempt {
        protocol,
        mechanism,
        user,
        token: (!mechanism.is_password()).then_some(&token),
        authzid: None,
    };
    println!(
        "{}",
        policy::explain(&config.directory, &attempt, std::time::SystemTime::now())
    );
    println!("{}", routed(&config, protocol, user));
    print_shared(&config, user, protocol);
    if let Decision::Deny(denial) = policy::decide(&config.directory, &attempt)
        && denial.enforced_at(std::time::SystemTime::now())
    {
        let shown = policy::reply(
            &denial,
            protocol,
            Identity::of(mechanism),
            config.policy.disclose_reasons,
            &config.policy.contact,
        );
        // The line as this protocol sends it: POP3 has its own codes (RFC 2449 / 3206).
        println!(
            "reply      {} {}{}",
            shown.class.wire_prefix(protocol),
            shown.text,
            if shown.specific {
                ""
            } else {
                " (generic: the reason is not disclosed to unproven identities)"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Which upstream this user's logins on `protocol` go to, and why: the directory's `upstream`
/// (and its source) or the listeners' own.
fn routed(config: &Config, protocol: Protocol, user: &str) -> String {
    let protocol_of = |name: &str| config.upstreams.get(name).map(|u| u.protocol);
    let routed = policy::route(&config.directory, user)
        .and_then(|r| Some((r.value.for_protocol(protocol, protocol_of)?, &r.source)));
    match routed {
        Some((name, source)) => format!(
            "routed     {} logins go to upstream {name} (source {source})",
            protocol.as_str()
        ),
        None => {
            let mut names: Vec<&str> = config
                .listeners
                .iter()
                .filter(|l| l.protocol == protocol)
                .map(|l| l.upstream.as_str())
                .collect();
            names.dedup();
            format!(
                "routed     {} logins go to the listener's upstream ({}; source listener)",
                protocol.as_str(),
                if names.is_empty() {
                    "no listener".to_owned()
                } else {
                    names.join(", ")
                }
            )
        }
    }
}

/// `explain`'s shared-mailbox lines: every shared mailbox the user may open, through which
/// assignment, and over which protocols.
fn print_shared(config: &Config, user: &str, protocol: Protocol) {
    if config.directory.shared_mailboxes().is_empty() {
        return;
    }
    let assignments = policy::shared::assignments(&config.directory, user);
    if assignments.is_empty() {
        println!("shared     none (assigned to no shared mailbox)");
    }
    for (a, protocols) in assignments {
        let over = match &protocols {
            None => "any protocol".to_owned(),
            Some(p) => p.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", "),
        };
        // The user's own login (the decision above) must be allowed too: the shared mailbox
        // is opened only for someone who proved who they are under their own policy.
        let here = if policy::shared::open(&config.directory, user, &a.mailbox, protocol).is_ok() {
            "opens when the login above is allowed"
        } else {
            "not over this protocol"
        };
        println!(
            "shared     {} assigned via {} (grant {}, protocols: {over}): {here}",
            a.mailbox, a.via, a.grant
        );
    }
}

fn grant(command: GrantCommand) -> anyhow::Result<ExitCode> {
    use mailgate::grants::admin;
    let path = match &command {
        GrantCommand::Authorize { config, .. }
        | GrantCommand::Status { config }
        | GrantCommand::Revoke { config, .. } => config.clone(),
    };
    let Some(config) = load_or_report(&path) else {
        return Ok(ExitCode::FAILURE);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let mut out = std::io::stdout();
    let result = match command {
        GrantCommand::Authorize {
            name,
            client,
            redirect,
            redirect_port,
            timeout,
            ..
        } => runtime.block_on(admin::authorize(
            &config,
            &name,
            client.as_deref(),
            redirect.then_some(redirect_port),
            std::time::Duration::from_secs(timeout),
            &mut out,
        )),
        GrantCommand::Status { .. } => admin::status(&config, &mut out),
        GrantCommand::Revoke { name, .. } => {
            runtime.block_on(admin::revoke(&config, &name, &mut out))
        }
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("mailgate grant: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn groups(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let Some(config) = load_or_report(path) else {
        return Ok(ExitCode::FAILURE);
    };
    if config.directory.is_builtin() {
        println!("no [policy] directory configured: no groups");
        return Ok(ExitCode::SUCCESS);
    }
    if json {
        println!(
            "{}",
            mailgate::directory::report::groups_json(&config.directory)
        );
    } else {
        println!("{}", mailgate::directory::report::groups(&config.directory));
    }
    Ok(ExitCode::SUCCESS)
}

fn run(path: &Path) -> anyhow::Result<ExitCode> {
    // Exactly what `check` refuses, with the same text (the unit's ExecStartPre runs check).
    let Some(config) = startup_or_report(path, |_| {}) else {
        return Ok(ExitCode::FAILURE);
    };
    init_tracing(&config.log.filter)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    raise_fd_limit(config.limits.max_connections);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(path, config))
}

async fn serve(path: &Path, config: Config) -> anyhow::Result<ExitCode> {
    use mailgate::admin::{self, Readiness};
    use mailgate::audit::Audit;
    use mailgate::metrics::Metrics;
    use mailgate::server::Services;
    use tokio::signal::unix::{SignalKind, signal};

    // Handlers first: from the moment "listening" is logged, SIGTERM must drain, SIGHUP reload
    // and SIGUSR1 reopen (a handler installed later leaves a window where the default action
    // kills the process).
    let shutdown = shutdown_signal();
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    let (audit, writer) = Audit::open(&config.audit).context("opening the audit log")?;
    let writer = writer.map(|w| tokio::spawn(w.run()));
    let services = Services {
        audit: audit.clone(),
        metrics: Arc::new(Metrics::new()),
        readiness: Readiness::new(),
    };
    // With `[policy.ldap]`: the first sync (or the cache file, loudly) before any listener.
    let (config, snapshot, _) = mailgate::ldap::sync::start(config, &services)
        .await
        .context("reading the organisation from LDAP ([policy.ldap])")?;
    let server = Server::bind_with(&config, services.clone())
        .await
        .context("starting listeners")?;
    if let Some(snapshot) = snapshot {
        server.reloader().set_snapshot(snapshot);
    }
    let syncer = mailgate::ldap::sync::Syncer::new(server.reloader());
    let syncs = tokio::spawn(syncer.clone().run());
    let reloads = tokio::spawn(mailgate::config::reload::watch(
        path.to_path_buf(),
        server.reloader(),
        None,
    ));
    let reopen = tokio::spawn({
        let audit = audit.clone();
        async move {
            while usr1.recv().await.is_some() {
                tracing::info!("SIGUSR1: reopening the audit log");
                audit.reopen();
            }
        }
    });
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = match &config.admin {
        Some(a) => {
            let listener = tokio::net::TcpListener::bind(a.bind)
                .await
                .with_context(|| format!("binding the admin listener {}", a.bind))?;
            tracing::info!(
                addr = %a.bind,
                "admin listening (/metrics, /healthz, /readyz, /throttle, /directory/sync)"
            );
            let metrics = services.metrics.clone();
            let audit = audit.clone();
            let stats = tokio::spawn(async move {
                // The audit sink's own counters, mirrored into the registry for scrapes.
                loop {
                    let s = audit.stats();
                    metrics.set_audit_stats(s.dropped, s.errors);
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            });
            let routes = admin::router(services.metrics.clone(), services.readiness.clone())
                .merge(admin::throttle::routes(
                    server.reloader().shared().throttle.clone(),
                ))
                .merge(mailgate::ldap::sync::routes(syncer.clone()));
            let serve = admin::serve_router(listener, routes, *a, async {
                let _ = admin_stopped.await;
            });
            Some((tokio::spawn(serve), stats))
        }
        None => None,
    };
    server.run(shutdown).await;
    reloads.abort();
    syncs.abort();
    reopen.abort();
    if let Some((serve, stats)) = admin {
        stats.abort();
        let _ = admin_stop.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), serve).await;
    }
    // Every record queued by the sessions that just ended reaches the file.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), audit.close()).await;
    if let Some(writer) = writer {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `mailgate throttle status|clear`: one request to the admin listener's `/throttle` routes.
fn throttle(command: ThrottleCommand) -> anyhow::Result<ExitCode> {
    use mailgate::admin::throttle::ADMIN_HEADER;

    let (args, clear) = match command {
        ThrottleCommand::Status(args) => (args, false),
        ThrottleCommand::Clear(args) => (args, true),
    };
    let ThrottleArgs {
        user,
        ip,
        admin,
        config,
    } = args;
    anyhow::ensure!(
        user.is_some() || ip.is_some(),
        "give --user or --ip (or both for status)"
    );
    anyhow::ensure!(
        !(clear && user.is_some() && ip.is_some()),
        "clear one thing at a time: --user or --ip"
    );
    let admin = admin_addr(admin, &config)?;
    let mut query = Vec::new();
    if let Some(user) = &user {
        query.push(("user", user.clone()));
    }
    if let Some(ip) = ip {
        query.push(("ip", ip.to_string()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (status, body) = runtime
        .block_on(async {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()?;
            let request = if clear {
                client
                    .post(format!("http://{admin}/throttle/clear"))
                    .header(ADMIN_HEADER, "1")
            } else {
                client.get(format!("http://{admin}/throttle"))
            };
            let response = request.query(&query).send().await?;
            let status = response.status();
            Ok::<_, reqwest::Error>((status, response.text().await?))
        })
        .with_context(|| format!("asking the admin listener at {admin}"))?;
    anyhow::ensure!(
        status.is_success(),
        "{admin} answered {status}: {}",
        body.trim()
    );
    print!("{body}");
    Ok(ExitCode::SUCCESS)
}

fn audit_tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    use mailgate::audit::tail;
    use mailgate::config::AuditSink;

    let file = match args.file {
        Some(file) => file,
        None => {
            // Only [audit] is read: a broken directory.toml must not hide the record of the
            // reload it broke.
            let audit = Config::load_audit(&args.config)
                .map_err(|e| anyhow::anyhow!("{}:\n{e}", args.config.display()))?;
            match audit.sink {
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
            mailbox: args.mailbox,
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
    let filter = mailgate::config::reload::quiet_backend(&filter);
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

/// Installs the SIGTERM/SIGINT handlers now (inside the runtime) and returns the future that
/// resolves on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    }
}

/// Two descriptors per session (downstream and upstream) plus some headroom: raise the soft
/// `RLIMIT_NOFILE` to the hard limit, and warn when even that cannot hold `max_connections`.
fn raise_fd_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(256);
    if limit.rlim_cur < needed {
        tracing::warn!(
            limit = limit.rlim_cur,
            needed,
            "open-file limit is below 2 x limits.max_connections; raise LimitNOFILE"
        );
    }
}
