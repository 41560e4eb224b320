//! A private OpenLDAP `slapd` per test, like the private Dovecot: its own `slapd.conf` and
//! database in a temp dir, loaded offline with `slapadd`, listening on loopback free ports for
//! `ldap://` (StartTLS offered) and `ldaps://`, with the repo's test certificate
//! (`certs/localhost.pem`, issued by `certs/ca.pem`). Ready once an anonymous base search
//! answers (bounded by [`START_TIMEOUT`]). Changes between syncs go through the real
//! `ldapmodify` / `ldapdelete` / `ldapmodrdn` as the root DN.
//!
//! The suffix is `dc=example,dc=com`; mailgate binds as `cn=mailgate,dc=example,dc=com` with
//! [`READER_PASSWORD`]. `pwdAccountLockedTime` comes from the `ppolicy` overlay. Like Active
//! Directory (MaxPageSize 1000) the server answers a plain search with at most 500 entries
//! (`sizeLimitExceeded` beyond), while a paged search may return any number.
//!
//! Active Directory entries are imitated with [`AD_SCHEMA`], a small test-only schema (labelled
//! as such, private OIDs) for `user`, `group`, `sAMAccountName`, `userPrincipalName`,
//! `userAccountControl` and `objectCategory`: AD's attribute names and value shapes, not AD.

#![allow(dead_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::util::free_port;

pub const BASE: &str = "dc=example,dc=com";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=com";
const ROOT_PASSWORD: &str = "root-secret";
pub const READER_DN: &str = "cn=mailgate,dc=example,dc=com";
pub const READER_PASSWORD: &str = "reader-secret";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// TEST ONLY: Active Directory's attribute and class names on OpenLDAP, so the
/// `active_directory` preset can be exercised without a Windows domain controller. Private
/// OIDs; `objectCategory` is a plain string here (AD: a DN that AD matches by its short name).
pub const AD_SCHEMA: &str = "\
attributetype ( 1.3.6.1.4.1.55555.1.1 NAME 'sAMAccountName' EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.55555.1.2 NAME 'userPrincipalName' EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.55555.1.3 NAME 'userAccountControl' EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.55555.1.4 NAME 'objectCategory' EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.55555.2.1 NAME 'user' SUP organizationalPerson STRUCTURAL MAY ( sAMAccountName $ userPrincipalName $ userAccountControl $ objectCategory $ mail ) )
objectclass ( 1.3.6.1.4.1.55555.2.2 NAME 'group' SUP top STRUCTURAL MUST cn MAY ( member $ mail $ sAMAccountName $ objectCategory ) )
";

