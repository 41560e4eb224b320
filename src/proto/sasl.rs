//! SASL payloads shared by the IMAP and POP3 machines: PLAIN (RFC 4616), LOGIN
//! (draft-murchison-sasl-login), XOAUTH2 (Google/Microsoft) and OAUTHBEARER (RFC 7628).
//!
//! Decoders take the base64-decoded client response and return [`Credentials`]; encoders do the
//! reverse for the upstream replay. Both sides refuse separator bytes inside a field, because a
//! field that smuggles `\0` or `\x01` would be read as a different login by the upstream (the
//! injection hole other proxies had). Nothing here logs; errors never carry input bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::proto::{Credentials, Mechanism, UnsafeCredential};
use crate::secret::Secret;

/// A SASL response the machines answer with `BAD` / `-ERR`. Never carries input bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("invalid base64")]
    Base64,
    #[error("malformed {0} response")]
    Malformed(&'static str),
    #[error("user name is not valid UTF-8 or holds a control character")]
    BadUser,
}

/// SASL LOGIN's prompts, as every server sends them (base64 of `Username:` / `Password:`).
pub const LOGIN_USER_PROMPT: &str = "VXNlcm5hbWU6";
pub const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

/// The mechanism a client names in AUTHENTICATE / AUTH (case-insensitive, RFC 4422 3.1).
pub fn parse_mechanism(name: &[u8]) -> Option<Mechanism> {
    match name.to_ascii_uppercase().as_slice() {
        b"PLAIN" => Some(Mechanism::Plain),
        b"LOGIN" => Some(Mechanism::Login),
        b"XOAUTH2" => Some(Mechanism::XOAuth2),
        b"OAUTHBEARER" => Some(Mechanism::OAuthBearer),
        _ => None,
    }
}

/// Strict RFC 4648 base64, as RFC 9051 6.2.2 and RFC 5034 4 require. `=` alone means an empty
/// initial response (RFC 4959), handled by the callers.
pub fn decode_base64(text: &[u8]) -> Result<Vec<u8>, SaslError> {
    STANDARD.decode(text).map_err(|_| SaslError::Base64)
}

pub fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decode a complete one-step response for PLAIN, XOAUTH2 or OAUTHBEARER.
pub fn decode(mechanism: Mechanism, payload: &[u8]) -> Result<Credentials, SaslError> {
    match mechanism {
        Mechanism::Plain => decode_plain(payload),
        Mechanism::XOAuth2 => decode_xoauth2(payload),
        Mechanism::OAuthBearer => decode_oauthbearer(payload),
        Mechanism::Login | Mechanism::ImapLogin | Mechanism::UserPass => {
            Err(SaslError::Malformed("one-step"))
        }
    }
}

/// RFC 4616 2: `message = [authzid] UTF8NUL authcid UTF8NUL passwd`.
pub fn decode_plain(payload: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = payload.split(|b| *b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed("PLAIN"));
    };
    if user.is_empty() {
        return Err(SaslError::Malformed("PLAIN"));
    }
    let authzid = if authzid.is_empty() {
        None
    } else {
        Some(user_name(authzid)?)
    };
    Ok(Credentials::Password {
        authzid,
        user: user_name(user)?,
        password: Secret::new(password.to_vec()),
    })
}

/// SASL LOGIN: the two responses (user name, then password), already base64-decoded.
pub fn login_credentials(user: &[u8], password: Vec<u8>) -> Result<Credentials, SaslError> {
    if user.is_empty() {
        return Err(SaslError::Malformed("LOGIN"));
    }
    Ok(Credentials::Password {
        authzid: None,
        user: user_name(user)?,
        password: Secret::new(password),
    })
}

/// XOAUTH2: `"user=" user "\x01auth=Bearer " token "\x01\x01"`.
pub fn decode_xoauth2(payload: &[u8]) -> Result<Credentials, SaslError> {
    const BAD: SaslError = SaslError::Malformed("XOAUTH2");
    let body = payload.strip_suffix(b"\x01\x01").ok_or(BAD)?;
    let mut user = None;
    let mut token = None;
    for field in body.split(|b| *b == 1) {
        if let Some(u) = field.strip_prefix(b"user=") {
            user = Some(user_name(u)?);
        } else if let Some(auth) = strip_prefix_ci(field, b"auth=") {
            token = Some(bearer(auth).ok_or(BAD)?);
        } else {
            return Err(BAD);
        }
    }
    let (Some(user), Some(token)) = (user, token) else {
        return Err(BAD);
    };
    Ok(Credentials::Bearer {
        user: Some(user),
        token: Secret::new(token),
        host: None,
        port: None,
    })
}

