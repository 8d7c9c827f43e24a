//! What the serverless tests share: a `p2p-copy` process whose printed ticket is read
//! from its stdout and whose peer's ticket is pasted into its stdin, and the punching
//! instants a side logged with `-v`.

use std::io::Write;
use std::process::{ChildStdin, Command};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use p2p_copy_core::serverless::Ticket;

use crate::process::{ChildGuard, Finished};

/// A process whose stdin the test writes and whose stdout lines it reads.
#[derive(Debug)]
pub struct Talking {
    /// The process.
    pub guard: ChildGuard,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Talking {
    /// Start `cmd` (killed when the guard is dropped).
    pub fn start(mut cmd: Command) -> Talking {
        let (guard, stdin, lines) = ChildGuard::spawn_talking(&mut cmd);
        Talking {
            guard,
            stdin,
            lines,
        }
    }

    /// The ticket it printed on stdout; panics after 30 s or on anything else.
    pub fn ticket(&self) -> Ticket {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a ticket on stdout within 30 s");
        Ticket::parse(&line).unwrap_or_else(|e| panic!("{line:?} is no ticket: {e}"))
    }

    /// Give it the peer's ticket, as a user pastes it.
    pub fn paste(&mut self, ticket: &Ticket) {
        writeln!(self.stdin, "{ticket}").expect("write the peer's ticket");
        self.stdin.flush().expect("flush");
    }
}

/// The punching instants a side logged with `-v`, as seconds since the epoch: (by the
/// clock it punches by, by the local clock).
pub fn punching_instants(f: &Finished) -> Vec<(f64, f64)> {
    f.stderr
        .lines()
        .filter(|l| l.contains("punching instant "))
        .map(|line| {
            let num = |after: &str| -> f64 {
                let rest = &line[line.find(after).expect(after) + after.len()..];
                rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no number after {after:?} in {line:?}"))
            };
            (num(" at "), num("(local clock "))
        })
        .collect()
}

/// The clock offset a side logged with `-v` after asking the time server, in seconds
/// (positive: the local clock is behind); panics if it logged none.
pub fn measured_offset(f: &Finished) -> f64 {
    f.stderr
        .split("says this clock is ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no clock offset logged: {f:?}"))
}

/// Check that a side measured the time server's `offset` (seconds). SNTP's estimate is
/// off by at most half the round trip, which a busy machine can stretch to milliseconds.
pub fn assert_offset(side: &str, f: &Finished, offset: f64) {
    let measured = measured_offset(f);
    assert!(
        (measured - offset).abs() < 0.05,
        "the {side} measured {measured} s, not {offset} s: {f:?}"
    );
}
