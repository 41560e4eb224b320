//! TEMP STUB (lead) — replaced by the config branch.
use crate::proto::{PreauthLimits, Protocol};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub tls: Option<ServerTls>,
    pub limits: Limits,
    pub log: Log,
}
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);
impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.join("\n"))
    }
}
impl std::error::Error for ConfigErrors {}
impl Config {
    pub fn load(_p: &Path) -> Result<Config, ConfigErrors> {
        Err(ConfigErrors(vec![]))
    }
    pub fn from_toml(_t: &str, _b: &Path) -> Result<Config, ConfigErrors> {
        Err(ConfigErrors(vec![]))
    }
}
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub protocol: Protocol,
    pub bind: SocketAddr,
    pub tls: ListenerTls,
    pub upstream: String,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerTls {
    Implicit,
    StartTls,
    None,
}
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub protocol: Protocol,
    pub addresses: Vec<String>,
    pub tls: UpstreamTls,
    pub server_name: String,
    pub ca_file: Option<PathBuf>,
    pub verify_certificate: bool,
    pub connect_timeout: Duration,
    pub login_timeout: Duration,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    Implicit,
    StartTls,
    None,
}
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub generate_self_signed: bool,
}
#[derive(Debug, Clone)]
pub struct Limits {
    pub preauth: PreauthLimits,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}
#[derive(Debug, Clone)]
pub struct Log {
    pub filter: String,
}