/// RFC 7628 3.1:
/// ```text
/// client-resp = (gs2-header kvsep *kvpair kvsep) / kvsep
/// gs2-header  = gs2-cb-flag "," [ gs2-authzid ] ","        ; RFC 5801
/// kvpair      = key "=" value kvsep ; kvsep = %x01
/// ```
/// Keys `auth`, `host`, `port` are kept; others are ignored as 3.1 allows.
pub fn decode_oauthbearer(payload: &[u8]) -> Result<Credentials, SaslError> {
    const BAD: SaslError = SaslError::Malformed("OAUTHBEARER");
    let (header, rest) = split_once(payload, 1).ok_or(BAD)?;
    let mut header_parts = header.splitn(3, |b| *b == b',');
    let (Some(cb), Some(authzid), Some(tail)) = (
        header_parts.next(),
        header_parts.next(),
        header_parts.next(),
    ) else {
        return Err(BAD);
    };
    // gs2-cb-flag: "n" / "y" / "p=" cb-name; channel binding is not offered, so "p=" is refused.
    if cb != b"n" && cb != b"y" || !tail.is_empty() {
        return Err(BAD);
    }
    let user = match authzid {
        b"" => None,
        a => Some(unescape_saslname(a.strip_prefix(b"a=").ok_or(BAD)?).ok_or(BAD)?),
    };
    // Every kvpair ends in kvsep and one more kvsep closes the list.
    let body = rest.strip_suffix(b"\x01").ok_or(BAD)?;
    let pairs = if body.is_empty() {
        &b""[..]
    } else {
        body.strip_suffix(b"\x01").ok_or(BAD)?
    };
    let (mut token, mut host, mut port) = (None, None, None);
    for pair in pairs.split(|b| *b == 1).filter(|_| !pairs.is_empty()) {
        let (key, value) = split_once(pair, b'=').ok_or(BAD)?;
        match key {
            b"auth" => token = Some(bearer(value).ok_or(BAD)?),
            b"host" => host = Some(String::from_utf8(value.to_vec()).map_err(|_| BAD)?),
            b"port" => {
                port = Some(
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|p| p.parse().ok())
                        .ok_or(BAD)?,
                )
            }
            k if !k.is_empty() && k.iter().all(u8::is_ascii_alphabetic) => {}
            _ => return Err(BAD),
        }
    }
    let token = token.ok_or(BAD)?;
    if host
        .as_deref()
        .is_some_and(|h| h.bytes().any(|b| b.is_ascii_control()))
    {
        return Err(BAD);
    }
    Ok(Credentials::Bearer {
        user,
        token: Secret::new(token),
        host,
        port,
    })
}

/// Encode credentials as the one-step response of `mechanism`, for the upstream replay.
pub fn encode(
    mechanism: Mechanism,
    credentials: &Credentials,
) -> Result<Vec<u8>, UnsafeCredential> {
    match (mechanism, credentials) {
        (
            Mechanism::Plain,
            Credentials::Password {
                authzid,
                user,
                password,
            },
        ) => {
            let password = password.expose();
            check(user.as_bytes(), b"\0\r\n", "user")?;
            check(
                authzid.as_deref().unwrap_or("").as_bytes(),
                b"\0\r\n",
                "authzid",
            )?;
            check(password, b"\0", "password")?;
            let mut out = Vec::with_capacity(user.len() * 2 + password.len() + 2);
            out.extend_from_slice(authzid.as_deref().unwrap_or("").as_bytes());
            out.push(0);
            out.extend_from_slice(user.as_bytes());
            out.push(0);
            out.extend_from_slice(password);
            Ok(out)
        }
        (Mechanism::XOAuth2, Credentials::Bearer { user, token, .. }) => {
            let user = user.as_deref().ok_or(UnsafeCredential { field: "user" })?;
            check(user.as_bytes(), b"\x01\0\r\n", "user")?;
            check_token(token.expose())?;
            Ok(format!("user={user}\x01auth=Bearer {}\x01\x01", token.expose()).into_bytes())
        }
        (
            Mechanism::OAuthBearer,
            Credentials::Bearer {
                user,
                token,
                host,
                port,
            },
        ) => {
            check_token(token.expose())?;
            let mut out = String::from("n,");
            if let Some(user) = user {
                check(user.as_bytes(), b"\x01\0\r\n", "user")?;
                out.push_str("a=");
                out.push_str(&user.replace('=', "=3D").replace(',', "=2C"));
            }
            out.push_str(",\x01");
            if let Some(host) = host {
                check(host.as_bytes(), b"\x01\0\r\n", "host")?;
                out.push_str(&format!("host={host}\x01"));
            }
            if let Some(port) = port {
                out.push_str(&format!("port={port}\x01"));
            }
            out.push_str(&format!("auth=Bearer {}\x01\x01", token.expose()));
            Ok(out.into_bytes())
        }
        _ => Err(UnsafeCredential { field: "mechanism" }),
    }
}