/// A running private slapd. Stopped and deleted on drop.
pub struct Slapd {
    pub port: u16,
    pub tls_port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Slapd {
    /// Loads `ldif` (after the suffix entry and the reader account) and starts.
    pub fn start(ldif: &str) -> Slapd {
        let dir = tempfile::tempdir().expect("slapd dir");
        let repo = env!("CARGO_MANIFEST_DIR");
        std::fs::create_dir(dir.path().join("db")).expect("db dir");
        std::fs::write(dir.path().join("ad.schema"), AD_SCHEMA).expect("schema");
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include {dir}/ad.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             moduleload ppolicy\n\
             pidfile {dir}/slapd.pid\n\
             TLSCACertificateFile {repo}/certs/ca.pem\n\
             TLSCertificateFile {repo}/certs/localhost.pem\n\
             TLSCertificateKeyFile {repo}/certs/localhost.key\n\
             database mdb\n\
             suffix \"{BASE}\"\n\
             rootdn \"{ROOT_DN}\"\n\
             rootpw {ROOT_PASSWORD}\n\
             directory {dir}/db\n\
             maxsize 4294967296\n\
             limits * size.soft=500 size.hard=500 size.prtotal=unlimited\n\
             overlay ppolicy\n",
            dir = dir.path().display()
        );
        std::fs::write(dir.path().join("slapd.conf"), conf).expect("slapd.conf");
        let data = format!(
            "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\n\
             dc: example\n\n\
             dn: {READER_DN}\nobjectClass: organizationalRole\n\
             objectClass: simpleSecurityObject\ncn: mailgate\nuserPassword: {READER_PASSWORD}\n\n\
             {ldif}"
        );
        std::fs::write(dir.path().join("data.ldif"), data).expect("data.ldif");
        let out = Command::new("/usr/sbin/slapadd")
            .arg("-q")
            .arg("-f")
            .arg(dir.path().join("slapd.conf"))
            .arg("-l")
            .arg(dir.path().join("data.ldif"))
            .output()
            .expect("slapadd runs (scripts/install-test-deps installs slapd)");
        assert!(
            out.status.success(),
            "slapadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut slapd = Slapd {
            port: free_port(),
            tls_port: free_port(),
            dir,
            child: None,
        };
        slapd.resume();
        slapd
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    /// Starts slapd (again) on the same ports and data, and waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "slapd already running");
        let urls = format!(
            "ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/",
            self.port, self.tls_port
        );
        let child = Command::new("/usr/sbin/slapd")
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .arg("-h")
            .arg(urls)
            // Any -d keeps it in the foreground, a child we can stop.
            .arg("-d")
            .arg("0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("slapd starts");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let probe = Command::new("/usr/bin/ldapsearch")
                .args(["-x", "-H", &self.url(), "-b", BASE, "-s", "base", "-o"])
                .arg("nettimeout=2")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("ldapsearch runs");
            if probe.success() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("slapd exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "slapd not ready in {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops slapd (the directory server goes down); the data stays for [`Slapd::resume`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Runs an ldap-utils tool (`ldapmodify`, `ldapdelete`, `ldapmodrdn`) as the root DN with
    /// `input` on stdin; panics with its output on failure.
    pub fn tool(&self, tool: &str, args: &[&str], input: &str) {
        let mut child = Command::new(format!("/usr/bin/{tool}"))
            .args(["-x", "-H", &self.url(), "-D", ROOT_DN, "-w", ROOT_PASSWORD])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ldap tool runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write ldif");
        let out = child.wait_with_output().expect("ldap tool");
        assert!(
            out.status.success(),
            "{tool}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ldapmodify` with an LDIF of changes (`changetype: …`).
    pub fn modify(&self, ldif: &str) {
        self.tool("ldapmodify", &[], ldif);
    }

    /// Moves `dn` under `new_parent`, keeping its RDN.
    pub fn move_entry(&self, dn: &str, new_parent: &str) {
        let rdn = dn.split(',').next().expect("rdn");
        self.tool("ldapmodrdn", &["-r", "-s", new_parent, dn, rdn], "");
    }

    /// Deletes the entries.
    pub fn delete(&self, dns: &[String]) {
        let args: Vec<&str> = dns.iter().map(String::as_str).collect();
        self.tool("ldapdelete", &args, "");
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `ou=NAME,PARENT`.
pub fn ou(name: &str, parent: &str) -> String {
    format!("dn: ou={name},{parent}\nobjectClass: organizationalUnit\nou: {name}\n\n")
}

/// An `inetOrgPerson` `uid=NAME,PARENT` with `mail: NAME@example.com`; `extra` lines as given.
pub fn person(name: &str, parent: &str, extra: &str) -> String {
    format!(
        "dn: uid={name},{parent}\nobjectClass: inetOrgPerson\nuid: {name}\ncn: {name}\nsn: {name}\n\
         mail: {name}@example.com\n{extra}\n"
    )
}

/// A `groupOfNames` `cn=NAME,PARENT` with `mail: NAME@example.com` and the member DNs.
pub fn group_of_names(name: &str, parent: &str, members: &[String]) -> String {
    let mut out = format!(
        "dn: cn={name},{parent}\nobjectClass: groupOfNames\nobjectClass: extensibleObject\n\
         cn: {name}\nmail: {name}@example.com\n"
    );
    for m in members {
        out += &format!("member: {m}\n");
    }
    out + "\n"
}
