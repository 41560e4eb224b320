//! Table tests from proxy-protocol.txt's examples, every byte split, garbage, limits, a
//! never-panics property and the encoder round trip.

use std::net::SocketAddr;

use proptest::prelude::*;

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn proxied(source: &str, destination: &str) -> ProxyHeader {
    ProxyHeader::Proxied {
        source: addr(source),
        destination: addr(destination),
    }
}

/// A v2 header: signature, `ver_cmd`, `fam`, then `body` with its length.
fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(ver_cmd);
    out.push(fam);
    out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn tcp4_block() -> Vec<u8> {
    // 192.0.2.10:56324 -> 198.51.100.1:993
    let mut b = vec![192, 0, 2, 10, 198, 51, 100, 1];
    b.extend_from_slice(&56324u16.to_be_bytes());
    b.extend_from_slice(&993u16.to_be_bytes());
    b
}

fn tcp6_block() -> Vec<u8> {
    let mut b = Vec::new();
    let src: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    let dst: std::net::Ipv6Addr = "2001:db8::2".parse().unwrap();
    b.extend_from_slice(&src.octets());
    b.extend_from_slice(&dst.octets());
    b.extend_from_slice(&40000u16.to_be_bytes());
    b.extend_from_slice(&143u16.to_be_bytes());
    b
}

/// Every valid header with what it must parse to.
fn valid() -> Vec<(&'static str, Vec<u8>, ProxyHeader)> {
    let mut tlv = tcp4_block();
    // PP2_TYPE_ALPN "imap", PP2_TYPE_NOOP empty, PP2_TYPE_AUTHORITY "mail.example.com".
    tlv.extend_from_slice(&[0x01, 0x00, 0x04]);
    tlv.extend_from_slice(b"imap");
    tlv.extend_from_slice(&[0x04, 0x00, 0x00]);
    tlv.extend_from_slice(&[0x02, 0x00, 0x10]);
    tlv.extend_from_slice(b"mail.example.com");
    vec![
        (
            "v1 tcp4",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
            proxied("192.168.0.1:56324", "192.168.0.11:443"),
        ),
        (
            "v1 tcp4 max",
            b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n".to_vec(),
            proxied("255.255.255.255:65535", "255.255.255.255:65535"),
        ),
        (
            "v1 tcp4 port 0",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 0 0\r\n".to_vec(),
            proxied("10.0.0.1:0", "10.0.0.2:0"),
        ),
        (
            "v1 tcp6",
            b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 143\r\n".to_vec(),
            proxied("[2001:db8::1]:40000", "[2001:db8::2]:143"),
        ),
        (
            "v1 tcp6 max",
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
              ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
                .to_vec(),
            proxied(
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            ),
        ),
        (
            "v1 unknown short",
            b"PROXY UNKNOWN\r\n".to_vec(),
            ProxyHeader::Unknown,
        ),
        (
            // Section 2.1's worst case: exactly 107 bytes.
            "v1 unknown worst case",
            b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
              ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
                .to_vec(),
            ProxyHeader::Unknown,
        ),
        (
            "v2 proxy tcp4",
            v2(0x21, 0x11, &tcp4_block()),
            proxied("192.0.2.10:56324", "198.51.100.1:993"),
        ),
        (
            "v2 proxy tcp6",
            v2(0x21, 0x21, &tcp6_block()),
            proxied("[2001:db8::1]:40000", "[2001:db8::2]:143"),
        ),
        (
            "v2 proxy tcp4 with tlvs",
            v2(0x21, 0x11, &tlv),
            proxied("192.0.2.10:56324", "198.51.100.1:993"),
        ),
        ("v2 local", v2(0x20, 0x00, &[]), ProxyHeader::Local),
        (
            // LOCAL ignores the family and address block.
            "v2 local with an address",
            v2(0x20, 0x11, &tcp4_block()),
            ProxyHeader::Local,
        ),
        ("v2 proxy unspec", v2(0x21, 0x00, &[]), ProxyHeader::Unknown),
        (
            "v2 proxy unix stream",
            v2(0x21, 0x31, &[0u8; 216]),
            ProxyHeader::Unknown,
        ),
        (
            "v2 proxy unix dgram with tlv",
            v2(
                0x21,
                0x32,
                &[[0u8; 216].as_slice(), &[0xee, 0, 1, 7]].concat(),
            ),
            ProxyHeader::Unknown,
        ),
    ]
}

#[test]
fn worst_case_v1_is_107_bytes() {
    let (_, bytes, _) = valid()
        .into_iter()
        .find(|(n, ..)| *n == "v1 unknown worst case")
        .unwrap();
    assert_eq!(bytes.len(), MAX_V1_LEN);
}

#[test]
fn valid_headers_parse_and_leave_the_rest() {
    for (name, bytes, want) in valid() {
        for tail in [
            &b""[..],
            b"* OK IMAP4rev1 ready\r\n",
            b"\r\n\r\n\0",
            b"PROXY ",
        ] {
            let input = [bytes.as_slice(), tail].concat();
            assert_eq!(
                parse(&input),
                Ok(Parsed::Complete {
                    header: want,
                    consumed: bytes.len()
                }),
                "{name} + {tail:?}"
            );
        }
    }
}