/// `true` when `bytes` holds none of `forbidden`; the error names the field, never the bytes.
pub fn check(bytes: &[u8], forbidden: &[u8], field: &'static str) -> Result<(), UnsafeCredential> {
    if bytes.iter().any(|b| forbidden.contains(b)) {
        Err(UnsafeCredential { field })
    } else {
        Ok(())
    }
}

/// RFC 6750 2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn check_token(token: &str) -> Result<(), UnsafeCredential> {
    if is_b64token(token.as_bytes()) {
        Ok(())
    } else {
        Err(UnsafeCredential { field: "token" })
    }
}

fn is_b64token(t: &[u8]) -> bool {
    let body_len = t.len() - t.iter().rev().take_while(|b| **b == b'=').count();
    body_len > 0
        && t[..body_len]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(b))
}

/// `auth` value: `"Bearer" 1*SP b64token` (scheme case-insensitive, RFC 7235 2.1).
fn bearer(value: &[u8]) -> Option<String> {
    let rest = strip_prefix_ci(value, b"bearer ")?;
    let token = rest.trim_ascii_start();
    is_b64token(token).then(|| String::from_utf8_lossy(token).into_owned())
}

/// RFC 5801 saslname: `=2C` is `,`, `=3D` is `=`; any other `=` is invalid.
fn unescape_saslname(name: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'=' => {
                match name.get(i + 1..i + 3)? {
                    b"2C" => out.push(b','),
                    b"3D" => out.push(b'='),
                    _ => return None,
                }
                i += 3;
            }
            b',' => return None,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    user_name(&out).ok()
}

