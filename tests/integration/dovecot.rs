//! A private Dovecot 2.3 per test, on loopback, as the real upstream.
//!
//! Each [`Dovecot`] owns a temp dir holding its config, `base_dir`, `state_dir`, log,
//! passwd-file, test PKI and one Maildir per user, and listens on four free ports:
//! IMAP (STARTTLS), IMAPS, POP3 (STLS) and POP3S. Many run side by side: nothing is
//! shared with the system Dovecot or with each other. `Drop` stops it and removes the dir.
//!
//! Running as root (CI): login processes use Debian's `dovenull`, auth uses `dovecot`,
//! and mail processes run as `nobody`, because Dovecot refuses mail access as UID/GID 0
//! ("Mail access not allowed for root"); the Maildirs are chowned to `nobody`. As a normal
//! user everything runs as that user with chroots off (Dovecot's rootless mode).
//!
//! Settings worth knowing when reading test results:
//! - `auth_failure_delay = 0` and no anvil auth penalty: a wrong password is answered at
//!   once (by default Dovecot waits 2 s, doubling per failure from the same IP up to 15 s).
//! - `login_trusted_networks = 127.0.0.1` (switch off with
//!   [`DovecotBuilder::trusted_loopback`]): Dovecot then accepts `ID x-originating-ip` and
//!   POP3 `XCLIENT` from the proxy, and exempts it from the auth penalty.
//! - Connections from 127.0.0.1 to 127.0.0.1 count as "secured" for Dovecot, so plaintext
//!   logins work on the non-TLS ports too (`disable_plaintext_auth = no` says so anyway).
//! - `mail_max_userip_connections = 1000`: proxy tests may hold many sessions per user.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::fixtures;
use crate::pki::{self, TestPki};
use crate::util::free_port;

/// How long [`Dovecot::start`] waits for every listener to greet.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `Drop` waits for the master to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Start attempts; a retry only happens when a picked port was taken in between.
const START_ATTEMPTS: usize = 3;

/// A mail account known to the harness Dovecot.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub password: String,
}

impl User {
    pub fn new(name: &str, password: &str) -> User {
        User {
            name: name.to_string(),
            password: password.to_string(),
        }
    }
}

/// Options for a harness Dovecot. [`Dovecot::start`] uses the defaults.
#[must_use = "call start() to run Dovecot"]
pub struct DovecotBuilder {
    users: Vec<User>,
    trusted_loopback: bool,
    extra_config: String,
    oauth2: Option<String>,
}

impl DovecotBuilder {
    /// Replaces the default users (alice and bob).
    pub fn users(mut self, users: Vec<User>) -> Self {
        self.users = users;
        self
    }

    /// Whether 127.0.0.1 is in `login_trusted_networks` (default: yes).
    pub fn trusted_loopback(mut self, trusted: bool) -> Self {
        self.trusted_loopback = trusted;
        self
    }

    /// Appends raw lines to `dovecot.conf` (later settings override earlier ones).
    pub fn extra_config(mut self, lines: &str) -> Self {
        self.extra_config.push_str(lines);
        self.extra_config.push('\n');
        self
    }

    /// Adds an oauth2 passdb (before passwd-file) for XOAUTH2 and OAUTHBEARER, configured by
    /// `settings`: the lines of `dovecot-oauth2.conf.ext` (Dovecot 2.3 `passdb oauth2` args),
    /// e.g. `introspection_mode = post` and `introspection_url = http://id:secret@host/path`.
    pub fn oauth2(mut self, settings: &str) -> Self {
        self.oauth2 = Some(settings.to_string());
        self
    }

    /// Starts Dovecot and waits until all four listeners greet. Panics (with the log) if it
    /// does not come up within [`START_TIMEOUT`].
    pub fn start(self) -> Dovecot {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match Dovecot::try_start(&self) {
                Ok(d) => return d,
                // Another process took one of our free ports between probe and bind.
                Err(Failure::PortTaken(log)) => last_error = log,
                Err(Failure::Other(msg)) => panic!("dovecot did not start: {msg}"),
            }
        }
        panic!("dovecot did not start: ports kept being taken:\n{last_error}");
    }
}

enum Failure {
    PortTaken(String),
    Other(String),
}

