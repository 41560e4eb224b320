//! `[[oauth.provider]]`: the identity providers whose tokens XOAUTH2/OAUTHBEARER logins carry.
//!
//! File layer ([`OAuthFile`], [`ProviderFile`]) and validated layer ([`OAuth`], [`Provider`]) of
//! one table, kept in one file so the OAuth settings read top to bottom. Secrets are resolved
//! here (`client_secret_file` is read, `client_secret = "env:NAME"` looked up) and held as
//! [`Secret`]; their values never appear in an error.
//!
//! ```toml
//! [[oauth.provider]]
//! name = "corp"
//! issuer = "https://login.example.com"       # discovery: {issuer}/.well-known/openid-configuration
//! mode = "jwt"                                # jwt | introspection | tokeninfo | unverified
//! audiences = ["https://mail.example.com/"]
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::duration::{self, DurationError};
use crate::secret::Secret;

/// `[oauth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthFile {
    #[serde(default)]
    pub provider: Vec<ProviderFile>,
    /// `[[oauth.client]]`: mailgate as the OAuth *client* of a mail provider, for the grants
    /// of shared mailboxes (`super::grants`).
    #[serde(default)]
    pub client: Vec<super::grants::ClientFile>,
}

/// One `[[oauth.provider]]`, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    pub name: String,
    pub issuer: String,
    pub mode: Option<ProviderMode>,
    pub jwks_uri: Option<String>,
    pub introspection_endpoint: Option<String>,
    pub tokeninfo_endpoint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub algorithms: Option<Vec<String>>,
    pub leeway: Option<String>,
    pub client_id_claims: Option<Vec<String>>,
    pub user_claims: Option<Vec<String>>,
    #[serde(default)]
    pub delegated_client_ids: Vec<String>,
    pub delegation_claim: Option<String>,
    pub delegation_value: Option<String>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub jwks_refresh_min_interval: Option<String>,
    pub jwks_max_age: Option<String>,
    pub cache_max_ttl: Option<String>,
    pub negative_cache_ttl: Option<String>,
    pub cache_size: Option<u64>,
    pub max_response_bytes: Option<u64>,
}

/// How a provider's tokens are checked. TOML: `"jwt"` | `"introspection"` | `"tokeninfo"` |
/// `"unverified"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderMode {
    /// JWT access tokens, signature checked against the issuer's JWKS.
    #[default]
    Jwt,
    /// Opaque (or JWT) tokens sent to the RFC 7662 introspection endpoint.
    Introspection,
    /// Opaque tokens sent to a Google-style `tokeninfo?access_token=` endpoint.
    Tokeninfo,
    /// JWT claims read WITHOUT a signature check (Microsoft Entra, whose Graph tokens third
    /// parties cannot validate). Such a token can only cause a refusal (wrong user, wrong
    /// client, expired); the upstream's own check decides whether it is good.
    Unverified,
}

/// Validated `[oauth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OAuth {
    /// In file order; names and issuers unique.
    pub providers: Vec<Provider>,
    /// `[[oauth.client]]`, in file order; names unique.
    pub clients: Vec<super::grants::OAuthClient>,
}

/// JWS algorithms a provider may sign with. Asymmetric only: `none` and HMAC (`HS*`) are
/// refused at load, which is what defeats the "HMAC keyed with the public key" confusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    pub const ALL: [JwtAlgorithm; 9] = [
        JwtAlgorithm::RS256,
        JwtAlgorithm::RS384,
        JwtAlgorithm::RS512,
        JwtAlgorithm::PS256,
        JwtAlgorithm::PS384,
        JwtAlgorithm::PS512,
        JwtAlgorithm::ES256,
        JwtAlgorithm::ES384,
        JwtAlgorithm::EdDSA,
    ];

    /// The JOSE name (RFC 7518 section 3.1, RFC 8037 section 3.1).
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::RS512 => "RS512",
            JwtAlgorithm::PS256 => "PS256",
            JwtAlgorithm::PS384 => "PS384",
            JwtAlgorithm::PS512 => "PS512",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<JwtAlgorithm> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// How a service account's delegated token is recognised (decision step 4 in docs/policy.md,
