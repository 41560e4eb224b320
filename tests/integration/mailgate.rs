//! mailgate in-process on 127.0.0.1:0, in front of a harness [`Dovecot`] (mini-redis style).
//!
//! Listeners, each on a free port: `imaps` (implicit TLS), `imap` (STARTTLS), `imap-plain`
//! (no TLS, loopback), and the same three for POP3. The downstream certificate is the repo's
//! test leaf `certs/localhost.pem`, issued by `certs/ca.pem` ([`Mailgate::ca_pem`]).

#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use mailgate::config::Config;
use mailgate::server::Server;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::dovecot::Dovecot;

const LISTENERS: [(&str, &str, &str, &str); 6] = [
    ("imaps", "imap", "implicit", "up-imap"),
    ("imap", "imap", "starttls", "up-imap"),
    ("imap-plain", "imap", "none", "up-imap"),
    ("pop3s", "pop3", "implicit", "up-pop3"),
    ("pop3", "pop3", "starttls", "up-pop3"),
    ("pop3-plain", "pop3", "none", "up-pop3"),
];

/// How mailgate reaches one upstream protocol.
#[derive(Clone)]
pub struct UpstreamSpec {
    pub addresses: Vec<String>,
    pub tls: &'static str,
    pub ca_file: PathBuf,
}

#[must_use = "call start() to run mailgate"]
pub struct MailgateBuilder {
    imap: UpstreamSpec,
    pop3: UpstreamSpec,
    limits: String,
    upstream_extra: String,
    imap_upstream_extra: String,
    extra: String,
    listeners: Vec<(String, String, String, String)>,
    files: Option<tempfile::TempDir>,
    login_timeout: String,
}

impl MailgateBuilder {
    pub fn imap_upstream(mut self, spec: UpstreamSpec) -> Self {
        self.imap = spec;
        self
    }

    pub fn pop3_upstream(mut self, spec: UpstreamSpec) -> Self {
        self.pop3 = spec;
        self
    }

    /// Raw lines added to both `[[upstream]]` tables, e.g. `send_id = true`.
    pub fn upstream_options(mut self, lines: &str) -> Self {
        self.upstream_extra.push_str(lines);
        self.upstream_extra.push('\n');
        self
    }

    /// Raw lines added to the IMAP `[[upstream]]` table only, e.g. `send_id = true` (which
    /// the config refuses on a POP3 upstream).
    pub fn imap_upstream_options(mut self, lines: &str) -> Self {
        self.imap_upstream_extra.push_str(lines);
        self.imap_upstream_extra.push('\n');
        self
    }

    /// Raw TOML appended to the config (`[audit]`, `[[oauth.provider]]`, ...).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// One more listener on a free port (`lines`: extra keys such as `proxy_protocol`).
    pub fn listener(mut self, name: &str, protocol: &str, tls: &str, lines: &str) -> Self {
        self.listeners
            .push((name.into(), protocol.into(), tls.into(), lines.into()));
        self
    }

    /// A private directory for `[policy]`: writes `directory` to a temp file and adds a
    /// `[policy]` table naming it, plus `policy_lines` (`revoke_on_reload = true`, ...).
    pub fn policy(mut self, directory: &str, policy_lines: &str) -> Self {
        let dir = self.files();
        std::fs::write(dir.join("directory.toml"), directory).expect("write directory");
        self.extra += &format!(
            "[policy]\ndirectory = \"{}\"\n{policy_lines}\n",
            dir.join("directory.toml").display()
        );
        self
    }

    /// A temp dir that lives as long as the mailgate (directory files, audit logs).
    pub fn files(&mut self) -> PathBuf {
        self.files
            .get_or_insert_with(|| tempfile::tempdir().expect("tempdir"))
            .path()
            .to_path_buf()
    }

    /// `login_timeout` of both `[[upstream]]` tables (default `"5s"`), e.g. `"1s"` for a fault
    /// test whose upstream stalls.
    pub fn login_timeout(mut self, limit: &str) -> Self {
        self.login_timeout = limit.into();
        self
    }

    /// Raw lines for the `[limits]` table, e.g. `auth_timeout = "1s"`.
    pub fn limits(mut self, lines: &str) -> Self {
        self.limits.push_str(lines);
        self.limits.push('\n');
        self
    }

