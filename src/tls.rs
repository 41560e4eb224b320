//! Stage: TLS material. Validated config in, rustls configs out.
//!
//! - [`server_config`]: the downstream side (mail clients connect to us). Reads the certificate
//!   chain and key named by `[tls]`, creating a self-signed development pair first when asked.
//! - [`upstream_connector`]: the upstream side (we connect to the real mail server). Trusts the
//!   upstream's `ca_file` or the system roots, and checks `server_name`.
//!
//! Both always use the aws-lc-rs provider explicitly (`builder_with_provider`), so no
//! process-wide default provider has to be installed and a second provider pulled in by some
//! dependency cannot make rustls panic (notes/crates.md pitfall 3).
//!
//! A reload calls these again and swaps the results in with the new `Config`; a certificate
//! renewed on disk is picked up that way, so no resolver of our own is needed.
//!
//! Must not: put key material in an error or a log line. Errors name files, never their content.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion};

use crate::config::{ServerTls, TlsVersion, Upstream};

/// Names a self-signed development certificate is valid for.
const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Why TLS material could not be prepared. Every message names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{what} {} does not exist (set tls.generate_self_signed = true to create a development \
         certificate)",
        path.display()
    )]
    Missing { what: &'static str, path: PathBuf },
    #[error(
        "{} exists but {} does not; refusing to generate a self-signed pair over an existing \
         file (remove it or supply both)",
        present.display(),
        missing.display()
    )]
    HalfPair { present: PathBuf, missing: PathBuf },
    #[error("cannot read {}: {reason}", path.display())]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("cannot write {}: {reason}", path.display())]
    Write {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{}: not valid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: &'static str },
    #[error("{}: no certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key found", path.display())]
    NoKey { path: PathBuf },
    #[error("certificate {} with key {} rejected: {reason}", cert.display(), key.display())]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        reason: rustls::Error,
    },
    #[error("{}: CA certificate rejected: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error(
        "no usable system root certificates ({reason}); set ca_file for upstream \"{upstream}\""
    )]
    NoSystemRoots { upstream: String, reason: String },
    #[error("upstream \"{upstream}\": invalid server_name {name:?}")]
    ServerName { upstream: String, name: String },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(rcgen::Error),
    #[error("tls configuration: {0}")]
    Config(rustls::Error),
}

/// Builds the downstream-facing TLS config from `[tls]`.
///
/// With `generate_self_signed` and both files missing, a self-signed certificate for
/// localhost, 127.0.0.1 and ::1 is written there first (key mode 0600) and a warning logged.
/// If only one of the two exists, nothing is generated: overwriting the other half of what may be
/// an operator's real pair would be worse than stopping.
pub fn server_config(tls: &ServerTls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    if pair_missing(tls)? {
        generate_self_signed(&tls.cert_file, &tls.key_file)?;
    }
    build_server_config(tls)
}

/// What [`server_config`] would do, without writing anything: reads and checks the pair, or,
/// when it would generate one, checks that both files could be created. `mailgate check` and
/// the start of `mailgate run` both call this, so they refuse the same configs.
pub fn check_server_config(tls: &ServerTls) -> Result<(), TlsError> {
    if pair_missing(tls)? {
        // Key first, as generate_self_signed writes it first.
        for path in [&tls.key_file, &tls.cert_file] {
            crate::writable::creatable(path).map_err(|reason| TlsError::Write {
                path: path.clone(),
                reason,
            })?;
        }
        return Ok(());
    }
    build_server_config(tls).map(drop)
}

fn build_server_config(tls: &ServerTls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs(&tls.cert_file)?;
    let key = read_key(&tls.key_file)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(tls.min_version))
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        // Also checks that the key belongs to the leaf certificate.
        .with_single_cert(certs, key)
        .map_err(|reason| TlsError::Rejected {
            cert: tls.cert_file.clone(),
            key: tls.key_file.clone(),
            reason,
        })?;
    Ok(Arc::new(config))
}

