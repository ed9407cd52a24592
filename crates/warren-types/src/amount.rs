//! Exact money. Amounts are whole nano-WRN (1 WRN = 10^9 nano-WRN) held in a `u64`; people
//! write and read decimal WRN ("0.05"), converted exactly, never through a float.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// nano-WRN in one WRN.
pub const NANO_PER_WRN: u64 = 1_000_000_000;
const DECIMALS: usize = 9;

/// An amount of money in nano-WRN. Serialises as a bare integer.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Amount(u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmountError {
    #[error("amount is empty: write WRN as a decimal such as 0.05")]
    Empty,
    #[error("amount {0:?} is not a decimal number of WRN (write it like 0.05 or 12)")]
    NotDecimal(String),
    #[error("amount {0:?} has more than 9 decimals: 1 nano-WRN (0.000000001) is the smallest unit")]
    TooPrecise(String),
    #[error("amount {0:?} is too large (the most is 18446744073.709551615 WRN)")]
    TooLarge(String),
}

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub const fn from_nano(nano: u64) -> Self {
        Self(nano)
    }

    pub const fn nano(self) -> u64 {
        self.0
    }

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }

    /// Parses decimal WRN exactly: "1", "0.05", ".5", "12.000000001".
    pub fn from_wrn(s: &str) -> Result<Self, AmountError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(AmountError::Empty);
        }
        let (whole, frac) = match t.split_once('.') {
            Some((w, f)) => (w, f),
            None => (t, ""),
        };
        let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
            return Err(AmountError::NotDecimal(s.to_string()));
        }
        if frac.len() > DECIMALS {
            return Err(AmountError::TooPrecise(s.to_string()));
        }
        let too_large = || AmountError::TooLarge(s.to_string());
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        let mut frac_nano: u64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            frac_nano += u64::from(b - b'0') * 10u64.pow((DECIMALS - 1 - i) as u32);
        }
        whole
            .checked_mul(NANO_PER_WRN)
            .and_then(|n| n.checked_add(frac_nano))
            .map(Amount)
            .ok_or_else(too_large)
    }
}

impl FromStr for Amount {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_wrn(s)
    }
}

/// Writes decimal WRN with no trailing zeros: `0.05`, `1`, `12.000000001`.
impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / NANO_PER_WRN;
        let frac = self.0 % NANO_PER_WRN;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let frac = format!("{frac:09}");
        write!(f, "{whole}.{}", frac.trim_end_matches('0'))
    }
}

/// What a provider charges: per GiB of payload (both directions together) and per hour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Price {
    pub per_gib: Amount,
    pub per_hour: Amount,
}

const GIB: u128 = 1 << 30;
const SECS_PER_HOUR: u128 = 3600;

