//! A TCP forwarder between one client and the relay, which a test can break: it cuts
//! the connections it carries (the client and the relay each see their TCP connection
//! end, as when a NAT or a Wi-Fi link drops it), or stops passing what the relay sends
//! to the client (a link that went dead in one direction). Connections made after a cut
//! are forwarded normally, so a client that dials again gets through.
//!
//! ```no_run
//! # use p2p_copy_tests::forward::Forwarder;
//! let fwd = Forwarder::start("127.0.0.1:8765".parse().unwrap());
//! let url = fwd.url(); // give this to one side only
//! fwd.cut();
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How often a copying thread looks at the flags while it has nothing to read.
const TICK: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// What the relay sends to the client is read and dropped, not passed on.
    swallow: AtomicBool,
    /// Bytes dropped that way.
    swallowed: AtomicU64,
    /// Connections accepted so far.
    accepted: AtomicUsize,
    /// Both sockets of every connection carried now.
    live: Mutex<Vec<(TcpStream, TcpStream)>>,
}

/// A forwarder on 127.0.0.1 to one target (see the module docs). Dropping it stops it
/// and ends every connection it carries.
pub struct Forwarder {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Forwarder {
    /// Listen on a free port of 127.0.0.1 and forward every connection to `target`.
    pub fn start(target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the forwarder");
        let addr = listener.local_addr().expect("the forwarder's address");
        let shared = Arc::new(Shared::default());
        let state = Arc::clone(&shared);
        thread::spawn(move || {
            for client in listener.incoming() {
                if state.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                state.accepted.fetch_add(1, Ordering::SeqCst);
                let Ok(relay) = TcpStream::connect(target) else {
                    // The relay is down: the client sees its connection end.
                    continue;
                };
                carry(&state, client, relay);
            }
        });
        Forwarder { addr, shared }
    }

    /// The relay URL through this forwarder (`ws://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// End every connection carried now, on both sides (each sees its TCP connection
    /// close, with no WebSocket close frame). Later connections are forwarded, and
    /// passed on again in both directions.
    pub fn cut(&self) {
        self.shared.swallow.store(false, Ordering::SeqCst);
        let live = std::mem::take(&mut *self.shared.live.lock().unwrap());
        for (a, b) in live {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// From now until the next [`cut`](Self::cut), read what the relay sends to the
    /// client and drop it: the client hears nothing more, while what it sends still
    /// reaches the relay.
    pub fn swallow_replies(&self) {
        self.shared.swallow.store(true, Ordering::SeqCst);
    }

    /// Bytes dropped by [`swallow_replies`](Self::swallow_replies) so far.
    pub fn swallowed(&self) -> u64 {
        self.shared.swallowed.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accepting thread so that it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copy both ways between `client` and `relay` on two threads.
fn carry(state: &Arc<Shared>, client: TcpStream, relay: TcpStream) {
    let (Ok(c2), Ok(r2)) = (client.try_clone(), relay.try_clone()) else {
        return;
    };
    if let (Ok(c3), Ok(r3)) = (client.try_clone(), relay.try_clone()) {
        state.live.lock().unwrap().push((c3, r3));
    }
    let up = Arc::clone(state);
    thread::spawn(move || copy(&up, client, relay, false));
    let down = Arc::clone(state);
    thread::spawn(move || copy(&down, r2, c2, true));
}

/// Copy `from` to `to` until either ends; `to_client` marks the relay's direction,
/// the one [`Forwarder::swallow_replies`] drops.
fn copy(state: &Shared, mut from: TcpStream, mut to: TcpStream, to_client: bool) {
    let _ = from.set_read_timeout(Some(TICK));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if state.stop.load(Ordering::SeqCst) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        if to_client && state.swallow.load(Ordering::SeqCst) {
            state.swallowed.fetch_add(n as u64, Ordering::SeqCst);
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
