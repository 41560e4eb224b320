//! The PROXY v1/v2 header parser and the v2 encoder.
//!
//! Checks: `parse` never panics; `Complete { consumed }` is within the input; the parser is
//! prefix-consistent (it keeps no state, so every shorter prefix of a complete header is
//! `Incomplete`, every longer input gives the same header, and an error stays an error as bytes
//! arrive); `encode_v2` → `parse` gives back the addresses for any pair.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use mailgate::proto::proxy_header::{self, Parsed, ProxyHeader};

fuzz_target!(|data: &[u8]| {
    let full = proxy_header::parse(data);
    if let Ok(Parsed::Complete { consumed, .. }) = full {
        assert!(
            consumed > 0 && consumed <= data.len(),
            "consumed out of bounds"
        );
    }
    // Prefix consistency, on every prefix of short inputs and a sample of long ones.
    let step = (data.len() / 64).max(1);
    let mut earlier_error = false;
    for k in (0..data.len()).step_by(step) {
        let prefix = proxy_header::parse(&data[..k]);
        match (&prefix, &full) {
            (Err(_), _) => earlier_error = true,
            (Ok(Parsed::Incomplete), _) => {
                assert!(!earlier_error, "an error turned back into Incomplete");
            }
            (Ok(Parsed::Complete { consumed, .. }), _) => {
                assert!(!earlier_error, "an error turned back into a header");
                assert_eq!(&prefix, &full, "a longer input changed a complete header");
                assert!(*consumed <= k);
            }
        }
        if let Ok(Parsed::Complete { consumed, .. }) = full {
            if k < consumed {
                assert_eq!(
                    prefix,
                    Ok(Parsed::Incomplete),
                    "prefix of a header not Incomplete"
                );
            }
        }
    }
    if earlier_error {
        assert!(full.is_err(), "an error turned back into success");
    }

    // encode_v2 round trip, with the fuzzer's bytes after the header.
    let mut u = Unstructured::new(data);
    let (Ok(source), Ok(destination)) = (address(&mut u), address(&mut u)) else {
        return;
    };
    let mut encoded = proxy_header::encode_v2(source, destination);
    let len = encoded.len();
    encoded.extend_from_slice(u.take_rest());
    let (want_source, want_destination) = match (source, destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => (source, destination),
        _ => (as_v6(source), as_v6(destination)),
    };
    assert_eq!(
        proxy_header::parse(&encoded),
        Ok(Parsed::Complete {
            header: ProxyHeader::Proxied {
                source: want_source,
                destination: want_destination,
            },
            consumed: len,
        }),
        "encode_v2 does not round-trip for {source} -> {destination}"
    );
});

fn address(u: &mut Unstructured<'_>) -> arbitrary::Result<SocketAddr> {
    let ip = if bool::arbitrary(u)? {
        IpAddr::V4(Ipv4Addr::from(u32::arbitrary(u)?))
    } else {
        IpAddr::V6(Ipv6Addr::from(u128::arbitrary(u)?))
    };
    let port = u16::arbitrary(u)?;
    Ok(match ip {
        IpAddr::V4(_) => SocketAddr::new(ip, port),
        // Flow info and scope are not on the wire; they must not matter.
        IpAddr::V6(v6) => {
            SocketAddrV6::new(v6, port, u32::arbitrary(u)?, u32::arbitrary(u)?).into()
        }
    })
}

/// What the header carries for an address when the pair is sent as IPv6.
fn as_v6(a: SocketAddr) -> SocketAddr {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    SocketAddrV6::new(ip, a.port(), 0, 0).into()
}