    pub fn toml(&self) -> String {
        let repo = env!("CARGO_MANIFEST_DIR");
        let mut t = String::new();
        for (name, protocol, tls, upstream) in LISTENERS {
            t += &format!(
                "[[listener]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\n\
                 bind = \"127.0.0.1:0\"\ntls = \"{tls}\"\nupstream = \"{upstream}\"\n\n"
            );
        }
        for (name, protocol, tls, lines) in &self.listeners {
            t += &format!(
                "[[listener]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\n\
                 bind = \"127.0.0.1:0\"\ntls = \"{tls}\"\nupstream = \"up-{protocol}\"\n{lines}\n\n"
            );
        }
        for (name, protocol, spec) in [
            ("up-imap", "imap", &self.imap),
            ("up-pop3", "pop3", &self.pop3),
        ] {
            let addresses: Vec<String> =
                spec.addresses.iter().map(|a| format!("\"{a}\"")).collect();
            let only = if protocol == "imap" {
                self.imap_upstream_extra.as_str()
            } else {
                ""
            };
            t += &format!(
                "[[upstream]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\naddresses = [{}]\n\
                 tls = \"{}\"\nserver_name = \"localhost\"\nca_file = \"{}\"\n\
                 connect_timeout = \"2s\"\nlogin_timeout = \"{}\"\n{}{only}\n",
                addresses.join(", "),
                spec.tls,
                spec.ca_file.display(),
                self.login_timeout,
                self.upstream_extra,
            );
        }
        t += &format!(
            "[tls]\ncert_file = \"{repo}/certs/localhost.pem\"\nkey_file = \"{repo}/certs/localhost.key\"\n\n"
        );
        // Tests make many failed logins from 127.0.0.1: no tarpit unless a test asks for one,
        // and refusals not held to a floor (issue 10 pacing) unless a test asks for one.
        let mut delay = String::new();
        if !self.limits.contains("login_failure_delay") {
            delay += "login_failure_delay = \"0s\"\n";
        }
        if !self.limits.contains("refusal_delay_min") {
            delay += "refusal_delay_min = \"0s\"\n";
        }
        t += &format!(
            "[limits]\n{delay}{}\n[log]\nfilter = \"debug\"\n",
            self.limits
        );
        t += &self.extra;
        t
    }

    pub async fn start(self) -> Mailgate {
        self.start_with(mailgate::server::Services::default()).await
    }

    /// Start with the given services (an audit sink, a metrics registry to scrape).
    pub async fn start_with(mut self, services: mailgate::server::Services) -> Mailgate {
        capture_logs();
        let toml = self.toml();
        let config = Config::from_toml(&toml, std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|e| panic!("test config rejected:\n{e}\n---\n{toml}"));
        let extra: Vec<String> = self.listeners.iter().map(|l| l.0.clone()).collect();
        let mut mailgate = Self::serve_with(config, services, &extra).await;
        mailgate.files = self.files.take();
        mailgate
    }

    /// Start with `[policy.ldap]` as `mailgate run` does: the first sync (or, with the server
    /// down, `cache_file`) before any listener; `Err` is what `mailgate run` would exit with.
    /// The returned mailgate's `syncer` runs further syncs (not periodically unless a test
    /// spawns its `run()`).
    pub async fn start_ldap(
        mut self,
        services: mailgate::server::Services,
    ) -> Result<Mailgate, mailgate::ldap::SyncError> {
        capture_logs();
        let toml = self.toml();
        let config = Config::from_toml(&toml, std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|e| panic!("test config rejected:\n{e}\n---\n{toml}"));
        let (config, snapshot, _) = mailgate::ldap::sync::start(config, &services).await?;
        let extra: Vec<String> = self.listeners.iter().map(|l| l.0.clone()).collect();
        let mut mailgate = Self::serve_with(config, services, &extra).await;
        if let Some(snapshot) = snapshot {
            mailgate.reloader.set_snapshot(snapshot);
        }
        mailgate.syncer = Some(mailgate::ldap::sync::Syncer::new(mailgate.reloader.clone()));
        mailgate.files = self.files.take();
        Ok(mailgate)
    }