/// `delegation_not_supported`). Either test marks the token delegated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delegation {
    /// Client IDs of service accounts that use domain-wide delegation (Google: the service
    /// account's numeric client ID, which its delegated tokens carry as `azp`).
    pub client_ids: Vec<String>,
    /// A claim whose presence marks delegation. Default `act` (RFC 8693 section 4.1, the actor
    /// of a delegated token).
    pub claim: Option<String>,
    /// When set, the claim must equal this string (or, for an array, contain it); when unset,
    /// any value other than `null`/`false` counts.
    pub value: Option<String>,
}

/// One validated provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// Unique; shown in audit records.
    pub name: String,
    /// Exact `iss` the tokens carry (and the discovery document must name). Unique.
    pub issuer: String,
    pub mode: ProviderMode,
    /// Explicit JWKS URL; `None`: from discovery.
    pub jwks_uri: Option<String>,
    /// Explicit RFC 7662 endpoint; `None`: from discovery (`introspection_endpoint`).
    pub introspection_endpoint: Option<String>,
    /// Required for `tokeninfo` mode.
    pub tokeninfo_endpoint: Option<String>,
    /// Client credentials for introspection (HTTP Basic, RFC 7662 section 2.1). A `jwt` provider
    /// with these also introspects the opaque tokens its issuer hands out.
    pub client_id: Option<String>,
    pub client_secret: Option<Secret<String>>,
    /// Accepted `aud` values; empty accepts any audience (a warning says so).
    pub audiences: Vec<String>,
    /// Allowed JWS algorithms. Default RS256, PS256, ES256, EdDSA.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Clock skew allowed on `exp`/`nbf`. Default 60 s (jsonwebtoken's default).
    pub leeway: Duration,
    /// First present string claim is the client ID. Default `azp`, `client_id`, `cid`, `appid`.
    pub client_id_claims: Vec<String>,
    /// First present string claim is the user. Default `email`, `upn`, `preferred_username`,
    /// `sub`.
    pub user_claims: Vec<String>,
    pub delegation: Delegation,
    /// TCP connect to the IdP. Default 3 s.
    pub connect_timeout: Duration,
    /// Whole HTTP exchange, body included. Default 3 s: a login waits for it.
    pub request_timeout: Duration,
    /// A JWT with an unknown `kid` refetches the JWKS at most this often. Default 30 s, so a
    /// stream of made-up `kid`s cannot turn mailgate into a JWKS hammer.
    pub jwks_refresh_min_interval: Duration,
    /// The JWKS is refetched after this long even when every `kid` is known. Default 1 h.
    pub jwks_max_age: Duration,
    /// A positive verification is cached until the token expires, but at most this long (so a
    /// revoked opaque token stops working within it). Default 5 min.
    pub cache_max_ttl: Duration,
    /// An invalid token's verdict is cached this long. Default 30 s.
    pub negative_cache_ttl: Duration,
    /// Entries in the verification cache. Default 10000.
    pub cache_size: usize,
    /// Largest IdP response body read (discovery, JWKS, introspection). Default 1 MiB.
    pub max_response_bytes: usize,
}

pub const DEFAULT_ALGORITHMS: [JwtAlgorithm; 4] = [
    JwtAlgorithm::RS256,
    JwtAlgorithm::PS256,
    JwtAlgorithm::ES256,
    JwtAlgorithm::EdDSA,
];
pub const DEFAULT_CLIENT_ID_CLAIMS: [&str; 4] = ["azp", "client_id", "cid", "appid"];
pub const DEFAULT_USER_CLAIMS: [&str; 4] = ["email", "upn", "preferred_username", "sub"];
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
pub const DEFAULT_IDP_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_JWKS_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
pub const DEFAULT_CACHE_MAX_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(30);
pub const DEFAULT_CACHE_SIZE: usize = 10_000;
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

