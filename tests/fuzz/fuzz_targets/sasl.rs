//! The SASL decoders and encoder.
//!
//! Checks: no decoder panics; whatever a decoder accepts, `encode` either refuses with
//! `UnsafeCredential` or produces a payload that decodes to the same credentials (what the
//! replay sends upstream is what the downstream presented); `encode` never panics on any
//! credentials; base64 round-trips.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use mailgate::proto::sasl;
use mailgate::proto::{Credentials, Mechanism};
use mailgate::secret::Secret;

const MECHANISMS: [Mechanism; 6] = [
    Mechanism::Plain,
    Mechanism::XOAuth2,
    Mechanism::OAuthBearer,
    Mechanism::Login,
    Mechanism::ImapLogin,
    Mechanism::UserPass,
];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, payload)) = data.split_first() else {
        return;
    };
    let mechanism = MECHANISMS[usize::from(choice) % MECHANISMS.len()];

    // Every decoder on every payload.
    let _ = sasl::decode_plain(payload);
    let _ = sasl::decode_xoauth2(payload);
    let _ = sasl::decode_oauthbearer(payload);
    if let Some(at) = payload.iter().position(|b| *b == 0) {
        let _ = sasl::login_credentials(&payload[..at], payload[at + 1..].to_vec());
    }
    let _ = sasl::parse_mechanism(payload);

    if let Ok(decoded) = sasl::decode(mechanism, payload) {
        round_trip(mechanism, &decoded);
    }
    // The payload as base64 text, as the machines receive it.
    if let Ok(raw) = sasl::decode_base64(payload) {
        assert_eq!(
            sasl::decode_base64(sasl::encode_base64(&raw).as_bytes()),
            Ok(raw.clone())
        );
        if let Ok(decoded) = sasl::decode(mechanism, &raw) {
            round_trip(mechanism, &decoded);
        }
    }
    let encoded = sasl::encode_base64(payload);
    assert_eq!(
        sasl::decode_base64(encoded.as_bytes()).as_deref(),
        Ok(payload)
    );

    // encode() on credentials no decoder made.
    let mut u = Unstructured::new(payload);
    if let Ok(credentials) = arbitrary_credentials(&mut u) {
        let _ = sasl::encode(mechanism, &credentials);
    }
});

fn round_trip(mechanism: Mechanism, decoded: &Credentials) {
    match sasl::encode(mechanism, decoded) {
        Ok(payload) => {
            let again = sasl::decode(mechanism, &payload)
                .unwrap_or_else(|e| panic!("encoded {mechanism:?} does not decode: {e}"));
            assert_eq!(&again, decoded, "{mechanism:?} does not round-trip");
        }
        Err(unsafe_credential) => {
            // Only a separator byte inside a field is a reason to refuse.
            let _ = unsafe_credential.field;
        }
    }
}

fn arbitrary_credentials(u: &mut Unstructured<'_>) -> arbitrary::Result<Credentials> {
    Ok(if bool::arbitrary(u)? {
        Credentials::Password {
            authzid: Option::<String>::arbitrary(u)?,
            user: String::arbitrary(u)?,
            password: Secret::new(Vec::<u8>::arbitrary(u)?),
        }
    } else {
        Credentials::Bearer {
            user: Option::<String>::arbitrary(u)?,
            token: Secret::new(String::arbitrary(u)?),
            host: Option::<String>::arbitrary(u)?,
            port: Option::<u16>::arbitrary(u)?,
        }
    })
}