    /// Like [`start`](Self::start), but from a config file at `path` that is watched for
    /// changes (and SIGHUP) as `mailgate run` does; each reload's outcome arrives on the
    /// returned channel, the readiness signal for tests that edit the file.
    pub async fn start_watching(
        mut self,
        path: &std::path::Path,
    ) -> (
        Mailgate,
        tokio::sync::mpsc::Receiver<mailgate::config::reload::Outcome>,
    ) {
        capture_logs();
        std::fs::write(path, self.toml()).expect("write config");
        let config = Config::load(path).unwrap_or_else(|e| panic!("test config rejected:\n{e}"));
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut mailgate = Self::serve(config).await;
        mailgate.files = self.files.take();
        let reloader = mailgate.reloader.clone();
        mailgate.watcher = Some(tokio::spawn(mailgate::config::reload::watch(
            path.to_path_buf(),
            reloader,
            Some(tx),
        )));
        (mailgate, rx)
    }

    async fn serve(config: Config) -> Mailgate {
        Self::serve_with(config, mailgate::server::Services::default(), &[]).await
    }

    async fn serve_with(
        config: Config,
        services: mailgate::server::Services,
        extra: &[String],
    ) -> Mailgate {
        let server = Server::bind_with(&config, services.clone())
            .await
            .expect("mailgate binds");
        let addrs = LISTENERS
            .iter()
            .map(|(name, ..)| name.to_string())
            .chain(extra.iter().cloned())
            .map(|name| {
                let addr = server.local_addr(&name).expect("bound");
                (name, addr)
            })
            .collect();
        let (stop, stopped) = oneshot::channel::<()>();
        let reloader = server.reloader();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Mailgate {
            addrs,
            stop: Some(stop),
            task,
            reloader,
            watcher: None,
            files: None,
            services,
            syncer: None,
        }
    }
}

pub struct Mailgate {
    addrs: Vec<(String, SocketAddr)>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    pub reloader: mailgate::server::Reloader,
    watcher: Option<JoinHandle<()>>,
    files: Option<tempfile::TempDir>,
    pub services: mailgate::server::Services,
    /// Set by [`MailgateBuilder::start_ldap`].
    pub syncer: Option<mailgate::ldap::sync::Syncer>,
}

impl Mailgate {
    /// In front of `dovecot`: IMAP upstream over implicit TLS, POP3 upstream over STLS, both
    /// verified against the harness CA.
    pub fn builder(dovecot: &Dovecot) -> MailgateBuilder {
        Self::builder_for(
            UpstreamSpec {
                addresses: vec![dovecot.imaps_addr.to_string()],
                tls: "implicit",
                ca_file: dovecot.ca_pem.clone(),
            },
            UpstreamSpec {
                addresses: vec![dovecot.pop3_addr.to_string()],
                tls: "starttls",
                ca_file: dovecot.ca_pem.clone(),
            },
        )
    }

    /// In front of upstreams that are not a harness Dovecot (the fakes of `fake.rs`).
    pub fn builder_for(imap: UpstreamSpec, pop3: UpstreamSpec) -> MailgateBuilder {
        MailgateBuilder {
            imap,
            pop3,
            limits: String::new(),
            upstream_extra: String::new(),
            imap_upstream_extra: String::new(),
            extra: String::new(),
            listeners: Vec::new(),
            files: None,
            login_timeout: "5s".into(),
        }
    }

    pub async fn start(dovecot: &Dovecot) -> Mailgate {
        Self::builder(dovecot).start().await
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(name, _)| name == listener)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener {listener}"))
    }

    /// The CA that issued mailgate's downstream certificate.
    pub fn ca_pem() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("certs/ca.pem")
    }
}

impl Mailgate {
    /// SIGTERM, in-process: stop accepting and drain; resolves when the server has finished.
    pub fn shutdown(&mut self) -> JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        tokio::spawn(async move {
            tokio::time::timeout(std::time::Duration::from_secs(30), task)
                .await
                .expect("drain finishes within 30 s")
                .expect("server task");
        })
    }
}

impl Drop for Mailgate {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
    }
}

/// Everything every in-process mailgate logged in this test binary, at TRACE level.
static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

fn logs() -> &'static Mutex<Vec<u8>> {
    LOGS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Route mailgate's tracing output, at the most verbose level, into [`captured_logs`]. Once per
/// process; tests share the buffer, so a test looks for strings only it used.
fn capture_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        logs().lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// All log output captured so far.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&logs().lock().expect("log buffer")).into_owned()
}
