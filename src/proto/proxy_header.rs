//! Stage: PROXY protocol header, the first bytes of a connection from a trusted load balancer.
//!
//! Input: the bytes read so far from a downstream connection on a listener with
//! `proxy_protocol = true`. Output: [`Parsed::Incomplete`] (read more), or the header and how
//! many bytes it took; everything after `consumed` belongs to the mail protocol. Also
//! [`encode_v2`], the header mailgate sends to an upstream with `send_proxy_protocol = true`.
//!
//! Implements HAProxy's "The PROXY protocol, Versions 1 & 2" (doc/proxy-protocol.txt, 2020/03/05),
//! sections 2.1 (text, v1) and 2.2 (binary, v2).
//!
//! Must not: do I/O, look at the clock, or decide trust. Whether the peer may send a header at
//! all is the driver's call (`proxy_trusted` CIDRs); this module only reads one.
//!
//! Strictness (section 2: "the receiver ... must not try to guess"): the first byte that cannot
//! start or continue a header is an error at once, not after a timeout, so a mail client that
//! connects straight to a PROXY listener is refused on its first line. Sizes are bounded before
//! any address is decoded: a v1 line is at most 107 bytes with CRLF (section 2.1), a v2 header at
//! most [`MAX_V2_LEN`] bytes in total, far above HAProxy's own (it sends < 300 bytes with SSL
//! TLVs) and far below the 64 KiB the 16-bit length allows.
//!
//! | input so far                                 | result                          |
//! |----------------------------------------------|---------------------------------|
//! | a strict prefix of `PROXY ` or the v2 magic  | `Incomplete`                    |
//! | `PROXY ` line without CRLF, < 107 bytes      | `Incomplete` (bytes checked)    |
//! | `PROXY ` line, 107 bytes and no CRLF         | `Err(V1TooLong)`                |
//! | v2 magic + 16 bytes, length > bound          | `Err(V2TooLong)`                |
//! | v2 magic, fewer than 16 + length bytes       | `Incomplete`                    |
//! | a full header                                | `Complete { header, consumed }` |
//! | anything else                                | `Err(..)`                       |

// `core::net`: the address types only (the standard library re-exports them), no sockets.
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Section 2.1: "PROXY UNKNOWN ffff:...:ffff ffff:...:ffff 65535 65535\r\n" => 107 chars, the
/// worst case; "If the CRLF is not found in the first 107 characters, the receiver should
/// declare the line invalid".
pub const MAX_V1_LEN: usize = 107;

/// Largest v2 header accepted, the 16-byte fixed part included: 4 KiB. An AF_UNIX address block
/// is 216 bytes and HAProxy's SSL TLVs add a few hundred; 4 KiB leaves room for any sender
/// while keeping what an unauthenticated peer can make us buffer small.
pub const MAX_V2_LEN: usize = 4096;

/// Section 2.2: the 12-byte v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// Signature, version/command, family/transport, 2 length bytes.
const V2_FIXED: usize = 16;

/// What the first bytes of a connection said about its real endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// v2 `LOCAL`: the proxy opened the connection itself (a health check). Use the socket's own
    /// addresses (section 2.2: "the receiver must ... use the real connection endpoints").
    Local,
    /// The connection was relayed for `source`; `destination` is the address the downstream
    /// connected to on the proxy.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// Relayed, but the sender gave no IP address: v1 `UNKNOWN`, v2 `AF_UNSPEC` or `AF_UNIX`.
    /// Use the socket's own addresses.
    Unknown,
}

/// The outcome of [`parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "an Incomplete result means the caller must read more bytes before going on"]
pub enum Parsed {
    /// Every byte so far fits a header, but it is not complete. Read more and call again with
    /// all the bytes (the parser keeps no state).
    Incomplete,
    /// A complete, valid header. `buf[consumed..]` is the start of the mail protocol stream.
    Complete {
        header: ProxyHeader,
        consumed: usize,
    },
}

/// Why the bytes are not a PROXY header. Never carries input bytes (they are attacker input and
/// may hold anything); the driver audits the variant and closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The input starts with neither `PROXY ` nor the v2 signature.
    #[error("not a PROXY protocol header")]
    NotProxyHeader,
    /// No CRLF within the first 107 bytes of a v1 line.
    #[error("PROXY v1 line longer than {MAX_V1_LEN} bytes")]
    V1TooLong,
    /// A v1 line with a byte or field that does not fit the grammar.
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    /// v2 version nibble other than 2.
    #[error("unsupported PROXY v2 version {0}")]
    V2Version(u8),
    /// v2 command nibble other than LOCAL (0) or PROXY (1).
    #[error("unsupported PROXY v2 command {0}")]
    V2Command(u8),
    /// v2 family/transport byte outside the table of section 2.2, or UDP (a mail session is TCP).
    #[error("unsupported PROXY v2 address family/transport 0x{0:02x}")]
    V2Family(u8),
    /// v2 header larger than [`MAX_V2_LEN`] in total.
    #[error("PROXY v2 header of {0} bytes exceeds {MAX_V2_LEN}")]
    V2TooLong(usize),
    /// v2 length shorter than the address block its family needs.
    #[error("PROXY v2 length {0} too short for its address family")]
    V2AddressTooShort(u16),
    /// v2 TLV whose length runs past the end of the header.
    #[error("PROXY v2 TLV runs past the end of the header")]
    V2BadTlv,
}