/// stalwart-style chunking: every strict prefix is Incomplete, the whole is Complete.
#[test]
fn every_prefix_is_incomplete() {
    for (name, bytes, _) in valid() {
        for cut in 0..bytes.len() {
            assert_eq!(
                parse(&bytes[..cut]),
                Ok(Parsed::Incomplete),
                "{name} cut at {cut}"
            );
        }
    }
}

#[test]
fn garbage_is_rejected() {
    use ProxyHeaderError::*;
    let bad: Vec<(&str, Vec<u8>, ProxyHeaderError)> = vec![
        ("imap command", b"a1 LOGIN u p\r\n".to_vec(), NotProxyHeader),
        ("tls hello", vec![0x16, 0x03, 0x01, 0x00], NotProxyHeader),
        ("lowercase", b"proxy TCP4".to_vec(), NotProxyHeader),
        ("P then junk", b"PX".to_vec(), NotProxyHeader),
        ("no space", b"PROXYTCP4".to_vec(), NotProxyHeader),
        ("CR then junk", b"\r\nGET".to_vec(), NotProxyHeader),
        (
            "lf in v1",
            b"PROXY TCP4\n".to_vec(),
            V1Malformed("byte outside printable ASCII"),
        ),
        (
            "nul in v1",
            b"PROXY \0".to_vec(),
            V1Malformed("byte outside printable ASCII"),
        ),
        (
            "8-bit in v1",
            b"PROXY \xff".to_vec(),
            V1Malformed("byte outside printable ASCII"),
        ),
        (
            "cr cr",
            b"PROXY UNKNOWN\r\r".to_vec(),
            V1Malformed("CR not followed by LF"),
        ),
        (
            "udp",
            b"PROXY UDP4 1.1.1.1 2.2.2.2 1 2\r\n".to_vec(),
            V1Malformed("protocol not TCP4, TCP6 or UNKNOWN"),
        ),
        (
            "tcp4 v6 addr",
            b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec(),
            V1Malformed("bad IPv4 address"),
        ),
        (
            "tcp6 v4 addr",
            b"PROXY TCP6 1.1.1.1 ::1 1 2\r\n".to_vec(),
            V1Malformed("bad IPv6 address"),
        ),
        (
            "octal-ish",
            b"PROXY TCP4 010.0.0.1 1.1.1.1 1 2\r\n".to_vec(),
            V1Malformed("bad IPv4 address"),
        ),
        (
            "port too big",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 65536 2\r\n".to_vec(),
            V1Malformed("bad port"),
        ),
        (
            "port leading zero",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 080 2\r\n".to_vec(),
            V1Malformed("bad port"),
        ),
        (
            "port sign",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 +80 2\r\n".to_vec(),
            V1Malformed("bad port"),
        ),
        (
            "two spaces",
            b"PROXY TCP4  1.1.1.1 1.1.1.1 1 2\r\n".to_vec(),
            V1Malformed("missing source address"),
        ),
        (
            "missing port",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 1\r\n".to_vec(),
            V1Malformed("missing destination port"),
        ),
        (
            "extra field",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 1 2 3\r\n".to_vec(),
            V1Malformed("extra field"),
        ),
        (
            "trailing space",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 1 2 \r\n".to_vec(),
            V1Malformed("extra field"),
        ),
        (
            "empty",
            b"PROXY \r\n".to_vec(),
            V1Malformed("missing protocol"),
        ),
        ("v2 version 1", v2(0x11, 0x11, &tcp4_block()), V2Version(1)),
        ("v2 version 3", v2(0x31, 0x11, &tcp4_block()), V2Version(3)),
        ("v2 command 2", v2(0x22, 0x11, &tcp4_block()), V2Command(2)),
        ("v2 udp4", v2(0x21, 0x12, &tcp4_block()), V2Family(0x12)),
        ("v2 udp6", v2(0x21, 0x22, &tcp6_block()), V2Family(0x22)),
        ("v2 family 4", v2(0x21, 0x41, &[]), V2Family(0x41)),
        ("v2 transport 3", v2(0x21, 0x13, &[]), V2Family(0x13)),
        (
            "v2 inet unspec transport",
            v2(0x21, 0x10, &[]),
            V2Family(0x10),
        ),
        (
            "v2 short tcp4",
            v2(0x21, 0x11, &[0; 11]),
            V2AddressTooShort(11),
        ),
        (
            "v2 short tcp6",
            v2(0x21, 0x21, &[0; 12]),
            V2AddressTooShort(12),
        ),
        (
            "v2 short unix",
            v2(0x21, 0x31, &[0; 36]),
            V2AddressTooShort(36),
        ),
        (
            "v2 tlv past end",
            v2(
                0x21,
                0x11,
                &[tcp4_block().as_slice(), &[0x01, 0x00, 0x05, b'a']].concat(),
            ),
            V2BadTlv,
        ),
        (
            "v2 truncated tlv header",
            v2(
                0x21,
                0x11,
                &[tcp4_block().as_slice(), &[0x01, 0x00]].concat(),
            ),
            V2BadTlv,
        ),
    ];
    for (name, bytes, want) in bad {
        assert_eq!(parse(&bytes), Err(want), "{name}");
    }
}