/// A user name: UTF-8, non-empty, no control characters (they could split a log line or a
/// replayed command).
fn user_name(bytes: &[u8]) -> Result<String, SaslError> {
    let s = std::str::from_utf8(bytes).map_err(|_| SaslError::BadUser)?;
    if s.is_empty() || s.chars().any(char::is_control) {
        return Err(SaslError::BadUser);
    }
    Ok(s.to_owned())
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|b| *b == sep)?;
    Some((&s[..i], &s[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(user: &str, pass: &[u8]) -> Credentials {
        Credentials::Password {
            authzid: None,
            user: user.into(),
            password: Secret::new(pass.to_vec()),
        }
    }

    fn bearer_creds(user: Option<&str>, token: &str) -> Credentials {
        Credentials::Bearer {
            user: user.map(Into::into),
            token: Secret::new(token.into()),
            host: None,
            port: None,
        }
    }

    #[test]
    fn plain_round_trip() {
        let c = decode_plain(b"\0alice@example.com\0s3cr\x01t").unwrap();
        assert_eq!(c, pw("alice@example.com", b"s3cr\x01t"));
        assert_eq!(
            encode(Mechanism::Plain, &c).unwrap(),
            b"\0alice@example.com\0s3cr\x01t"
        );
        let c = decode_plain(b"admin\0alice\0pw").unwrap();
        assert!(matches!(&c, Credentials::Password { authzid: Some(a), .. } if a == "admin"));
    }

    #[test]
    fn plain_rejects_malformed() {
        for bad in [
            &b""[..],
            b"alice",
            b"\0alice",
            b"\0\0pw",
            b"a\0b\0c\0d",
            b"\0al\nice\0pw",
        ] {
            assert!(decode_plain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(decode_plain(b"\0\xff\0pw"), Err(SaslError::BadUser));
    }

    #[test]
    fn xoauth2_round_trip() {
        let raw = b"user=alice@example.com\x01auth=Bearer ya29.abc-_~+/==\x01\x01";
        let c = decode_xoauth2(raw).unwrap();
        assert_eq!(
            c,
            bearer_creds(Some("alice@example.com"), "ya29.abc-_~+/==")
        );
        assert_eq!(encode(Mechanism::XOAuth2, &c).unwrap(), raw);
    }

    #[test]
    fn xoauth2_rejects_malformed_and_smuggling() {
        for bad in [
            &b"user=a\x01auth=Bearer t\x01"[..],
            b"user=a\x01auth=Basic t\x01\x01",
            b"auth=Bearer t\x01\x01",
            b"user=a\x01auth=Bearer t\r\nA LOGOUT\x01\x01",
            b"user=a\x01auth=Bearer \x01\x01",
            b"user=a\x01x=y\x01auth=Bearer t\x01\x01",
        ] {
            assert!(decode_xoauth2(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn oauthbearer_round_trip() {
        let raw = b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01";
        let c = decode_oauthbearer(raw).unwrap();
        assert_eq!(
            c,
            Credentials::Bearer {
                user: Some("user@example.com".into()),
                token: Secret::new("vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==".into()),
                host: Some("server.example.com".into()),
                port: Some(143),
            }
        );
        assert_eq!(encode(Mechanism::OAuthBearer, &c).unwrap(), raw);
    }

    #[test]
    fn oauthbearer_saslname_escapes() {
        let c = decode_oauthbearer(b"n,a=a=3Db=2Cc,\x01auth=Bearer t\x01\x01").unwrap();
        assert_eq!(c, bearer_creds(Some("a=b,c"), "t"));
        let enc = encode(Mechanism::OAuthBearer, &c).unwrap();
        assert_eq!(enc, b"n,a=a=3Db=2Cc,\x01auth=Bearer t\x01\x01");
        assert_eq!(
            decode_oauthbearer(b"n,,\x01auth=Bearer t\x01\x01").unwrap(),
            bearer_creds(None, "t")
        );
    }

    #[test]
    fn oauthbearer_rejects_malformed() {
        for bad in [
            &b"n,a=u,\x01auth=Bearer t\x01"[..],
            b"p=tls-unique,a=u,\x01auth=Bearer t\x01\x01",
            b"n,a=u=,\x01auth=Bearer t\x01\x01",
            b"n,a=u,\x01host=x\x01\x01",
            b"n,a=u,\x01port=99999\x01auth=Bearer t\x01\x01",
            b"n,a=u,\x01auth=Bearer t t\x01\x01",
        ] {
            assert!(decode_oauthbearer(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn encoders_refuse_separators() {
        assert!(encode(Mechanism::Plain, &pw("al\0ice", b"pw")).is_err());
        assert!(encode(Mechanism::Plain, &pw("alice", b"p\0w")).is_err());
        assert!(encode(Mechanism::Plain, &pw("alice", b"p\r\nw")).is_ok());
        assert!(encode(Mechanism::XOAuth2, &bearer_creds(Some("a\x01b"), "t")).is_err());
        assert!(encode(Mechanism::XOAuth2, &bearer_creds(Some("a"), "t\x01")).is_err());
        assert!(encode(Mechanism::XOAuth2, &bearer_creds(None, "t")).is_err());
        assert!(encode(Mechanism::OAuthBearer, &bearer_creds(Some("a"), "t\r\n")).is_err());
    }

    #[test]
    fn mechanism_names() {
        assert_eq!(parse_mechanism(b"xoauth2"), Some(Mechanism::XOAuth2));
        assert_eq!(
            parse_mechanism(b"OAuthBearer"),
            Some(Mechanism::OAuthBearer)
        );
        assert_eq!(parse_mechanism(b"CRAM-MD5"), None);
        assert_eq!(decode_base64(b"AGFsaWNlAHB3").unwrap(), b"\0alice\0pw");
        assert!(decode_base64(b"not base64!").is_err());
    }
}