/// Builds the connector and server name for an upstream with `tls != none`.
///
/// Roots are the upstream's `ca_file` (every certificate in it) or, without one, the system's
/// roots. With `verify_certificate = false` the upstream's certificate is **not checked at all**:
/// see [`AcceptAnyCertificate`].
pub fn upstream_connector(
    up: &Upstream,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), TlsError> {
    let name = ServerName::try_from(up.server_name.clone()).map_err(|_| TlsError::ServerName {
        upstream: up.name.clone(),
        name: up.server_name.clone(),
    })?;
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(TlsVersion::Tls12))
        .map_err(TlsError::Config)?;
    let config = if up.verify_certificate {
        let roots = match &up.ca_file {
            Some(path) => ca_roots(path)?,
            None => system_roots(&up.name)?,
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
            .with_no_client_auth()
    };
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// When the leaf certificate `[tls]` names stops being valid (its `notAfter`), in Unix
/// seconds, for the `mailgate_tls_certificate_expiry_timestamp_seconds` gauge. `None` when the
/// file cannot be read or the certificate not parsed (start-up and reload refuse those anyway).
pub fn certificate_not_after(tls: &ServerTls) -> Option<i64> {
    let leaf = read_certs(&tls.cert_file).ok()?.into_iter().next()?;
    not_after(leaf.as_ref())
}

/// `notAfter` of a DER certificate (RFC 5280 4.1: Certificate ::= SEQUENCE { tbsCertificate
/// SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE {
/// notBefore, notAfter }, … } … }). Only the few fields before validity are walked; rustls has
/// already checked the rest.
fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert, _) = der_tlv(der)?;
    let (_, tbs, _) = der_tlv(cert)?;
    let mut rest = tbs;
    // [0] EXPLICIT version, absent in v1 certificates.
    if let Some((0xa0, _, after)) = der_tlv(rest) {
        rest = after;
    }
    for _ in 0..3 {
        // serialNumber, signature algorithm, issuer.
        rest = der_tlv(rest)?.2;
    }
    let (_, validity, _) = der_tlv(rest)?;
    let (_, _, after_not_before) = der_tlv(validity)?;
    let (tag, time, _) = der_tlv(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?;
    // RFC 5280 4.1.2.5: UTCTime YYMMDDHHMMSSZ (years 1950-2049), GeneralizedTime
    // YYYYMMDDHHMMSSZ.
    let (year, rest) = match tag {
        0x17 => {
            let yy: i32 = text.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    if rest.len() != 11 || !rest.ends_with('Z') {
        return None;
    }
    let field = |i: usize| rest.get(i..i + 2)?.parse::<u8>().ok();
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(field(0)?).ok()?, field(2)?)
            .ok()?;
    let at = date.with_hms(field(4)?, field(6)?, field(8)?).ok()?;
    Some(at.assume_utc().unix_timestamp())
}

/// One DER tag-length-value: (tag, content, what follows). Definite lengths up to 4 bytes.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// TLS 1.3 only, for `min_version = "1.3"`.
static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    match min {
        // TLS 1.2 and 1.3.
        TlsVersion::Tls12 => rustls::DEFAULT_VERSIONS,
        TlsVersion::Tls13 => TLS13_ONLY,
    }
}

/// `Ok(true)`: both files are missing and `generate_self_signed` asks for a new pair;
/// `Ok(false)`: both exist. Anything else is an error, and never overwrites half a pair.
fn pair_missing(tls: &ServerTls) -> Result<bool, TlsError> {
    let cert = tls.cert_file.exists();
    let key = tls.key_file.exists();
    match (cert, key) {
        (true, true) => Ok(false),
        (false, false) if tls.generate_self_signed => Ok(true),
        (true, false) if tls.generate_self_signed => Err(TlsError::HalfPair {
            present: tls.cert_file.clone(),
            missing: tls.key_file.clone(),
        }),
        (false, true) if tls.generate_self_signed => Err(TlsError::HalfPair {
            present: tls.key_file.clone(),
            missing: tls.cert_file.clone(),
        }),
        (false, _) => Err(TlsError::Missing {
            what: "certificate file",
            path: tls.cert_file.clone(),
        }),
        (true, false) => Err(TlsError::Missing {
            what: "key file",
            path: tls.key_file.clone(),
        }),
    }
}

fn generate_self_signed(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|n| (*n).to_owned()).collect();
    let pair = rcgen::generate_simple_self_signed(names).map_err(TlsError::Generate)?;
    // Key first: if writing the certificate then fails, the next start reports a half pair
    // instead of silently serving a certificate whose key is gone.
    write_new(key_path, pair.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert_path, pair.cert.pem().as_bytes(), 0o644)?;
    tracing::warn!(
        cert_file = %cert_path.display(),
        key_file = %key_path.display(),
        names = ?SELF_SIGNED_NAMES,
        "generated a self-signed TLS certificate; for development only, mail clients will not \
         trust it"
    );
    Ok(())
}

/// Creates `path` (and its directory), refusing to replace anything already there: `create_new`
/// also refuses to follow a symlink planted at that name.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |reason| TlsError::Write {
        path: path.to_owned(),
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        e => pem_error(path, e),
    })
}

