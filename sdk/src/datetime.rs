//! XenAPI's `datetime`: UTC, written `YYYYMMDDTHH:MM:SSZ`.

use chrono::{NaiveDateTime, TimeZone, Utc};
use std::fmt;

/// A XenAPI `datetime`: a UTC instant, to the second as the wire carries it.
///
/// It is written `YYYYMMDDTHH:MM:SSZ` on both wires (a string; xapi and xapid read datetime
/// parameters from strings). Read leniently: that form, RFC 3339, `YYYY-MM-DDTHH:MM:SS`,
/// fractions, and seconds since the epoch as a number or a numeric string (`event.from`'s
/// timestamps). The default is the epoch, which XenAPI uses for "never".
///
/// ```
/// use xapi_sdk::DateTime;
/// let t = DateTime::parse("20240229T12:34:56Z").unwrap();
/// assert_eq!(t.to_string(), "20240229T12:34:56Z");
/// assert_eq!(DateTime::parse("1709210096.000"), Some(t));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime(chrono::DateTime<Utc>);

impl DateTime {
    /// 1970-01-01T00:00:00Z.
    pub const EPOCH: DateTime = DateTime(chrono::DateTime::<Utc>::UNIX_EPOCH);

    /// The instant `secs` seconds after the epoch (the epoch when out of range).
    pub fn from_unix(secs: i64) -> DateTime {
        DateTime(Utc.timestamp_opt(secs, 0).single().unwrap_or_default())
    }

    /// Seconds since the epoch.
    pub fn unix(&self) -> i64 {
        self.0.timestamp()
    }

    /// Now.
    pub fn now() -> DateTime {
        DateTime(Utc::now())
    }

    /// Whether this is the epoch (XenAPI's "never").
    pub fn is_epoch(&self) -> bool {
        self.0.timestamp() == 0 && self.0.timestamp_subsec_nanos() == 0
    }

    /// As a chrono value.
    pub fn to_chrono(&self) -> chrono::DateTime<Utc> {
        self.0
    }

    /// Reads any form the servers write (see the type's documentation).
    pub fn parse(s: &str) -> Option<DateTime> {
        let s = s.trim();
        if let Ok(d) = chrono::DateTime::parse_from_rfc3339(s) {
            return Some(DateTime(d.with_timezone(&Utc)));
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-') {
            let secs: f64 = s.parse().ok()?;
            return Self::from_secs_f64(secs);
        }
        let body = s.strip_suffix('Z').unwrap_or(s);
        for fmt in [
            "%Y%m%dT%H:%M:%S",
            "%Y%m%dT%H%M%S",
            "%Y-%m-%dT%H:%M:%S",
            "%Y%m%dT%H:%M:%S%.f",
            "%Y-%m-%dT%H:%M:%S%.f",
        ] {
            if let Ok(d) = NaiveDateTime::parse_from_str(body, fmt) {
                return Some(DateTime(d.and_utc()));
            }
        }
        None
    }

    pub(crate) fn from_secs_f64(secs: f64) -> Option<DateTime> {
        if !secs.is_finite() {
            return None;
        }
        let whole = secs.floor();
        // Within chrono's range (about ±262,000 years) the cast is exact.
        if whole.abs() > 8.0e15 {
            return None;
        }
        let nanos = ((secs - whole) * 1e9).round().clamp(0.0, 999_999_999.0) as u32;
        Utc.timestamp_opt(whole as i64, nanos).single().map(DateTime)
    }
}

impl From<chrono::DateTime<Utc>> for DateTime {
    fn from(d: chrono::DateTime<Utc>) -> Self {
        DateTime(d)
    }
}

impl From<DateTime> for chrono::DateTime<Utc> {
    fn from(d: DateTime) -> Self {
        d.0
    }
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y%m%dT%H:%M:%SZ"))
    }
}

impl serde::Serialize for DateTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DateTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DateTime;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a datetime")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<DateTime, E> {
                DateTime::parse(s).ok_or_else(|| E::custom(format!("not a datetime: {s:?}")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<DateTime, E> {
                Ok(DateTime::from_unix(n))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<DateTime, E> {
                Ok(DateTime::from_unix(i64::try_from(n).unwrap_or(i64::MAX)))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<DateTime, E> {
                DateTime::from_secs_f64(n).ok_or_else(|| E::custom(format!("not a datetime: {n}")))
            }
        }
        d.deserialize_any(V)
    }
}