/// Parses a PROXY v1 or v2 header at the start of `buf`.
///
/// The version is chosen by the first byte: `P` for v1, CR for v2 (section 2.2: the v2
/// signature starts with CR LF CR LF so that it can never be a v1 line or a valid command of
/// most text protocols).
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyHeaderError::NotProxyHeader),
    }
}

/// Section 2.1, version 1:
///
/// ```text
/// line     = "PROXY" SP ( tcp4 / tcp6 / unknown ) CRLF
/// tcp4     = "TCP4" SP ipv4 SP ipv4 SP port SP port
/// tcp6     = "TCP6" SP ipv6 SP ipv6 SP port SP port
/// unknown  = "UNKNOWN" *( %x20-7E )          ; "the receiver must ignore anything presented
///                                            ;  before the CRLF is found"
/// port     = "0" / %x31-39 0*4DIGIT          ; 0..65535, no leading zero
/// ```
///
/// Exactly one space between fields (section 2.1: "a single space").
fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let prefix = buf.len().min(V1_PREFIX.len());
    if buf[..prefix] != V1_PREFIX[..prefix] {
        return Err(ProxyHeaderError::NotProxyHeader);
    }
    let window = &buf[..buf.len().min(MAX_V1_LEN)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        check_v1_bytes(window)?;
        return if window.len() >= MAX_V1_LEN {
            Err(ProxyHeaderError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = &window[..cr];
    check_v1_bytes(line)?;
    match buf.get(cr + 1) {
        None if cr + 1 >= MAX_V1_LEN => return Err(ProxyHeaderError::V1TooLong),
        None => return Ok(Parsed::Incomplete),
        Some(b'\n') if cr + 2 <= MAX_V1_LEN => {}
        Some(b'\n') => return Err(ProxyHeaderError::V1TooLong),
        Some(_) => return Err(ProxyHeaderError::V1Malformed("CR not followed by LF")),
    }
    // check_v1_bytes allowed only printable ASCII, so this is valid UTF-8.
    let Ok(line) = std::str::from_utf8(line) else {
        return Err(ProxyHeaderError::V1Malformed("not ASCII"));
    };
    let header = v1_fields(line)?;
    Ok(Parsed::Complete {
        header,
        consumed: cr + 2,
    })
}

/// Before the CR only printable ASCII may appear; a LF, NUL or 8-bit byte means this is not a
/// v1 line, and saying so early beats waiting for 107 bytes that may never come.
fn check_v1_bytes(bytes: &[u8]) -> Result<(), ProxyHeaderError> {
    if bytes.iter().all(|&b| (0x20..=0x7e).contains(&b)) {
        Ok(())
    } else {
        Err(ProxyHeaderError::V1Malformed(
            "byte outside printable ASCII",
        ))
    }
}

/// The fields of a complete v1 line without its CRLF.
fn v1_fields(line: &str) -> Result<ProxyHeader, ProxyHeaderError> {
    let rest = line
        .strip_prefix("PROXY ")
        .ok_or(ProxyHeaderError::NotProxyHeader)?;
    if rest == "UNKNOWN" || rest.starts_with("UNKNOWN ") {
        return Ok(ProxyHeader::Unknown);
    }
    let mut fields = rest.split(' ');
    let mut next = |what: &'static str| match fields.next() {
        Some(f) if !f.is_empty() => Ok(f),
        _ => Err(ProxyHeaderError::V1Malformed(what)),
    };
    let family = next("missing protocol")?;
    let (src, dst) = (
        next("missing source address")?,
        next("missing destination address")?,
    );
    let (sport, dport) = (
        next("missing source port")?,
        next("missing destination port")?,
    );
    if fields.next().is_some() {
        return Err(ProxyHeaderError::V1Malformed("extra field"));
    }
    let (src, dst): (IpAddr, IpAddr) = match family {
        "TCP4" => (ipv4(src)?.into(), ipv4(dst)?.into()),
        "TCP6" => (ipv6(src)?.into(), ipv6(dst)?.into()),
        _ => {
            return Err(ProxyHeaderError::V1Malformed(
                "protocol not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(src, port(sport)?),
        destination: SocketAddr::new(dst, port(dport)?),
    })
}

/// Dotted quad; std rejects leading zeros ("010.0.0.1" could be read as octal).
fn ipv4(s: &str) -> Result<Ipv4Addr, ProxyHeaderError> {
    s.parse()
        .map_err(|_| ProxyHeaderError::V1Malformed("bad IPv4 address"))
}

/// RFC 4291 section 2.2 text form.
fn ipv6(s: &str) -> Result<Ipv6Addr, ProxyHeaderError> {
    s.parse()
        .map_err(|_| ProxyHeaderError::V1Malformed("bad IPv6 address"))
}

fn port(s: &str) -> Result<u16, ProxyHeaderError> {
    let digits = s.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = s.len() > 1 && s.starts_with('0');
    match s.parse::<u16>() {
        Ok(p) if digits && !leading_zero && s.len() <= 5 => Ok(p),
        _ => Err(ProxyHeaderError::V1Malformed("bad port")),
    }
}

/// Section 2.2, version 2:
///
/// ```text
/// header   = signature ver-cmd fam len addr *tlv
/// ver-cmd  = %x20 / %x21                      ; version 2, LOCAL / PROXY
/// fam      = %x00 / %x11 / %x21 / %x31 / %x32 ; UNSPEC, TCP4, TCP6, UNIX stream/dgram
/// len      = 2OCTET                           ; network order, bytes after the 16 fixed ones
/// addr     = ipv4 (12) / ipv6 (36) / unix (216) / nothing (UNSPEC)
/// tlv      = type length-hi length-lo value
/// ```
///
/// UDP (`%x12`, `%x22`) is valid in the protocol but never for a TCP mail session: refused.
/// TLVs (ALPN, authority, CRC32C, SSL, NETNS, ...) are skipped after their lengths are checked;
/// mailgate trusts the proxy it accepts headers from, so it does not verify PP2_TYPE_CRC32C.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let prefix = buf.len().min(V2_SIGNATURE.len());
    if buf[..prefix] != V2_SIGNATURE[..prefix] {
        return Err(ProxyHeaderError::NotProxyHeader);
    }
    // Check each fixed byte as soon as it arrives, so garbage fails early.
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::V2Version(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        other => return Err(ProxyHeaderError::V2Command(other)),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // Address block size per family (section 2.2); `None` for families with no IP address.
    let addr_len = match fam {
        0x00 => 0,
        0x11 => 12,
        0x21 => 36,
        0x31 | 0x32 => 216,
        other => return Err(ProxyHeaderError::V2Family(other)),
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(Parsed::Incomplete);
    };
    let len = u16::from_be_bytes([hi, lo]);
    let total = V2_FIXED + usize::from(len);
    if total > MAX_V2_LEN {
        return Err(ProxyHeaderError::V2TooLong(total));
    }
    // LOCAL: "discard the protocol block including the family which is ignored". The length
    // still bounds how much to skip.
    if !local && usize::from(len) < addr_len {
        return Err(ProxyHeaderError::V2AddressTooShort(len));
    }
    let Some(block) = buf.get(V2_FIXED..total) else {
        return Ok(Parsed::Incomplete);
    };
    if local {
        return Ok(Parsed::Complete {
            header: ProxyHeader::Local,
            consumed: total,
        });
    }
    let (addr, tlvs) = block.split_at(addr_len);
    check_tlvs(tlvs)?;
    let header = match fam {
        0x11 => {
            let ip = |at: usize| Ipv4Addr::new(addr[at], addr[at + 1], addr[at + 2], addr[at + 3]);
            let port = |at: usize| u16::from_be_bytes([addr[at], addr[at + 1]]);
            ProxyHeader::Proxied {
                source: SocketAddrV4::new(ip(0), port(8)).into(),
                destination: SocketAddrV4::new(ip(4), port(10)).into(),
            }
        }
        0x21 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&addr[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([addr[at], addr[at + 1]]);
            ProxyHeader::Proxied {
                source: SocketAddrV6::new(ip(0), port(32), 0, 0).into(),
                destination: SocketAddrV6::new(ip(16), port(34), 0, 0).into(),
            }
        }
        // AF_UNSPEC and AF_UNIX: relayed, but no IP address to report.
        _ => ProxyHeader::Unknown,
    };
    Ok(Parsed::Complete {
        header,
        consumed: total,
    })
}

/// Walks the TLVs after the address block: each must fit inside the header exactly.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyHeaderError> {
    while !tlvs.is_empty() {
        let [_kind, hi, lo, rest @ ..] = tlvs else {
            return Err(ProxyHeaderError::V2BadTlv);
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        tlvs = rest.get(len..).ok_or(ProxyHeaderError::V2BadTlv)?;
    }
    Ok(())
}

/// A v2 `PROXY` header for a TCP connection from `source` to `destination`, no TLVs: what
/// mailgate sends first to an upstream with `send_proxy_protocol = true` (Dovecot
/// `haproxy_trusted_networks`).
///
/// When the two addresses are of different families (a v4 downstream on a dual-stack v6
/// listener), both are sent as IPv6, the v4 one IPv4-mapped (`::ffff:a.b.c.d`), since one
/// header holds one family.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(V2_FIXED + 36);
    out.extend_from_slice(V2_SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
        }
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(source).octets());
            out.extend_from_slice(&v6(destination).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests;