/// Maps a PEM error to one naming the file. The library's own text is dropped on purpose: some
/// variants quote a line of the file, and in a key file that line could be key material.
fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    let path = path.to_owned();
    let reason = match e {
        pem::Error::Io(reason) => return TlsError::Read { path, reason },
        pem::Error::NoItemsFound => return TlsError::NoCertificate { path },
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line",
        pem::Error::Base64Decode(_) => "bad base64 in a section",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "malformed",
    };
    TlsError::Pem { path, reason }
}

pub(crate) fn ca_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

pub(crate) fn system_roots(upstream: &str) -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let reason = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "none found".to_owned(),
        };
        return Err(TlsError::NoSystemRoots {
            upstream: upstream.to_owned(),
            reason,
        });
    }
    if !found.errors.is_empty() {
        tracing::warn!(
            upstream,
            errors = found.errors.len(),
            loaded = added,
            "some system root certificates could not be loaded"
        );
    }
    Ok(roots)
}

/// DANGER: accepts **any** server certificate, for `verify_certificate = false`.
///
/// The connection is still encrypted, and the handshake signature is still checked against the
/// presented certificate, but nothing ties that certificate to the upstream: anyone who can
/// intercept the connection can impersonate the mail server and read every replayed password.
/// It exists for lab setups with throwaway upstream certificates; the server logs a warning at
/// start-up for every upstream configured this way (`Config::warnings`).
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::config::UpstreamTls;
    use crate::proto::Protocol;

    /// Every network wait in these tests is bounded by this.
    const WAIT: Duration = Duration::from_secs(10);

    fn certs_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
    }

    fn shipped_server_tls() -> ServerTls {
        ServerTls {
            cert_file: certs_dir().join("localhost.pem"),
            key_file: certs_dir().join("localhost.key"),
            generate_self_signed: false,
            min_version: TlsVersion::Tls12,
        }
    }

    fn upstream(ca_file: Option<PathBuf>, verify: bool, server_name: &str) -> Upstream {
        Upstream {
            name: "test".to_owned(),
            protocol: Protocol::Imap,
            addresses: vec!["127.0.0.1:143".to_owned()],
            tls: UpstreamTls::Implicit,
            server_name: server_name.to_owned(),
            ca_file,
            verify_certificate: verify,
            connect_timeout: Duration::from_secs(5),
            login_timeout: Duration::from_secs(30),
            send_proxy_protocol: false,
            send_id: false,
        }
    }

    fn temp_tls(dir: &Path, generate: bool) -> ServerTls {
        ServerTls {
            cert_file: dir.join("sub/dir/cert.pem"),
            key_file: dir.join("sub/dir/key.pem"),
            generate_self_signed: generate,
            min_version: TlsVersion::Tls12,
        }
    }

    /// Runs one TLS handshake over loopback and echoes a line, returning the client's result.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        up: &Upstream,
    ) -> Result<Vec<u8>, std::io::Error> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            tls.write_all(b"* OK ready\r\n").await?;
            tls.shutdown().await
        });
        let (connector, name) = upstream_connector(up).unwrap();
        let client = async {
            let tcp = TcpStream::connect(addr).await?;
            let mut tls = connector.connect(name, tcp).await?;
            let mut got = Vec::new();
            tls.read_to_end(&mut got).await?;
            Ok(got)
        };
        let result = tokio::time::timeout(WAIT, client).await.unwrap();
        server_task.abort();
        result
    }

    #[test]
    fn server_config_from_shipped_certs() {
        server_config(&shipped_server_tls()).unwrap();
        let tls13 = ServerTls {
            min_version: TlsVersion::Tls13,
            ..shipped_server_tls()
        };
        server_config(&tls13).unwrap();
    }

    #[test]
    fn upstream_connector_from_shipped_ca() {
        let up = upstream(Some(certs_dir().join("ca.pem")), true, "localhost");
        let (_, name) = upstream_connector(&up).unwrap();
        assert_eq!(name, ServerName::try_from("localhost").unwrap());
        let up = upstream(Some(certs_dir().join("ca.pem")), true, "127.0.0.1");
        let (_, name) = upstream_connector(&up).unwrap();
        assert!(matches!(name, ServerName::IpAddress(_)));
    }

    /// The shipped example's upstreams get connectors (its server side generates into the
    /// git-ignored certs/dev/, exercised with a tempdir in `self_signed_generated_when_missing`).
    #[test]
    fn shipped_config_upstreams_build() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mailgate.toml");
        let config = crate::config::Config::load(&path).unwrap();
        for up in config.upstreams.values() {
            upstream_connector(up).unwrap();
        }
    }

    #[tokio::test]
    async fn handshake_with_shipped_pki() {
        let server = server_config(&shipped_server_tls()).unwrap();
        for name in ["localhost", "127.0.0.1"] {
            let up = upstream(Some(certs_dir().join("ca.pem")), true, name);
            let got = handshake(server.clone(), &up).await.unwrap();
            assert_eq!(got, b"* OK ready\r\n");
        }
        // A name the leaf does not carry is refused.
        let up = upstream(Some(certs_dir().join("ca.pem")), true, "mail.example.com");
        let err = handshake(server, &up).await.unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[tokio::test]
    async fn self_signed_is_refused_when_verifying_and_accepted_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let server = server_config(&temp_tls(dir.path(), true)).unwrap();
        let verifying = upstream(Some(certs_dir().join("ca.pem")), true, "localhost");
        let err = handshake(server.clone(), &verifying).await.unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        let trusting = upstream(None, false, "localhost");
        assert_eq!(
            handshake(server, &trusting).await.unwrap(),
            b"* OK ready\r\n"
        );
    }

    #[test]
    fn certificate_expiry_is_read_from_the_leaf() {
        let key = rcgen::KeyPair::generate().unwrap();
        for (year, expect) in [(2031, 1_935_792_000), (2051, 2_566_944_000)] {
            // 2031 is a UTCTime, 2051 a GeneralizedTime (RFC 5280 4.1.2.5).
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.not_after = rcgen::date_time_ymd(year, 5, 6);
            let cert = params.self_signed(&key).unwrap();
            // Midnight UTC of 6 May.
            assert_eq!(not_after(cert.der()), Some(expect), "{year}");
        }
        assert_eq!(not_after(b"\x30\x03\x02\x01"), None);
        assert!(certificate_not_after(&shipped_server_tls()).is_some());
    }

    #[test]
    fn self_signed_generated_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let tls = temp_tls(dir.path(), true);
        server_config(&tls).unwrap();
        assert!(tls.cert_file.is_file() && tls.key_file.is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&tls.key_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let cert = fs::read(&tls.cert_file).unwrap();
        // A second start reuses the pair instead of generating a new one.
        server_config(&tls).unwrap();
        assert_eq!(fs::read(&tls.cert_file).unwrap(), cert);
    }

    #[test]
    fn self_signed_not_generated_when_disabled() {
        let dir = tempfile::tempdir().unwrap();
        let tls = temp_tls(dir.path(), false);
        let err = server_config(&tls).unwrap_err().to_string();
        assert!(err.contains(&tls.cert_file.display().to_string()), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        assert!(!tls.cert_file.exists() && !tls.key_file.exists());
        assert!(!dir.path().join("sub").exists());
    }

    #[test]
    fn half_pair_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let tls = temp_tls(dir.path(), true);
        fs::create_dir_all(tls.cert_file.parent().unwrap()).unwrap();
        fs::write(&tls.cert_file, "operator's cert").unwrap();
        let err = server_config(&tls).unwrap_err().to_string();
        assert!(err.contains("refusing"), "{err}");
        assert_eq!(
            fs::read_to_string(&tls.cert_file).unwrap(),
            "operator's cert"
        );
        assert!(!tls.key_file.exists());
    }

    #[test]
    fn bad_pem_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "nothing here\n").unwrap();
        let secret_key = dir.path().join("truncated.key");
        fs::write(
            &secret_key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n",
        )
        .unwrap();

        let tls = |cert: &Path, key: &Path| ServerTls {
            cert_file: cert.to_owned(),
            key_file: key.to_owned(),
            generate_self_signed: false,
            min_version: TlsVersion::Tls12,
        };
        let good_key = certs_dir().join("localhost.key");
        let good_cert = certs_dir().join("localhost.pem");
        let cases = [
            (
                server_config(&tls(&garbage, &good_key)).unwrap_err(),
                &garbage,
            ),
            (server_config(&tls(&empty, &good_key)).unwrap_err(), &empty),
            (server_config(&tls(&good_cert, &empty)).unwrap_err(), &empty),
            (
                server_config(&tls(&good_cert, &secret_key)).unwrap_err(),
                &secret_key,
            ),
            (
                upstream_connector(&upstream(Some(garbage.clone()), true, "localhost"))
                    .map(|_| ())
                    .unwrap_err(),
                &garbage,
            ),
        ];
        for (err, path) in cases {
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(!msg.contains("c2VjcmV0"), "key material in {msg}");
        }
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let other = temp_tls(dir.path(), true);
        server_config(&other).unwrap();
        let err = server_config(&ServerTls {
            key_file: other.key_file.clone(),
            ..shipped_server_tls()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("rejected"), "{err}");
        assert!(err.contains("localhost.pem"), "{err}");
    }

    #[test]
    fn invalid_server_name() {
        let err = upstream_connector(&upstream(None, false, "not a name"))
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("invalid server_name"), "{err}");
    }
}