/// A running private Dovecot. Stopped and deleted on drop.
pub struct Dovecot {
    pub imap_addr: SocketAddr,
    pub imaps_addr: SocketAddr,
    pub pop3_addr: SocketAddr,
    pub pop3s_addr: SocketAddr,
    /// CA that issued Dovecot's certificate (for `localhost` and `127.0.0.1`).
    pub ca_pem: PathBuf,
    pub users: Vec<User>,
    /// How long start took, config writing included (for reports).
    pub startup: Duration,
    pki: TestPki,
    child: Option<Child>,
    mail_owner: Option<(u32, u32)>,
    deliveries: AtomicU32,
    // Last, so it is removed after the process is gone.
    dir: TempDir,
}

impl Dovecot {
    /// Default users: `alice@example.com` / `alice-secret`, `bob@example.com` / `bob-secret`.
    pub fn builder() -> DovecotBuilder {
        DovecotBuilder {
            users: vec![
                User::new("alice@example.com", "alice-secret"),
                User::new("bob@example.com", "bob-secret"),
            ],
            trusted_loopback: true,
            extra_config: String::new(),
            oauth2: None,
        }
    }

    /// Starts a Dovecot with the defaults.
    pub fn start() -> Dovecot {
        Dovecot::builder().start()
    }

    /// The user named `name`. Panics if there is none.
    pub fn user(&self, name: &str) -> &User {
        self.users
            .iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("no harness user {name}"))
    }

    /// The first user (alice by default).
    pub fn alice(&self) -> &User {
        &self.users[0]
    }

    /// The Maildir of `user` (has `cur/`, `new/`, `tmp/`).
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("home").join(user).join("Maildir")
    }

    /// The messages `user`'s INBOX started with, in sequence-number order.
    pub fn messages(&self, user: &str) -> Vec<Vec<u8>> {
        fixtures::inbox(user)
    }

    /// Delivers `message` into `user`'s INBOX as an MDA would: written to `tmp/`, then
    /// renamed into `new/`, so Dovecot never sees a partial file. Returns the final path.
    pub fn deliver(&self, user: &str, message: &[u8]) -> PathBuf {
        let maildir = self.maildir(user);
        let n = self.deliveries.fetch_add(1, Ordering::Relaxed);
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let name = format!("{secs}.M{n}P{}Q{n}.mailgate-test", std::process::id());
        let tmp = maildir.join("tmp").join(&name);
        let new = maildir.join("new").join(&name);
        fs::write(&tmp, message).expect("write tmp message");
        self.chown(&tmp);
        fs::rename(&tmp, &new).expect("rename into new/");
        new
    }

    /// Dovecot's log so far (all services log here).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// The temp dir holding config, sockets, log and mail.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA behind Dovecot's certificate; issue more leaves (e.g. for the proxy) from it.
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    fn try_start(opts: &DovecotBuilder) -> Result<Dovecot, Failure> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("mailgate-dovecot-")
            .tempdir()
            .map_err(|e| Failure::Other(format!("temp dir: {e}")))?;
        let root = dir.path();
        // Dovecot's auth (user `dovecot`) reads the passwd-file and mail processes
        // (`nobody`) open the Maildirs: they must be able to traverse the dir.
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        for sub in ["run", "state", "home"] {
            fs::create_dir(root.join(sub)).expect("mkdir");
        }

        let pki = TestPki::new(root, "mailgate test CA (dovecot)");
        let leaf = pki.issue("dovecot", &["localhost", "127.0.0.1"]);

        let mail_owner = mail_owner();
        let mut passwd = String::new();
        for user in &opts.users {
            let home = root.join("home").join(&user.name);
            let maildir = home.join("Maildir");
            for sub in ["cur", "new", "tmp"] {
                fs::create_dir_all(maildir.join(sub)).expect("mkdir maildir");
            }
            // Old, increasing timestamps in the names: Dovecot assigns UIDs to new
            // Maildir files in timestamp order, so sequence numbers match fixture order.
            for (i, msg) in fixtures::inbox(&user.name).iter().enumerate() {
                let name = format!("{}.M{i}P1.mailgate-test:2,", 1_000_000_000 + i);
                fs::write(maildir.join("cur").join(name), msg).expect("write message");
            }
            // user:password:uid:gid:gecos:home:shell:extra (uid/gid come from mail_uid).
            passwd.push_str(&format!(
                "{}:{{PLAIN}}{}::::{}::\n",
                user.name,
                user.password,
                home.display()
            ));
            if let Some(owner) = mail_owner {
                chown_tree(&home, owner);
            }
        }
        let passwd_path = root.join("passwd");
        fs::write(&passwd_path, passwd).expect("write passwd");
        if let Some(settings) = &opts.oauth2 {
            fs::write(root.join("dovecot-oauth2.conf.ext"), settings).expect("write oauth2 conf");
        }

        let ports = [free_port(), free_port(), free_port(), free_port()];
        let conf = config(
            root,
            &leaf.cert_pem,
            &leaf.key_pem,
            &passwd_path,
            ports,
            opts,
        );
        let conf_path = root.join("dovecot.conf");
        fs::write(&conf_path, conf).expect("write dovecot.conf");

        let stdout = fs::File::create(root.join("dovecot.stdout")).expect("stdout file");
        let stderr = stdout.try_clone().expect("dup");
        let mut cmd = Command::new(dovecot_binary());
        cmd.arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // Own process group, so Drop can signal the master and all its children at once
        // (signalling only the master makes it wait ~1 s for its children).
        cmd.process_group(0);
        // If the test process dies without running Drop (killed by a runner timeout),
        // the master gets SIGTERM. Note: the signal fires when the spawning *thread*
        // exits, so start Dovecot from the test's own thread (not a pool thread).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Failure::Other(format!("spawn {}: {e}", dovecot_binary())))?;

        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let mut dovecot = Dovecot {
            imap_addr: addr(ports[0]),
            imaps_addr: addr(ports[1]),
            pop3_addr: addr(ports[2]),
            pop3s_addr: addr(ports[3]),
            ca_pem: pki.ca_pem().to_path_buf(),
            users: opts.users.clone(),
            startup: Duration::ZERO,
            pki,
            child: Some(child),
            mail_owner,
            deliveries: AtomicU32::new(0),
            dir,
        };
        dovecot.wait_ready()?;
        dovecot.startup = started.elapsed();
        Ok(dovecot)
    }

    /// Readiness: every listener answers with its greeting (after the TLS handshake on the
    /// implicit-TLS ports), polled at short intervals up to [`START_TIMEOUT`].
    fn wait_ready(&mut self) -> Result<(), Failure> {
        let deadline = Instant::now() + START_TIMEOUT;
        let tls = pki::client_config(&self.ca_pem);
        let checks: [(SocketAddr, bool, &str); 4] = [
            (self.imap_addr, false, "* OK"),
            (self.imaps_addr, true, "* OK"),
            (self.pop3_addr, false, "+OK"),
            (self.pop3s_addr, true, "+OK"),
        ];
        let mut pending: Vec<_> = checks.to_vec();
        let mut last = String::new();
        while !pending.is_empty() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = format!("{}\n{}", self.log(), self.stdout());
                return Err(if log.contains("Address already in use") {
                    Failure::PortTaken(log)
                } else {
                    Failure::Other(format!("dovecot exited with {status}:\n{log}"))
                });
            }
            if Instant::now() > deadline {
                return Err(Failure::Other(format!(
                    "not ready after {START_TIMEOUT:?} ({last}); log:\n{}\n{}",
                    self.log(),
                    self.stdout()
                )));
            }
            pending.retain(|(addr, tls_on, greeting)| {
                match greet(*addr, tls_on.then(|| tls.clone())) {
                    Ok(line) if line.starts_with(greeting) => false,
                    Ok(line) => {
                        last = format!("{addr}: unexpected greeting {line:?}");
                        true
                    }
                    Err(e) => {
                        last = format!("{addr}: {e}");
                        true
                    }
                }
            });
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn stdout(&self) -> String {
        fs::read_to_string(self.dir.path().join("dovecot.stdout")).unwrap_or_default()
    }

    fn chown(&self, path: &Path) {
        if let Some((uid, gid)) = self.mail_owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM to the whole group (master, login, auth, imap/pop3 processes) stops it in
        // milliseconds; SIGKILL to the group is the bounded fallback.
        let group = child.id() as libc::pid_t;
        unsafe {
            libc::killpg(group, libc::SIGTERM);
        }
        let stopping = Instant::now();
        let deadline = stopping + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    unsafe {
                        libc::killpg(group, libc::SIGKILL);
                    }
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        if std::env::var_os("MAILGATE_TEST_TIMING").is_some() {
            eprintln!("dovecot stopped in {:?}", stopping.elapsed());
        }
        if std::thread::panicking() {
            eprintln!(
                "---- dovecot log ({}) ----\n{}",
                self.dir.path().display(),
                self.log()
            );
        }
    }
}