#[test]
fn oversize_is_rejected() {
    // No CRLF in 107 bytes.
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(MAX_V1_LEN, b'x');
    assert_eq!(parse(&long), Err(ProxyHeaderError::V1TooLong));
    assert_eq!(parse(&long[..MAX_V1_LEN - 1]), Ok(Parsed::Incomplete));
    // CR as the 107th byte: the LF would be the 108th.
    long[MAX_V1_LEN - 1] = b'\r';
    assert_eq!(parse(&long), Err(ProxyHeaderError::V1TooLong));
    long.push(b'\n');
    assert_eq!(parse(&long), Err(ProxyHeaderError::V1TooLong));

    // v2: rejected from the length field alone, before the body arrives.
    let mut big = V2_SIGNATURE.to_vec();
    big.extend_from_slice(&[0x21, 0x11]);
    let len = u16::try_from(MAX_V2_LEN - V2_FIXED + 1).unwrap();
    big.extend_from_slice(&len.to_be_bytes());
    assert_eq!(
        parse(&big),
        Err(ProxyHeaderError::V2TooLong(MAX_V2_LEN + 1))
    );
    big.truncate(14);
    big.extend_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(
        parse(&big),
        Err(ProxyHeaderError::V2TooLong(V2_FIXED + 65535))
    );
    // Exactly the bound is fine.
    let mut body = tcp4_block();
    body.extend_from_slice(&[0xee, 0, 0]);
    body.resize(MAX_V2_LEN - V2_FIXED, 0);
    let rest = u16::try_from(MAX_V2_LEN - V2_FIXED - 15).unwrap();
    body[13..15].copy_from_slice(&rest.to_be_bytes());
    let max = v2(0x21, 0x11, &body);
    assert_eq!(max.len(), MAX_V2_LEN);
    assert!(matches!(parse(&max), Ok(Parsed::Complete { consumed, .. }) if consumed == MAX_V2_LEN));
}

#[test]
fn encode_round_trips() {
    for (s, d) in [
        ("192.0.2.1:5678", "198.51.100.7:143"),
        ("[2001:db8::1]:1", "[2001:db8::2]:65535"),
        ("0.0.0.0:0", "255.255.255.255:65535"),
    ] {
        let bytes = encode_v2(addr(s), addr(d));
        assert_eq!(
            parse(&bytes),
            Ok(Parsed::Complete {
                header: proxied(s, d),
                consumed: bytes.len()
            })
        );
    }
    // Mixed families go out as IPv6, the v4 one mapped.
    let bytes = encode_v2(addr("192.0.2.1:5678"), addr("[2001:db8::2]:143"));
    assert_eq!(
        parse(&bytes),
        Ok(Parsed::Complete {
            header: proxied("[::ffff:192.0.2.1]:5678", "[2001:db8::2]:143"),
            consumed: 52
        })
    );
}

#[test]
fn encode_matches_spec_layout() {
    let bytes = encode_v2(addr("192.0.2.10:56324"), addr("198.51.100.1:993"));
    assert_eq!(bytes, v2(0x21, 0x11, &tcp4_block()));
}

proptest! {
    #[test]
    fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&bytes);
    }

    /// Inputs that start like a header reach the deeper code paths.
    #[test]
    fn never_panics_after_a_signature(
        v1 in any::<bool>(),
        rest in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let start: &[u8] = if v1 { V1_PREFIX } else { V2_SIGNATURE };
        let input = [start, &rest].concat();
        if let Ok(Parsed::Complete { consumed, .. }) = parse(&input) {
            prop_assert!(consumed <= input.len());
        }
    }

    /// Printable v1 lines exercise the field parser.
    #[test]
    fn never_panics_on_v1_lines(line in "PROXY [A-Z0-9 .:]{0,100}\r\n") {
        let _ = parse(line.as_bytes());
    }

    #[test]
    fn encode_parse_round_trip(s in any::<SocketAddr>(), d in any::<SocketAddr>()) {
        let bytes = encode_v2(s, d);
        let Ok(Parsed::Complete { header, consumed }) = parse(&bytes) else {
            return Err(TestCaseError::fail("encoded header did not parse"));
        };
        prop_assert_eq!(consumed, bytes.len());
        let ProxyHeader::Proxied { source, destination } = header else {
            return Err(TestCaseError::fail("not Proxied"));
        };
        prop_assert_eq!(source.port(), s.port());
        prop_assert_eq!(destination.port(), d.port());
        prop_assert_eq!(source.ip().to_canonical(), s.ip().to_canonical());
        prop_assert_eq!(destination.ip().to_canonical(), d.ip().to_canonical());
    }
}
