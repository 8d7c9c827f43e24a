//! zstd, one complete frame per piece, with a hard cap on decompressed size.

use std::cell::RefCell;

/// zstd level of the reference, and the highest the sender's adaptive choice takes
/// ([`CompressLevel::Adaptive`](crate::sender::CompressLevel::Adaptive)).
pub const LEVEL: i32 = 3;

/// The lowest level the adaptive choice takes.
pub const MIN_LEVEL: i32 = 1;

/// The highest level a sender may be set to (zstd's own highest).
pub const MAX_LEVEL: i32 = 19;

thread_local! {
    // One context per thread: creating a level-3 context per 1 MiB piece costs more than
    // keeping it. Thread-locals keep `Job::run` callable from any worker.
    static COMPRESSOR: RefCell<Option<(zstd::bulk::Compressor<'static>, i32)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compress `data` at the reference's level into one zstd frame that records its
/// content size.
pub fn compress(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    compress_onto(data, LEVEL, &mut out);
    out
}

/// Compress `data` at `level` (clamped to 1..=19) into one zstd frame that records its
/// content size, appended to `out` (written in place, after what `out` holds: a
/// message's header room, say). Any level gives a frame every receiver decompresses
/// alike; the level trades the sender's CPU for size.
pub fn compress_onto(data: &[u8], level: i32, out: &mut Vec<u8>) {
    let level = level.clamp(MIN_LEVEL, MAX_LEVEL);
    let start = out.len();
    out.reserve(zstd::zstd_safe::compress_bound(data.len()));
    let done = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Compressor::new(level).ok().map(|c| (c, level));
        }
        let (c, at) = slot.as_mut()?;
        if *at != level {
            c.set_compression_level(level).ok()?;
            *at = level;
        }
        let mut cursor = std::io::Cursor::new(&mut *out);
        cursor.set_position(start as u64);
        c.compress_to_buffer(data, &mut cursor).ok()
    });
    if done.is_none() {
        // A context only fails on allocation failure; fall back to the one-shot API.
        out.truncate(start);
        out.extend_from_slice(&zstd::bulk::compress(data, level).expect("zstd compression"));
    }
    // The bound is about the piece's size; what a queued message holds is its frame.
    out.shrink_to_fit();
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecompressError {
    /// The frame does not record its content size.
    NoContentSize,
    /// The recorded size exceeds the cap.
    TooLarge(u64),
    /// The frame is corrupt or has trailing bytes.
    Corrupt(String),
}

impl std::fmt::Display for DecompressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecompressError::NoContentSize => write!(f, "zstd frame without a content size"),
            DecompressError::TooLarge(n) => {
                write!(
                    f,
                    "zstd frame would expand to {n} bytes, over the piece size"
                )
            }
            DecompressError::Corrupt(e) => write!(f, "corrupt zstd frame: {e}"),
        }
    }
}

/// Decompress exactly one frame whose recorded content size is at most `cap`.
///
/// # Errors
/// A frame without a content size, over the cap, corrupt, or followed by extra bytes.
pub fn decompress_capped(frame: &[u8], cap: usize) -> Result<Vec<u8>, DecompressError> {
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(DecompressError::NoContentSize),
        Err(_) => return Err(DecompressError::Corrupt("bad frame header".into())),
    };
    if size > cap as u64 {
        return Err(DecompressError::TooLarge(size));
    }
    match zstd::zstd_safe::find_frame_compressed_size(frame) {
        Ok(n) if n == frame.len() => {}
        Ok(_) => {
            return Err(DecompressError::Corrupt(
                "trailing bytes after the frame".into(),
            ))
        }
        Err(code) => {
            return Err(DecompressError::Corrupt(
                zstd::zstd_safe::get_error_name(code).into(),
            ))
        }
    }
    let out = DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Decompressor::new().ok();
        }
        match slot.as_mut() {
            Some(d) => d.decompress(frame, size as usize),
            None => zstd::bulk::decompress(frame, size as usize),
        }
    });
    let out = out.map_err(|e| DecompressError::Corrupt(e.to_string()))?;
    if out.len() as u64 != size {
        return Err(DecompressError::Corrupt(format!(
            "frame said {size} bytes but held {}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_records_content_size() {
        let data = b"hello hello hello hello".repeat(100);
        let frame = compress(&data);
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&frame).ok(),
            Some(Some(data.len() as u64))
        );
        assert_eq!(decompress_capped(&frame, data.len()).unwrap(), data);
    }

    #[test]
    fn every_level_gives_a_frame_that_decompresses_alike() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {} value {}\n", i % 977, i % 13).into_bytes())
            .collect();
        let mut sizes = Vec::new();
        // The same thread's context moves between levels, and back.
        for level in [1, 19, 3, 1, 0, 40] {
            let mut frame = b"room".to_vec();
            compress_onto(&data, level, &mut frame);
            assert_eq!(&frame[..4], b"room", "what `out` held stays in front");
            let frame = &frame[4..];
            assert_eq!(decompress_capped(frame, data.len()).unwrap(), data);
            sizes.push(frame.len());
        }
        assert!(
            sizes[1] < sizes[0],
            "level 19 is smaller than level 1: {sizes:?}"
        );
        assert_eq!(sizes[0], sizes[3], "level 1 twice: {sizes:?}");
        // Out-of-range levels are clamped to 1 and 19.
        assert_eq!(sizes[4], sizes[0]);
        assert_eq!(sizes[5], sizes[1]);
    }

    #[test]
    fn bomb_over_cap_is_refused() {
        let frame = compress(&vec![0u8; 4 * 1024 * 1024]);
        assert_eq!(
            decompress_capped(&frame, 1024 * 1024),
            Err(DecompressError::TooLarge(4 * 1024 * 1024))
        );
    }

    #[test]
    fn frame_without_content_size_is_refused() {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut enc, b"abcabcabc").unwrap();
        let frame = enc.finish().unwrap();
        assert_eq!(
            decompress_capped(&frame, 100),
            Err(DecompressError::NoContentSize)
        );
    }

    #[test]
    fn corrupt_and_trailing_frames_are_refused() {
        let mut frame = compress(b"some data some data some data");
        let mut trailing = frame.clone();
        trailing.push(0);
        assert!(decompress_capped(&trailing, 100).is_err());
        let n = frame.len();
        frame[n - 2] ^= 0xff;
        assert!(decompress_capped(&frame, 100).is_err());
        assert!(decompress_capped(b"garbage", 100).is_err());
    }
}