impl Provider {
    /// A provider with every default, for tests and benches.
    pub fn new(name: &str, issuer: &str, mode: ProviderMode) -> Provider {
        Provider {
            name: name.to_owned(),
            issuer: issuer.to_owned(),
            mode,
            jwks_uri: None,
            introspection_endpoint: None,
            tokeninfo_endpoint: None,
            client_id: None,
            client_secret: None,
            audiences: Vec::new(),
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            leeway: DEFAULT_LEEWAY,
            client_id_claims: DEFAULT_CLIENT_ID_CLAIMS.map(str::to_owned).to_vec(),
            user_claims: DEFAULT_USER_CLAIMS.map(str::to_owned).to_vec(),
            delegation: Delegation {
                claim: Some("act".to_owned()),
                ..Delegation::default()
            },
            connect_timeout: DEFAULT_IDP_TIMEOUT,
            request_timeout: DEFAULT_IDP_TIMEOUT,
            jwks_refresh_min_interval: DEFAULT_JWKS_REFRESH_MIN_INTERVAL,
            jwks_max_age: DEFAULT_JWKS_MAX_AGE,
            cache_max_ttl: DEFAULT_CACHE_MAX_TTL,
            negative_cache_ttl: DEFAULT_NEGATIVE_CACHE_TTL,
            cache_size: DEFAULT_CACHE_SIZE,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// Validates `[oauth]`, pushing every problem onto `errors` with its key path
/// (`oauth.provider "corp".audiences`).
pub(super) fn validate(f: OAuthFile, base_dir: &Path, errors: &mut Vec<ConfigError>) -> OAuth {
    let mut out = OAuth {
        clients: super::grants::clients(f.client, base_dir, errors),
        ..OAuth::default()
    };
    for (i, p) in f.provider.into_iter().enumerate() {
        let at = if p.name.is_empty() {
            format!("oauth.provider[{i}]")
        } else {
            format!("oauth.provider \"{}\"", p.name)
        };
        let mut v = V { at, errors };
        if out.providers.iter().any(|o| o.name == p.name) {
            v.invalid("name", format!("duplicate provider name {:?}", p.name));
        }
        if out.providers.iter().any(|o| o.issuer == p.issuer) {
            v.invalid("issuer", format!("duplicate issuer {:?}", p.issuer));
        }
        let provider = v.provider(p, base_dir);
        out.providers.push(provider);
    }
    out
}

pub(super) struct V<'a> {
    pub(super) at: String,
    pub(super) errors: &'a mut Vec<ConfigError>,
}

impl V<'_> {
    pub(super) fn invalid(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::Invalid {
            path: format!("{}.{key}", self.at),
            message: message.into(),
        });
    }

