//! Test helper: a UDP server for the serverless tests, run on the lab's "internet" host
//! or on 127.0.0.1.
//!
//! - `udp-responder stun ADDR`: answers STUN Binding requests with the source address,
//!   through the core's codec as the relay does, and nothing else: no relay runs.
//! - `udp-responder sntp ADDR OFFSET_MS`: answers SNTP requests (RFC 4330) with this
//!   machine's clock plus OFFSET_MS milliseconds, so that a client's clock looks wrong by
//!   that much. The answer is written here by hand, apart from the client's codec it
//!   checks.
//!
//! Prints `ready ADDR` on stdout once bound (ADDR with the port chosen for port 0), then
//! serves until killed.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// NTP's epoch (1900) to Unix's (1970), in seconds.
const NTP_UNIX: u64 = 2_208_988_800;

fn ntp_timestamp(t: Duration) -> [u8; 8] {
    let secs = (t.as_secs() + NTP_UNIX) & 0xffff_ffff;
    let frac = (u64::from(t.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32 | frac).to_be_bytes()
}

fn now_shifted(offset_ms: i64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    let by = Duration::from_millis(offset_ms.unsigned_abs());
    if offset_ms >= 0 {
        now + by
    } else {
        now - by
    }
}

fn sntp_answer(req: &[u8], received: Duration, offset_ms: i64) -> Option<Vec<u8>> {
    // A client request: mode 3.
    if req.len() < 48 || req[0] & 7 != 3 {
        return None;
    }
    let mut p = vec![0u8; 48];
    p[0] = (req[0] & 0x38) | 4;
    p[1] = 1;
    p[12..16].copy_from_slice(b"LAB\0");
    p[16..24].copy_from_slice(&ntp_timestamp(received));
    p[24..32].copy_from_slice(&req[40..48]);
    p[32..40].copy_from_slice(&ntp_timestamp(received));
    p[40..48].copy_from_slice(&ntp_timestamp(now_shifted(offset_ms)));
    Some(p)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = (|| {
        let mode = args.first()?.clone();
        let addr: SocketAddr = args.get(1)?.parse().ok()?;
        let offset: i64 = match mode.as_str() {
            "stun" => 0,
            "sntp" => args.get(2)?.parse().ok()?,
            _ => return None,
        };
        Some((mode, addr, offset))
    })();
    let Some((mode, addr, offset_ms)) = parsed else {
        eprintln!("usage: udp-responder stun ADDR | udp-responder sntp ADDR OFFSET_MS");
        return ExitCode::from(2);
    };
    let socket = match UdpSocket::bind(addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("udp-responder: cannot bind {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = socket.local_addr().expect("local address");
    println!("ready {local}");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let answer = match mode.as_str() {
            "stun" => p2p_copy_core::stun::answer_binding_request(&buf[..n], from),
            _ => sntp_answer(&buf[..n], now_shifted(offset_ms), offset_ms),
        };
        if let Some(a) = answer {
            let _ = socket.send_to(&a, from);
        }
    }
}
