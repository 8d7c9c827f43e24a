//! zstd, one complete frame per piece, with a hard cap on decompressed size.

use std::cell::RefCell;

/// zstd level used for every piece (as the reference).
pub const LEVEL: i32 = 3;

thread_local! {
    // One context per thread: creating a level-3 context per 1 MiB piece costs more than
    // keeping it. Thread-locals keep `Job::run` callable from any worker.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compress `data` into one zstd frame that records its content size.
pub fn compress(data: &[u8]) -> Vec<u8> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Compressor::new(LEVEL).ok();
        }
        match slot.as_mut() {
            Some(c) => c.compress(data).ok(),
            None => None,
        }
        // A fresh context only fails on allocation failure; fall back to the one-shot API.
        .unwrap_or_else(|| zstd::bulk::compress(data, LEVEL).expect("zstd compression"))
    })
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
