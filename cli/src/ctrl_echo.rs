//! Keep the terminal from echoing Ctrl-C as `^C` while progress bars are drawn.
//!
//! indicatif pads every bar to the full terminal width, which leaves the cursor just past
//! the last column. The `^C` the terminal echoes on Ctrl-C then wraps onto a new line,
//! indicatif clears one line too few, and the top bar stays on screen above the message.
//! With `ECHOCTL` off the interrupt character is echoed as itself, which moves nothing.

#[cfg(unix)]
use std::os::fd::{AsFd, OwnedFd};

#[cfg(unix)]
use rustix::termios::{tcgetattr, tcgetpgrp, tcsetattr, LocalModes, OptionalActions, Termios};

/// `ECHOCTL` switched off on a terminal until this is dropped; then the terminal's
/// settings are put back as they were.
pub struct QuietCtrlEcho {
    #[cfg(unix)]
    saved: Option<(OwnedFd, Termios)>,
}

impl QuietCtrlEcho {
    /// Switch `ECHOCTL` off on standard error's terminal; nothing happens when it is not a
    /// terminal or the setting cannot be changed.
    pub fn on_stderr() -> QuietCtrlEcho {
        #[cfg(unix)]
        {
            let saved = std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .and_then(QuietCtrlEcho::switch_off);
            QuietCtrlEcho { saved }
        }
        #[cfg(not(unix))]
        QuietCtrlEcho {}
    }

    #[cfg(unix)]
    fn switch_off(fd: OwnedFd) -> Option<(OwnedFd, Termios)> {
        if in_background(&fd) {
            return None;
        }
        let before = tcgetattr(&fd).ok()?;
        if !before.local_modes.contains(LocalModes::ECHOCTL) {
            return None;
        }
        let mut quiet = before.clone();
        quiet.local_modes.remove(LocalModes::ECHOCTL);
        tcsetattr(&fd, OptionalActions::Now, &quiet).ok()?;
        Some((fd, before))
    }
}

impl Drop for QuietCtrlEcho {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some((fd, before)) = self.saved.take().filter(|(fd, _)| !in_background(fd)) {
            // Only ECHOCTL is put back: anything else changed meanwhile (by a shell
            // job control, say) is left as it is now.
            let Ok(mut now) = tcgetattr(&fd) else { return };
            now.local_modes.set(
                LocalModes::ECHOCTL,
                before.local_modes.contains(LocalModes::ECHOCTL),
            );
            let _ = tcsetattr(&fd, OptionalActions::Now, &now);
        }
    }
}

/// Whether `fd` is this process's controlling terminal and the process is not in its
/// foreground: changing the terminal's settings would then stop the process with SIGTTOU
/// (`p2p-copy receive … &` in a shell).
#[cfg(unix)]
fn in_background(fd: &OwnedFd) -> bool {
    matches!(tcgetpgrp(fd), Ok(fg) if fg != rustix::process::getpgrp())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};

    #[test]
    fn echoctl_is_off_while_held_and_back_after() {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("a pty");
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        let echoctl = || {
            tcgetattr(&slave)
                .unwrap()
                .local_modes
                .contains(LocalModes::ECHOCTL)
        };
        assert!(echoctl(), "a new pty echoes control characters as ^X");
        let held = QuietCtrlEcho {
            saved: QuietCtrlEcho::switch_off(slave.as_fd().try_clone_to_owned().unwrap()),
        };
        assert!(!echoctl());
        drop(held);
        assert!(echoctl());
    }
}
