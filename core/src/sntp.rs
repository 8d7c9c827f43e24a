//! SNTP (RFC 4330): how far this machine's clock is from a time server's, so that two
//! serverless peers punch at the same instants although their clocks disagree.
//!
//! Sans-IO: the caller reads its clock, sends [`request`], reads the clock again when
//! the answer comes, and [`parse_response`] gives the offset. Times are durations since
//! the Unix epoch; NTP's 32-bit seconds are placed in the era nearest the local clock.

use std::time::Duration;

/// Length of an SNTP message without extensions.
pub const PACKET_LEN: usize = 48;
/// Seconds from 1900-01-01 (NTP's epoch) to 1970-01-01.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// Length of an NTP era: 2^32 seconds.
const ERA: i128 = 1 << 32;

/// What one answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The server's clock minus ours, in nanoseconds: positive when ours is behind.
    pub offset_nanos: i64,
    /// The round trip, less the server's own time.
    pub delay: Duration,
}

/// Why an answer is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SntpError {
    /// Shorter than an SNTP message.
    #[error("an answer of {0} bytes, shorter than SNTP's 48")]
    Short(usize),
    /// Not a server's answer (mode 4) of version 1 to 4.
    #[error("not an SNTP server's answer (version {version}, mode {mode})")]
    NotAnAnswer {
        /// The version field.
        version: u8,
        /// The mode field.
        mode: u8,
    },
    /// Its originate timestamp is not our request's transmit timestamp: an answer to
    /// someone else, an old one, or forged.
    #[error("the answer is not for this request")]
    NotOurs,
    /// The server says it is not synchronised (leap indicator 3).
    #[error("the time server is not synchronised")]
    Unsynchronised,
    /// A kiss-o'-death (stratum 0) with its four-letter code.
    #[error("the time server refused: kiss-o'-death {0}")]
    KissOfDeath(String),
    /// A stratum above 15, or a server timestamp of zero.
    #[error("the answer carries no usable time")]
    NoTime,
}

/// A time as an NTP timestamp (32.32 fixed point, seconds since 1900, era wrapping).
fn to_ntp(t: Duration) -> u64 {
    let secs = (t.as_secs() + NTP_UNIX_OFFSET) & 0xffff_ffff;
    let frac = (u64::from(t.subsec_nanos()) << 32) / 1_000_000_000;
    secs << 32 | frac
}

/// An NTP timestamp as nanoseconds since the Unix epoch, in the era nearest `near`.
fn from_ntp(ts: u64, near: Duration) -> i128 {
    let secs = i128::from(ts >> 32) - i128::from(NTP_UNIX_OFFSET);
    let frac = (i128::from(ts & 0xffff_ffff) * 1_000_000_000) >> 32;
    let near_secs = i128::from(near.as_secs());
    // The era that puts the time within half an era of the local clock.
    let k = (near_secs - secs + ERA / 2).div_euclid(ERA);
    (secs + k * ERA) * 1_000_000_000 + frac
}

fn nanos(t: Duration) -> i128 {
    i128::try_from(t.as_nanos()).unwrap_or(i128::MAX)
}

/// A client request (version 4, mode 3) whose transmit timestamp is `now`, the local
/// clock when it is sent.
pub fn request(now: Duration) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0] = 4 << 3 | 3;
    p[40..48].copy_from_slice(&to_ntp(now).to_be_bytes());
    p
}