    fn provider(&mut self, p: ProviderFile, base_dir: &Path) -> Provider {
        let d = Provider::new(&p.name, &p.issuer, p.mode.unwrap_or_default());
        if p.name.is_empty() || p.name.len() > 64 {
            self.invalid("name", "must be 1 to 64 characters");
        }
        self.url("issuer", &p.issuer);
        for (key, value) in [
            ("jwks_uri", &p.jwks_uri),
            ("introspection_endpoint", &p.introspection_endpoint),
            ("tokeninfo_endpoint", &p.tokeninfo_endpoint),
        ] {
            if let Some(value) = value {
                self.url(key, value);
            }
        }
        if d.mode == ProviderMode::Tokeninfo && p.tokeninfo_endpoint.is_none() {
            self.invalid("tokeninfo_endpoint", "required when mode = \"tokeninfo\"");
        }
        let client_secret = self.secret(&p, base_dir);
        if d.mode == ProviderMode::Introspection
            && (p.client_id.is_none() || client_secret.is_none())
        {
            self.invalid(
                "client_id",
                "mode = \"introspection\" needs client_id and client_secret or client_secret_file \
                 (RFC 7662 section 2.1: the endpoint authenticates its callers)",
            );
        }
        let algorithms = match p.algorithms {
            None => d.algorithms.clone(),
            Some(names) => {
                let mut algs = Vec::new();
                for name in names {
                    match JwtAlgorithm::from_name(&name) {
                        Some(a) => algs.push(a),
                        None if name.eq_ignore_ascii_case("none") || name.starts_with("HS") => self
                            .invalid(
                                "algorithms",
                                format!(
                                    "{name:?} is never allowed: unsigned and HMAC tokens can be \
                                     forged by anyone who knows the public key"
                                ),
                            ),
                        None => self.invalid(
                            "algorithms",
                            format!(
                                "unknown algorithm {name:?}, expected some of RS256, RS384, \
                                 RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
                            ),
                        ),
                    }
                }
                if algs.is_empty() {
                    self.invalid("algorithms", "must list at least one algorithm");
                }
                algs
            }
        };
        let claims =
            |v: &mut Self, key: &str, given: Option<Vec<String>>, def: &[String]| match given {
                Some(list) if list.is_empty() => {
                    v.invalid(key, "must list at least one claim");
                    def.to_vec()
                }
                Some(list) => list,
                None => def.to_vec(),
            };
        let client_id_claims = claims(
            self,
            "client_id_claims",
            p.client_id_claims,
            &d.client_id_claims,
        );
        let user_claims = claims(self, "user_claims", p.user_claims, &d.user_claims);
        if p.delegation_value.is_some() && p.delegation_claim.is_none() {
            // Without a named claim the value would silently apply to the default `act`.
            self.invalid("delegation_value", "needs delegation_claim");
        }
        let cache_size = match p.cache_size {
            None => d.cache_size,
            Some(n @ 1..=1_000_000) => n as usize,
            Some(n) => {
                self.invalid(
                    "cache_size",
                    format!("{n} is out of range, expected 1 to 1000000"),
                );
                d.cache_size
            }
        };
        let max_response_bytes = match p.max_response_bytes {
            None => d.max_response_bytes,
            Some(n @ 1024..=16_777_216) => n as usize,
            Some(n) => {
                self.invalid(
                    "max_response_bytes",
                    format!("{n} is out of range, expected 1024 to 16777216"),
                );
                d.max_response_bytes
            }
        };
        Provider {
            jwks_uri: p.jwks_uri,
            introspection_endpoint: p.introspection_endpoint,
            tokeninfo_endpoint: p.tokeninfo_endpoint,
            client_id: p.client_id,
            client_secret,
            audiences: p.audiences,
            algorithms,
            leeway: self.duration("leeway", p.leeway.as_deref(), d.leeway, true),
            client_id_claims,
            user_claims,
            delegation: Delegation {
                client_ids: p.delegated_client_ids,
                claim: p.delegation_claim.or(d.delegation.claim.clone()),
                value: p.delegation_value,
            },
            connect_timeout: self.duration(
                "connect_timeout",
                p.connect_timeout.as_deref(),
                d.connect_timeout,
                false,
            ),
            request_timeout: self.duration(
                "request_timeout",
                p.request_timeout.as_deref(),
                d.request_timeout,
                false,
            ),
            jwks_refresh_min_interval: self.duration(
                "jwks_refresh_min_interval",
                p.jwks_refresh_min_interval.as_deref(),
                d.jwks_refresh_min_interval,
                true,
            ),
            jwks_max_age: self.duration(
                "jwks_max_age",
                p.jwks_max_age.as_deref(),
                d.jwks_max_age,
                false,
            ),
            cache_max_ttl: self.duration(
                "cache_max_ttl",
                p.cache_max_ttl.as_deref(),
                d.cache_max_ttl,
                true,
            ),
            negative_cache_ttl: self.duration(
                "negative_cache_ttl",
                p.negative_cache_ttl.as_deref(),
                d.negative_cache_ttl,
                true,
            ),
            cache_size,
            max_response_bytes,
            ..d
        }
    }

    /// `https://` anywhere, `http://` only to a loopback host (tests, a local sidecar): tokens
    /// and client secrets cross this connection.
    pub(super) fn url(&mut self, key: &str, value: &str) {
        let ok = match value.split_once("://") {
            Some(("https", rest)) => !rest.is_empty(),
            Some(("http", rest)) => {
                let host = rest.split(['/', '?']).next().unwrap_or("");
                let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
                matches!(host, "127.0.0.1" | "localhost" | "[::1]")
            }
            _ => false,
        };
        if !ok {
            self.invalid(
                key,
                format!(
                    "{value:?} must be an https:// URL (http:// only to 127.0.0.1 or localhost)"
                ),
            );
        }
    }

    fn secret(&mut self, p: &ProviderFile, base_dir: &Path) -> Option<Secret<String>> {
        self.client_secret(
            p.client_secret.as_deref(),
            p.client_secret_file.as_deref(),
            base_dir,
        )
    }

