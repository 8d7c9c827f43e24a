//! Which kind of code a command line gives, and codes people can say out loud: generate
//! one for `send`, take the receiver's from the environment or a hidden prompt, and print
//! what the receiver must run.
//!
//! How the forms are told apart: p2p-copy 0.1.x's form (`send SERVER CODE FILES…`,
//! `receive SERVER CODE`, the relay URL first) always means a v1 code, hashed exactly as
//! 0.1.x hashes it. Otherwise a code of the form `<number>-<word>-<word>…` (for example
//! `7-guitar-rocket`) is a PAKE code, and any other code is a v1 code.

use std::io::{BufRead, IsTerminal, Write};

use p2p_copy_core::code::PakeCode;

use crate::args::{Rendezvous, RELAY_ENV};
use crate::usage::Usage;

/// The environment variable a receiver takes its code from when none is given, so that
/// the code never shows in `ps`.
pub const CODE_ENV: &str = "P2P_COPY_CODE";

/// How the sender's code came about.
#[derive(Debug, PartialEq, Eq)]
pub enum SendCode {
    /// A v1 code, as p2p-copy 0.1.x uses it.
    V1,
    /// A code the sender chose, of the PAKE form.
    Chosen,
    /// A code generated here; it must be shown to the user.
    Generated(PakeCode),
}

/// Decide the sender's code: generate one (`words` words) when none was given, check a
/// chosen one of the PAKE form, and leave v1 codes alone. `found.code` holds the code
/// afterwards.
///
/// # Errors
/// A chosen code of the PAKE form that is too easy to guess, with the reason.
pub fn sender_code(found: &mut Rendezvous, words: usize) -> Result<SendCode, Usage> {
    if found.v1_form {
        return Ok(SendCode::V1);
    }
    match &found.code {
        None => {
            let code = PakeCode::generate(words, |buf| {
                // Without the OS's randomness no safe code can be made; this never
                // fails on a supported system.
                getrandom::getrandom(buf).expect("the operating system's random bytes")
            });
            found.code = Some(code.to_string());
            Ok(SendCode::Generated(code))
        }
        Some(c) if PakeCode::recognise(c) => match PakeCode::parse_chosen(c) {
            Ok(code) => {
                found.code = Some(code.to_string());
                Ok(SendCode::Chosen)
            }
            Err(e) => Err(Usage(format!("--code refused: {e}"))),
        },
        Some(_) => Ok(SendCode::V1),
    }
}

/// Decide the receiver's code: from the arguments, else [`CODE_ENV`], else a hidden
/// prompt when stdin is a terminal. Returns whether it is a PAKE code.
///
/// # Errors
/// A code of the PAKE form that cannot be one (too few words), or a prompt that failed.
pub fn receiver_code(found: &mut Rendezvous) -> Result<bool, Usage> {
    if found.code.is_none() {
        found.code = std::env::var(CODE_ENV).ok().filter(|c| !c.is_empty());
    }
    if found.code.is_none() && std::io::stdin().is_terminal() {
        found.code = Some(prompt_hidden("code: ")?).filter(|c| !c.is_empty());
    }
    let Some(code) = &found.code else {
        return Ok(false);
    };
    if found.v1_form || !PakeCode::recognise(code) {
        return Ok(false);
    }
    let parsed = PakeCode::parse(code).map_err(|e| Usage(e.0))?;
    found.code = Some(parsed.to_string());
    Ok(true)
}

/// Print the generated code and the command that receives it, on stderr like every
/// message of `send` (also with `--quiet`: without it the transfer cannot happen).
pub fn announce(code: &PakeCode, server: &str, ttl_secs: u64) {
    let from_env = std::env::var(RELAY_ENV).is_ok_and(|r| r == server);
    let relay = if from_env {
        String::new()
    } else {
        format!("--relay {} ", p2p_copy_core::path::escape(server))
    };
    let wait = if ttl_secs.is_multiple_of(60) {
        format!("{} min", ttl_secs / 60)
    } else {
        format!("{ttl_secs} s")
    };
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "code: {code}\non the other machine, run:\n  p2p-copy receive {relay}{code}\n\
         waiting up to {wait} for the receiver"
    );
}

/// Read a line from the terminal without echoing it.
fn prompt_hidden(prompt: &str) -> Result<String, Usage> {
    let failed = |e: std::io::Error| Usage(format!("cannot read the code from the terminal: {e}"));
    let mut err = std::io::stderr();
    let _ = write!(err, "{prompt}");
    let _ = err.flush();
    let _echo = EchoOff::on_stdin();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(failed)?;
    let _ = writeln!(err);
    Ok(line.trim().to_owned())
}

/// Echo off on the terminal of stdin while held.
struct EchoOff {
    #[cfg(unix)]
    saved: Option<rustix::termios::Termios>,
}

impl EchoOff {
    #[cfg(unix)]
    fn on_stdin() -> EchoOff {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
        let stdin = std::io::stdin();
        let Ok(before) = tcgetattr(&stdin) else {
            return EchoOff { saved: None };
        };
        let mut quiet = before.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        let saved = tcsetattr(&stdin, OptionalActions::Flush, &quiet)
            .ok()
            .map(|()| before);
        EchoOff { saved }
    }

    #[cfg(not(unix))]
    fn on_stdin() -> EchoOff {
        EchoOff {}
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(before) = self.saved.take() {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                &before,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(code: Option<&str>, v1_form: bool) -> Rendezvous {
        Rendezvous {
            server: Some("ws://h:1".into()),
            code: code.map(str::to_owned),
            v1_form,
        }
    }

    #[test]
    fn the_sender_generates_checks_or_leaves_alone() {
        let mut f = found(None, false);
        let SendCode::Generated(code) = sender_code(&mut f, 3).unwrap() else {
            panic!("generated")
        };
        assert_eq!(code.word_count(), 3);
        assert_eq!(f.code, Some(code.to_string()));
        let mut f = found(Some("7 Guitar Rocket"), false);
        assert_eq!(sender_code(&mut f, 2), Ok(SendCode::Chosen));
        assert_eq!(f.code.as_deref(), Some("7-guitar-rocket"));
        let Err(Usage(msg)) = sender_code(&mut found(Some("7-acid-acid"), false), 2) else {
            panic!("refused")
        };
        assert!(msg.contains("appears twice"), "{msg}");
        assert_eq!(
            sender_code(&mut found(Some("my secret"), false), 2),
            Ok(SendCode::V1)
        );
        // p2p-copy 0.1.x's form keeps every code v1, even one of this shape.
        let mut f = found(Some("7-acid-acid"), true);
        assert_eq!(sender_code(&mut f, 2), Ok(SendCode::V1));
        assert_eq!(f.code.as_deref(), Some("7-acid-acid"));
    }
}