impl Price {
    /// What `bytes` of payload (both directions) over `duration` cost: per-GiB price × bytes
    /// plus per-hour price × whole seconds, as one fraction rounded up to a whole nano-WRN.
    /// Saturates at `u64::MAX` nano-WRN (18 billion WRN) instead of overflowing.
    pub fn cost(&self, bytes: u64, duration: std::time::Duration) -> Amount {
        let traffic = u128::from(self.per_gib.nano()).checked_mul(u128::from(bytes));
        let time = u128::from(self.per_hour.nano()).checked_mul(u128::from(duration.as_secs()));
        let numerator = traffic
            .and_then(|t| t.checked_mul(SECS_PER_HOUR))
            .zip(time.and_then(|t| t.checked_mul(GIB)))
            .and_then(|(t, h)| t.checked_add(h));
        match numerator {
            Some(n) => Amount::from_nano(
                u64::try_from(n.div_ceil(GIB * SECS_PER_HOUR)).unwrap_or(u64::MAX),
            ),
            None => Amount::from_nano(u64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cost_is_exact_and_rounds_up() {
        use std::time::Duration;
        let p = Price {
            per_gib: Amount::from_nano(NANO_PER_WRN),
            per_hour: Amount::from_nano(3600),
        };
        assert_eq!(p.cost(0, Duration::ZERO), Amount::from_nano(0));
        assert_eq!(
            p.cost(1 << 30, Duration::ZERO),
            Amount::from_nano(NANO_PER_WRN)
        );
        assert_eq!(p.cost(0, Duration::from_millis(2999)), Amount::from_nano(2));
        // One byte at 1 WRN/GiB is 0.93 nano-WRN: rounds up to 1.
        assert_eq!(p.cost(1, Duration::ZERO), Amount::from_nano(1));
        let max = Price {
            per_gib: Amount::from_nano(u64::MAX),
            per_hour: Amount::from_nano(u64::MAX),
        };
        assert_eq!(
            max.cost(u64::MAX, Duration::from_secs(u64::MAX)),
            Amount::from_nano(u64::MAX)
        );
    }

    #[test]
    fn parses_decimal_wrn_exactly() {
        let cases = [
            ("0", 0),
            ("1", NANO_PER_WRN),
            ("0.05", 50_000_000),
            (".5", 500_000_000),
            ("5.", 5 * NANO_PER_WRN),
            ("0.000000001", 1),
            ("12.000000001", 12_000_000_001),
            (" 0.1 ", 100_000_000),
            ("18446744073.709551615", u64::MAX),
        ];
        for (s, nano) in cases {
            assert_eq!(Amount::from_wrn(s), Ok(Amount::from_nano(nano)), "{s}");
        }
    }

    #[test]
    fn refuses_what_is_not_exact_wrn() {
        assert_eq!(Amount::from_wrn(""), Err(AmountError::Empty));
        assert!(matches!(
            Amount::from_wrn("0.0000000001"),
            Err(AmountError::TooPrecise(_))
        ));
        assert!(matches!(
            Amount::from_wrn("-1"),
            Err(AmountError::NotDecimal(_))
        ));
        assert!(matches!(
            Amount::from_wrn("1e3"),
            Err(AmountError::NotDecimal(_))
        ));
        assert!(matches!(
            Amount::from_wrn("."),
            Err(AmountError::NotDecimal(_))
        ));
        assert!(matches!(
            Amount::from_wrn("1.2.3"),
            Err(AmountError::NotDecimal(_))
        ));
        assert!(matches!(
            Amount::from_wrn("0,5"),
            Err(AmountError::NotDecimal(_))
        ));
        assert!(matches!(
            Amount::from_wrn("18446744073.709551616"),
            Err(AmountError::TooLarge(_))
        ));
        assert!(matches!(
            Amount::from_wrn("99999999999999999999"),
            Err(AmountError::TooLarge(_))
        ));
    }

    #[test]
    fn prints_decimal_wrn_without_trailing_zeros() {
        assert_eq!(Amount::from_nano(50_000_000).to_string(), "0.05");
        assert_eq!(Amount::from_nano(NANO_PER_WRN).to_string(), "1");
        assert_eq!(Amount::from_nano(1).to_string(), "0.000000001");
        assert_eq!(Amount::ZERO.to_string(), "0");
    }

    #[test]
    fn serialises_as_an_integer_of_nano_wrn() {
        let json = serde_json::to_string(&Amount::from_nano(50_000_000)).unwrap();
        assert_eq!(json, "50000000");
    }

    proptest! {
        #[test]
        fn decimal_round_trip_is_exact(nano in any::<u64>()) {
            let a = Amount::from_nano(nano);
            prop_assert_eq!(Amount::from_wrn(&a.to_string()), Ok(a));
        }

        #[test]
        fn padded_decimals_parse_to_the_same_amount(nano in any::<u64>()) {
            let s = format!("{}.{:09}", nano / NANO_PER_WRN, nano % NANO_PER_WRN);
            prop_assert_eq!(Amount::from_wrn(&s), Ok(Amount::from_nano(nano)));
        }
    }
}