    /// `client_secret = "env:NAME"` or `client_secret_file`, never the value itself.
    pub(super) fn client_secret(
        &mut self,
        value: Option<&str>,
        file: Option<&str>,
        base_dir: &Path,
    ) -> Option<Secret<String>> {
        let resolved = super::secret_ref::resolve(
            "client_secret",
            value,
            "client_secret_file",
            file,
            base_dir,
        );
        resolved.unwrap_or_else(|(key, message)| {
            self.invalid(&key, message);
            None
        })
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        text: Option<&str>,
        default: Duration,
        zero_ok: bool,
    ) -> Duration {
        let Some(text) = text else {
            return default;
        };
        let parsed = if zero_ok {
            duration::parse(text)
        } else {
            duration::parse_nonzero(text)
        };
        match parsed {
            Ok(d) => d,
            Err(e @ DurationError::Zero) => {
                self.invalid(key, format!("duration {text:?} {e}"));
                default
            }
            Err(e) => {
                self.invalid(key, format!("invalid duration {text:?}: {e}"));
                default
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<OAuth, Vec<String>> {
        let f: OAuthFile = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut errors = Vec::new();
        let o = validate(f, Path::new("/nonexistent"), &mut errors);
        if errors.is_empty() {
            Ok(o)
        } else {
            Err(errors.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn defaults() {
        let o = load("[[provider]]\nname = 'idp'\nissuer = 'https://idp.example.com'\n").unwrap();
        let p = &o.providers[0];
        assert_eq!(p.mode, ProviderMode::Jwt);
        assert_eq!(p.algorithms, DEFAULT_ALGORITHMS.to_vec());
        assert_eq!(p.user_claims, ["email", "upn", "preferred_username", "sub"]);
        assert_eq!(p.client_id_claims, ["azp", "client_id", "cid", "appid"]);
        assert_eq!(p.delegation.claim.as_deref(), Some("act"));
        assert_eq!(p.request_timeout, Duration::from_secs(3));
    }

    #[test]
    fn forbidden_algorithms_and_bad_urls_are_reported_with_paths() {
        let e = load(
            "[[provider]]\nname = 'idp'\nissuer = 'http://idp.example.com'\n\
             algorithms = ['none', 'HS256', 'XX1']\n",
        )
        .unwrap_err();
        assert_eq!(e.len(), 5, "{e:#?}");
        assert!(
            e[0].starts_with("oauth.provider \"idp\".issuer: "),
            "{e:#?}"
        );
        assert!(e[4].ends_with("must list at least one algorithm"), "{e:#?}");
        assert!(e[1].contains("\"none\" is never allowed"), "{e:#?}");
        assert!(e[2].contains("\"HS256\" is never allowed"), "{e:#?}");
        assert!(e[3].contains("unknown algorithm \"XX1\""), "{e:#?}");
    }

    #[test]
    fn secrets_from_env_or_file_and_never_echoed() {
        let e = load(
            "[[provider]]\nname = 'i'\nissuer = 'https://i.example'\nmode = 'introspection'\n\
             client_id = 'c'\nclient_secret = 'hunter2-literal'\n",
        )
        .unwrap_err();
        assert!(e.iter().all(|l| !l.contains("hunter2-literal")), "{e:#?}");
        // SAFETY of the test: a variable name no other test uses.
        unsafe { std::env::set_var("MAILGATE_TEST_OAUTH_SECRET", "s3cret") };
        let o = load(
            "[[provider]]\nname = 'i'\nissuer = 'https://i.example'\nmode = 'introspection'\n\
             client_id = 'c'\nclient_secret = 'env:MAILGATE_TEST_OAUTH_SECRET'\n",
        )
        .unwrap();
        let p = &o.providers[0];
        assert_eq!(p.client_secret.as_ref().unwrap().expose(), "s3cret");
        assert!(!format!("{p:?}").contains("s3cret"));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "from-file\n").unwrap();
        let f: OAuthFile = toml::from_str(
            "[[provider]]\nname = 'i'\nissuer = 'https://i.example'\nmode = 'introspection'\n\
             client_id = 'c'\nclient_secret_file = 'secret'\n",
        )
        .unwrap();
        let mut errors = Vec::new();
        let o = validate(f, dir.path(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            o.providers[0].client_secret.as_ref().unwrap().expose(),
            "from-file"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(load("[[provider]]\nname = 'i'\nissuer = 'https://i'\ncolour = 1\n").is_err());
    }

    #[test]
    fn duplicates_and_tokeninfo_without_endpoint() {
        let e = load(
            "[[provider]]\nname = 'a'\nissuer = 'https://i'\n\
             [[provider]]\nname = 'a'\nissuer = 'https://i'\nmode = 'tokeninfo'\n",
        )
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:#?}");
    }
}