/// Connects, optionally does TLS, and reads the first line.
fn greet(
    addr: SocketAddr,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<String, String> {
    let timeout = Duration::from_millis(500);
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    match tls {
        None => {
            BufReader::new(tcp)
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
        }
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            stream.flush().map_err(|e| e.to_string())?;
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
            line = String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    Ok(line)
}

fn dovecot_binary() -> String {
    if let Ok(path) = std::env::var("MAILGATE_TEST_DOVECOT") {
        return path;
    }
    if Path::new("/usr/sbin/dovecot").exists() {
        return "/usr/sbin/dovecot".into();
    }
    "dovecot".into()
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// The uid/gid mail processes run as when we are root: `nobody`/`nogroup`.
fn mail_owner() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    Some((
        lookup_uid("nobody").unwrap_or(65534),
        lookup_gid("nogroup").unwrap_or(65534),
    ))
}

fn lookup_uid(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    (!pw.is_null()).then(|| unsafe { (*pw).pw_uid })
}

fn lookup_gid(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    (!gr.is_null()).then(|| unsafe { (*gr).gr_gid })
}

/// Names of the effective user and group (for Dovecot's rootless mode).
fn current_user_and_group() -> (String, String) {
    let pw = unsafe { libc::getpwuid(libc::geteuid()) };
    let gr = unsafe { libc::getgrgid(libc::getegid()) };
    assert!(!pw.is_null(), "no passwd entry for the current user");
    assert!(!gr.is_null(), "no group entry for the current group");
    let user = unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) };
    let group = unsafe { std::ffi::CStr::from_ptr((*gr).gr_name) };
    (
        user.to_string_lossy().into_owned(),
        group.to_string_lossy().into_owned(),
    )
}

