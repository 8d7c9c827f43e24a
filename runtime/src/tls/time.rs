//! The validity period of a certificate, read from its DER, and times shown as UTC dates.
//!
//! webpki checks the validity of the certificates it verifies but does not hand the
//! dates out; the verifier needs them for a self-signed certificate that it checks itself,
//! and users need them as dates rather than seconds since 1970.

use rustls_pki_types::UnixTime;
use std::time::Duration;

/// Read one DER element: its tag, its contents and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (len, rest)
    };
    (rest.len() >= len).then(|| {
        let (contents, rest) = rest.split_at(len);
        (tag, contents, rest)
    })
}

const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The `notBefore` and `notAfter` of an X.509 certificate in DER, or `None` if it cannot
/// be read.
pub(crate) fn validity(cert_der: &[u8]) -> Option<(UnixTime, UnixTime)> {
    let (SEQUENCE, cert, _) = element(cert_der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == VERSION {
        rest = after;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, validity, _) = element(rest)? else {
        return None;
    };
    let (tag, not_before, rest) = element(validity)?;
    let not_before = parse_time(tag, not_before)?;
    let (tag, not_after, _) = element(rest)?;
    let not_after = parse_time(tag, not_after)?;
    Some((not_before, not_after))
}

/// A DER `UTCTime` (`YYMMDDHHMMSSZ`) or `GeneralizedTime` (`YYYYMMDDHHMMSSZ`).
fn parse_time(tag: u8, text: &[u8]) -> Option<UnixTime> {
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(&text[..2])?;
            // RFC 5280: two-digit years from 50 on are 19xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (GENERALIZED_TIME, 15) => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let field = |i: usize| digits(&rest[i..i + 2]);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // DER allows a leap second; it counts as the last second of the minute.
    if second > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second.min(59));
    // A date before 1970 is long past; it counts as the epoch itself.
    Some(UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(secs).unwrap_or(0),
    )))
}

fn digits(text: &[u8]) -> Option<u32> {
    text.iter().try_fold(0u32, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day counted from 1970-01-01, as (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A time as `2026-11-30 12:00:00 UTC`.
pub(crate) fn utc(time: UnixTime) -> String {
    let secs = time.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let (year, month, day) = civil_from_days(days);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(utc(at(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(at(1_609_459_200)), "2021-01-01 00:00:00 UTC");
        // A leap day, and the last second of a day.
        assert_eq!(utc(at(1_709_251_199)), "2024-02-29 23:59:59 UTC");
        assert_eq!(utc(at(1_796_040_000)), "2026-11-30 12:00:00 UTC");
        assert_eq!(utc(at(253_402_300_799)), "9999-12-31 23:59:59 UTC");
    }

    #[test]
    fn civil_dates_round_trip_over_four_centuries() {
        for days in (-1_000..146_097 + 1_000).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn der_times_are_read_in_both_forms() {
        let t = |tag, s: &str| parse_time(tag, s.as_bytes()).map(|t| t.as_secs());
        assert_eq!(t(UTC_TIME, "210101000000Z"), Some(1_609_459_200));
        assert_eq!(t(UTC_TIME, "500101000000Z"), Some(0));
        assert_eq!(t(GENERALIZED_TIME, "20261130120000Z"), Some(1_796_040_000));
        assert_eq!(t(GENERALIZED_TIME, "40960101000000Z"), Some(67_090_118_400));
        assert_eq!(t(UTC_TIME, "2101010000Z"), None);
        assert_eq!(t(UTC_TIME, "210101000000+"), None);
        assert_eq!(t(UTC_TIME, "211301000000Z"), None);
        assert_eq!(t(GENERALIZED_TIME, "210101000000Z"), None);
    }

    #[test]
    fn truncated_or_foreign_der_gives_no_validity() {
        assert!(validity(&[]).is_none());
        assert!(validity(&[0x30, 0x82, 0x01]).is_none());
        assert!(validity(&[0x04, 0x00]).is_none());
        assert!(validity(&[0x30, 0x03, 0x30, 0x01, 0x02]).is_none());
    }
}
