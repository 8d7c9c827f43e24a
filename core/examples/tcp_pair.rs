//! The core carried by a plain TCP socket, with no async runtime: a sender and a
//! receiver on 127.0.0.1, messages framed as a kind byte and a 4-byte length. The
//! receiving end plays the relay's one part a direct link needs: it answers the sender's
//! `hello` with `ready`.
//!
//! Usage: `cargo run -p p2p-copy-core --example tcp_pair -- FILE... OUT_DIR`

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use p2p_copy_core::receiver::{self, Receiver, ReceiverConfig};
use p2p_copy_core::sender::{self, SendFile, Sender, SenderConfig};
use p2p_copy_core::{Secrets, WireMessage};

fn write_msg(s: &mut TcpStream, m: &WireMessage) -> io::Result<()> {
    let (kind, body): (u8, &[u8]) = match m {
        WireMessage::Text(t) => (0, t.as_bytes()),
        WireMessage::Binary(b) => (1, b),
    };
    s.write_all(&[kind])?;
    s.write_all(&(body.len() as u32).to_be_bytes())?;
    s.write_all(body)
}

fn read_msg(s: &mut TcpStream) -> io::Result<Option<WireMessage>> {
    let mut head = [0u8; 5];
    if let Err(e) = s.read_exact(&mut head) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let mut body = vec![0u8; u32::from_be_bytes(head[1..].try_into().unwrap()) as usize];
    s.read_exact(&mut body)?;
    Ok(Some(match head[0] {
        0 => WireMessage::Text(String::from_utf8(body).map_err(io::Error::other)?),
        _ => WireMessage::Binary(body.into()),
    }))
}

fn run_sender(
    mut sock: TcpStream,
    paths: Vec<PathBuf>,
    secrets: Secrets,
) -> Result<(), Box<dyn std::error::Error>> {
    let files = paths
        .iter()
        .map(|p| {
            Ok(SendFile {
                path: p.file_name().unwrap().to_string_lossy().into_owned(),
                size: std::fs::metadata(p)?.len(),
                kind: None,
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut s = Sender::new(
        Instant::now(),
        SenderConfig::default(),
        &secrets,
        files,
        [7; 32],
    )?;
    loop {
        let mut busy = false;
        while let Some(m) = s.poll_transmit() {
            write_msg(&mut sock, &m)?;
            busy = true;
        }
        while let Some(req) = s.poll_io() {
            busy = true;
            if let sender::IoRequest::Read { file, offset, len } = req {
                let mut buf = vec![0u8; len];
                let mut f = std::fs::File::open(&paths[file])?;
                io::Seek::seek(&mut f, io::SeekFrom::Start(offset))?;
                f.read_exact(&mut buf)?;
                s.handle_io(
                    Instant::now(),
                    sender::IoCompletion::Read {
                        file,
                        offset,
                        data: buf.into(),
                    },
                )?;
            }
        }
        while let Some(job) = s.poll_job() {
            s.handle_job(Instant::now(), job.run())?;
            busy = true;
        }
        if s.is_finished() && !busy {
            return Ok(());
        }
        if !busy {
            match read_msg(&mut sock)? {
                Some(m) => s.handle_message(Instant::now(), m)?,
                None => s.handle_close(Instant::now(), None, "")?,
            }
        }
    }
}

fn run_receiver(
    mut sock: TcpStream,
    out: &Path,
    secrets: Secrets,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut r = Receiver::new(Instant::now(), ReceiverConfig::default(), &secrets);
    let _hello_from_sender = read_msg(&mut sock)?;
    write_msg(&mut sock, &WireMessage::Text(r#"{"type":"ready"}"#.into()))?;
    let mut open: Vec<Option<std::fs::File>> = Vec::new();
    let part = |p: &str| out.join(format!("{p}.part"));
    loop {
        while r.poll_transmit().is_some() {} // hello and resume answers: not needed on a direct link
        while let Some(req) = r.poll_io() {
            use receiver::{IoCompletion as C, IoRequest as Q};
            let done = match req {
                Q::Open { file, path, .. } => {
                    open.resize_with(open.len().max(file + 1), || None);
                    open[file] = Some(std::fs::File::create(part(path.as_str()))?);
                    C::Opened { file }
                }
                Q::Write { file, data, .. } => {
                    open[file].as_mut().unwrap().write_all(&data)?;
                    C::Written { file }
                }
                Q::Close { file } => {
                    open[file].take().unwrap().sync_all()?;
                    C::Closed { file }
                }
                Q::Sync => C::Synced, // each file was synced when closed
                Q::Commit { file, path, .. } => {
                    std::fs::rename(part(path.as_str()), out.join(path.as_str()))?;
                    println!("received {path}"); // SafePath displays escaped
                    C::Committed { file }
                }
                Q::Stat { file, .. } => C::Stat { file, found: None },
                // Only with ReceiverConfig::metadata, which this example leaves off.
                Q::ApplyMetadata { .. } => C::MetadataApplied {
                    not_kept: Default::default(),
                },
                Q::ReadBack { file, .. } => C::Failed {
                    file,
                    reason: "no resume here".into(),
                },
            };
            r.handle_io(Instant::now(), done)?;
        }
        while let Some(job) = r.poll_job() {
            r.handle_job(Instant::now(), job.run())?;
        }
        while r.poll_event().is_some() {}
        if r.is_finished() {
            return Ok(());
        }
        if r.wants_input() {
            match read_msg(&mut sock)? {
                Some(m) => r.handle_message(Instant::now(), m)?,
                None => r.handle_close(Instant::now(), None, "")?,
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let out = args.pop().ok_or("usage: tcp_pair FILE... OUT_DIR")?;
    std::fs::create_dir_all(&out)?;
    let secrets = Secrets::derive("example code", false)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let rx_secrets = secrets.clone();
    let receiver = std::thread::spawn(move || -> Result<(), String> {
        let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
        run_receiver(sock, &out, rx_secrets).map_err(|e| e.to_string())
    });
    run_sender(TcpStream::connect(addr)?, args, secrets)?;
    receiver.join().map_err(|_| "receiver panicked")??;
    Ok(())
}