fn chown_tree(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    if path.is_dir() {
        for entry in fs::read_dir(path).expect("read_dir") {
            chown_tree(&entry.expect("entry").path(), (uid, gid));
        }
    }
}

fn config(
    root: &Path,
    cert: &Path,
    key: &Path,
    passwd: &Path,
    [imap, imaps, pop3, pop3s]: [u16; 4],
    opts: &DovecotBuilder,
) -> String {
    let root_s = root.display();
    let instance = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mailgate-dovecot".into());
    let users = if is_root() {
        "mail_uid = nobody\nmail_gid = nogroup\n".to_string()
    } else {
        // Rootless mode: everything runs as us, so no chroots.
        let (me, group) = current_user_and_group();
        format!(
            "default_login_user = {me}\ndefault_internal_user = {me}\n\
             default_internal_group = {group}\n\
             service anvil {{\n  chroot =\n}}\n\
             service imap-login {{\n  chroot =\n}}\n\
             service pop3-login {{\n  chroot =\n}}\n"
        )
    };
    let (mechanisms, oauth2) = match opts.oauth2 {
        Some(_) => (
            "plain login xoauth2 oauthbearer",
            format!(
                "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  \
                 args = {}/dovecot-oauth2.conf.ext\n}}\n",
                root.display()
            ),
        ),
        None => ("plain login", String::new()),
    };
    let trusted = if opts.trusted_loopback {
        "login_trusted_networks = 127.0.0.1/32\n"
    } else {
        ""
    };
    format!(
        r#"# Written by the mailgate test harness; private to one test.
instance_name = {instance}
base_dir = {root_s}/run
state_dir = {root_s}/state
log_path = {root_s}/dovecot.log
info_log_path = {root_s}/dovecot.log
debug_log_path = {root_s}/dovecot.log
log_timestamp = "%Y-%m-%d %H:%M:%S "
protocols = imap pop3
listen = 127.0.0.1
shutdown_clients = yes
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
auth_failure_delay = 0
auth_verbose = yes
{trusted}mail_location = maildir:~/Maildir
{users}
{oauth2}passdb {{
  driver = passwd-file
  args = scheme=PLAIN {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
# No per-IP auth penalty (exponential delay up to 15 s after failed logins): every test
# logs in from 127.0.0.1 and refusals are the point of many tests. Dovecot disables the
# penalty when this socket does not exist, and mode 0 means "do not create it".
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol imap {{
  mail_max_userip_connections = 1000
}}
protocol pop3 {{
  mail_max_userip_connections = 1000
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s}
    ssl = yes
  }}
}}
{extra}"#,
        cert = cert.display(),
        key = key.display(),
        passwd = passwd.display(),
        extra = opts.extra_config,
    )
}
