//! Test PKI made at test time: one CA per [`TestPki`], leaf certificates issued on demand.
//!
//! Everything is written as PEM into a directory the caller owns (a test's temp dir), so
//! Dovecot, curl, Python and mailgate itself can all read the same files. Keys are
//! ECDSA P-256 (rcgen's default), which every client in the suite accepts.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A leaf certificate and its key, as PEM files and as rustls values.
pub struct Leaf {
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    /// Leaf first, then the CA (what a server sends).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Leaf {
    /// A rustls server config presenting this leaf (for fakes and for an in-process proxy).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .expect("server config");
        Arc::new(config)
    }
}

/// A private CA whose certificate lives at [`TestPki::ca_pem`].
pub struct TestPki {
    dir: PathBuf,
    ca_pem: PathBuf,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestPki {
    /// Makes a CA named `cn` and writes `ca.pem` into `dir`.
    pub fn new(dir: &Path, cn: &str) -> TestPki {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signed ca");
        let ca_pem = dir.join("ca.pem");
        fs::write(&ca_pem, cert.pem()).expect("write ca.pem");
        TestPki {
            dir: dir.to_path_buf(),
            ca_pem,
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Path of the CA certificate (PEM), for `--cacert`, `--cafile` and root stores.
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// The CA certificate (DER).
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// Issues a server certificate for `names` (DNS names or IP addresses) and writes
    /// `<stem>.crt` / `<stem>.key` (mode 0644: Dovecot's unprivileged processes and test
    /// clients read them; they are throwaway test keys).
    pub fn issue(&self, stem: &str, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let cert_pem = self.dir.join(format!("{stem}.crt"));
        let key_pem = self.dir.join(format!("{stem}.key"));
        fs::write(&cert_pem, cert.pem()).expect("write leaf cert");
        fs::write(&key_pem, key.serialize_pem()).expect("write leaf key");
        let key_der = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key");
        Leaf {
            cert_pem,
            key_pem,
            chain: vec![cert.der().clone(), self.ca_der.clone()],
            key: key_der,
        }
    }
}

/// A rustls client config that trusts only the CA in `ca_pem`.
pub fn client_config(ca_pem: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).expect("read ca pem") {
        roots.add(cert.expect("ca cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
