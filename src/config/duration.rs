//! Duration strings in the config: `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"30d"`.
//!
//! Grammar (one number, one unit, nothing else, so `"5 minutes"` or `"1m30s"` is an error
//! rather than a guess):
//!
//! ```text
//! duration = 1*DIGIT unit
//! unit     = "ms" / "s" / "m" / "h" / "d"   ; d: 24 h (familiar_for = "30d")
//! ```

use std::time::Duration;

/// Why a duration string was rejected. The caller adds the key path and the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("expected a number followed by ms, s, m, h or d, e.g. \"30s\"")]
    Syntax,
    #[error("unknown unit, expected ms, s, m, h or d")]
    Unit,
    #[error("too large")]
    Overflow,
    #[error("must be greater than zero")]
    Zero,
}

/// Parses a duration string. Zero is accepted here; see [`parse_nonzero`].
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(DurationError::Syntax);
    }
    let n: u64 = number.parse().map_err(|_| DurationError::Overflow)?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => return Err(DurationError::Syntax),
        _ => return Err(DurationError::Unit),
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or(DurationError::Overflow)
}

/// Parses a duration that must be positive: every timeout in mailgate's config would mean
/// "fail immediately" at zero, which is never what an operator wants.
pub fn parse_nonzero(text: &str) -> Result<Duration, DurationError> {
    match parse(text)? {
        d if d.is_zero() => Err(DurationError::Zero),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let cases: &[(&str, Result<Duration, DurationError>)] = &[
            ("500ms", Ok(ms(500))),
            ("0ms", Ok(ms(0))),
            ("1ms", Ok(ms(1))),
            ("30s", Ok(s(30))),
            ("5m", Ok(s(300))),
            ("1h", Ok(s(3600))),
            ("90m", Ok(s(5400))),
            ("007s", Ok(s(7))),
            ("", Err(DurationError::Syntax)),
            ("s", Err(DurationError::Syntax)),
            ("30", Err(DurationError::Syntax)),
            ("-5s", Err(DurationError::Syntax)),
            (" 5s", Err(DurationError::Syntax)),
            ("1.5s", Err(DurationError::Unit)),
            ("5 minutes", Err(DurationError::Unit)),
            ("5s ", Err(DurationError::Unit)),
            ("5S", Err(DurationError::Unit)),
            ("1d", Ok(Duration::from_secs(86_400))),
            ("1w", Err(DurationError::Unit)),
            ("1m30s", Err(DurationError::Unit)),
            ("5µs", Err(DurationError::Unit)),
            ("99999999999999999999s", Err(DurationError::Overflow)),
            ("18446744073709551615h", Err(DurationError::Overflow)),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn nonzero() {
        assert_eq!(parse_nonzero("0s"), Err(DurationError::Zero));
        assert_eq!(parse_nonzero("0ms"), Err(DurationError::Zero));
        assert_eq!(parse_nonzero("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_nonzero("x"), Err(DurationError::Syntax));
    }
}