/// Read a server's answer to the request sent at `sent` (the same value given to
/// [`request`]), received at `received` (local clock).
///
/// # Errors
/// [`SntpError`]: too short, not a server's answer, not an answer to this request,
/// or without a usable time.
pub fn parse_response(
    packet: &[u8],
    sent: Duration,
    received: Duration,
) -> Result<Sample, SntpError> {
    if packet.len() < PACKET_LEN {
        return Err(SntpError::Short(packet.len()));
    }
    let leap = packet[0] >> 6;
    let version = (packet[0] >> 3) & 7;
    let mode = packet[0] & 7;
    if mode != 4 || !(1..=4).contains(&version) {
        return Err(SntpError::NotAnAnswer { version, mode });
    }
    let ts = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&packet[at..at + 8]);
        u64::from_be_bytes(b)
    };
    if ts(24) != to_ntp(sent) {
        return Err(SntpError::NotOurs);
    }
    let stratum = packet[1];
    if stratum == 0 {
        let code: String = packet[12..16]
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() {
                    b as char
                } else {
                    '?'
                }
            })
            .collect();
        return Err(SntpError::KissOfDeath(code));
    }
    if leap == 3 {
        return Err(SntpError::Unsynchronised);
    }
    if stratum > 15 || ts(40) == 0 || ts(32) == 0 {
        return Err(SntpError::NoTime);
    }
    let t1 = nanos(sent);
    let t4 = nanos(received);
    let t2 = from_ntp(ts(32), sent);
    let t3 = from_ntp(ts(40), sent);
    let offset = ((t2 - t1) + (t3 - t4)) / 2;
    let delay = ((t4 - t1) - (t3 - t2)).max(0);
    Ok(Sample {
        offset_nanos: i64::try_from(offset).map_err(|_| SntpError::NoTime)?,
        delay: Duration::from_nanos(u64::try_from(delay).unwrap_or(u64::MAX)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A server's answer to `req`, its clock reading `server_now` on receipt and send.
    fn answer(req: &[u8; PACKET_LEN], server_recv: Duration, server_send: Duration) -> Vec<u8> {
        let mut p = vec![0u8; PACKET_LEN];
        p[0] = 4 << 3 | 4;
        p[1] = 2;
        p[24..32].copy_from_slice(&req[40..48]);
        p[32..40].copy_from_slice(&to_ntp(server_recv).to_be_bytes());
        p[40..48].copy_from_slice(&to_ntp(server_send).to_be_bytes());
        p
    }

    #[test]
    fn an_answer_gives_the_offset_and_the_delay() {
        let sent = Duration::from_secs(1_764_775_237);
        let req = request(sent);
        assert_eq!(req[0], 0x23);
        // The server is 3600.5 s ahead; 10 ms each way, 1 ms in the server.
        let ahead = Duration::from_millis(3_600_500);
        let p = answer(
            &req,
            sent + ahead + Duration::from_millis(10),
            sent + ahead + Duration::from_millis(11),
        );
        let s = parse_response(&p, sent, sent + Duration::from_millis(21)).unwrap();
        assert!((s.offset_nanos - 3_600_500_000_000).abs() < 1_000, "{s:?}");
        assert!(s.delay.abs_diff(Duration::from_millis(20)) < Duration::from_micros(1));
    }

    #[test]
    fn bad_answers_are_refused() {
        let sent = Duration::from_secs(1_700_000_000);
        let req = request(sent);
        let good = answer(&req, sent, sent);
        assert!(parse_response(&good, sent, sent).is_ok());
        assert_eq!(
            parse_response(&good[..47], sent, sent),
            Err(SntpError::Short(47))
        );
        let mut p = good.clone();
        p[0] = 4 << 3 | 3;
        assert!(matches!(
            parse_response(&p, sent, sent),
            Err(SntpError::NotAnAnswer { mode: 3, .. })
        ));
        let mut p = good.clone();
        p[31] ^= 1;
        assert_eq!(parse_response(&p, sent, sent), Err(SntpError::NotOurs));
        let mut p = good.clone();
        p[1] = 0;
        p[12..16].copy_from_slice(b"RATE");
        assert_eq!(
            parse_response(&p, sent, sent),
            Err(SntpError::KissOfDeath("RATE".into()))
        );
        let mut p = good.clone();
        p[0] |= 3 << 6;
        assert_eq!(
            parse_response(&p, sent, sent),
            Err(SntpError::Unsynchronised)
        );
        let mut p = good;
        p[40..48].fill(0);
        assert_eq!(parse_response(&p, sent, sent), Err(SntpError::NoTime));
    }

    #[test]
    fn times_after_2036_wrap_into_the_next_era() {
        // 2040: NTP seconds have wrapped past 2^32.
        let t = Duration::from_secs(2_208_988_800);
        assert_eq!(from_ntp(to_ntp(t), t), nanos(t));
    }

    proptest! {
        #[test]
        fn the_offset_is_found_for_any_clocks(
            local in 1_000_000_000u64..4_000_000_000,
            off_ms in -100_000_000i64..100_000_000,
            trip_ms in 0u64..2_000,
        ) {
            let sent = Duration::from_secs(local);
            let server = |t: Duration| {
                let n = t.as_millis() as i64 + off_ms;
                Duration::from_millis(n as u64)
            };
            let half = Duration::from_millis(trip_ms / 2);
            let p = answer(&request(sent), server(sent + half), server(sent + half));
            let s = parse_response(&p, sent, sent + half * 2).unwrap();
            prop_assert!((s.offset_nanos - off_ms * 1_000_000).abs() < 2_000);
        }

        #[test]
        fn any_bytes_are_read_without_panicking(p in proptest::collection::vec(any::<u8>(), 0..64), t in any::<u32>()) {
            let _ = parse_response(&p, Duration::from_secs(u64::from(t)), Duration::from_secs(u64::from(t)));
        }
    }
}
