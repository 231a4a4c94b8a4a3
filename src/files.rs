//! File helpers every floor uses: atomic replacement and content checksums.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// crash leaves the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Hex sha256 of a file, read in 1 MB pieces.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// The prefix of a stored path whose bytes are not UTF-8 (or that could be
/// mistaken for such an encoding), followed by the bytes with `%XX` escapes.
const BYTES_PREFIX: &str = "bytes:";

/// A path as the stores keep it: the path itself when it is UTF-8, else
/// `bytes:` and its bytes with every byte that is not printable ASCII (and
/// `%`) written `%XX`. The mapping is one-to-one, so `bad\xff.jpg` and
/// `bad\xfe.jpg` stay two files and [`text_to_path`] finds each again;
/// stored paths are absolute, so a real one never starts with `bytes:`.
pub fn path_to_text(path: &Path) -> String {
    match path.to_str() {
        Some(s) if !s.starts_with(BYTES_PREFIX) => s.to_owned(),
        _ => {
            use std::fmt::Write;
            let mut out = BYTES_PREFIX.to_owned();
            for &b in path.as_os_str().as_encoded_bytes() {
                if (b.is_ascii_graphic() || b == b' ') && b != b'%' {
                    out.push(b as char);
                } else {
                    let _ = write!(out, "%{b:02X}");
                }
            }
            out
        }
    }
}

/// The path a stored text stands for (the inverse of [`path_to_text`]).
pub fn text_to_path(text: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let Some(escaped) = text.strip_prefix(BYTES_PREFIX) else {
        return PathBuf::from(text);
    };
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The file name of a stored path, for people to read.
pub fn display_file_name(text: &str) -> String {
    text_to_path(text).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A stored path for people to read (non-UTF-8 bytes shown as U+FFFD).
pub fn display_path(text: &str) -> String {
    text_to_path(text).to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn paths_round_trip_through_their_stored_text() {
        let odd = |b: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(b));
        let cases = [
            PathBuf::from("/photos/2023/beach 1.jpg"),
            PathBuf::from("/photos/ünïcode/100%.jpg"),
            odd(b"/photos/bad\xff.jpg"),
            odd(b"/photos/bad\xfe.jpg"),
            odd(b"/photos/%FF\xff.jpg"),
            PathBuf::from("bytes:/not/escaped%41"),
        ];
        let texts: Vec<String> = cases.iter().map(|p| path_to_text(p)).collect();
        assert_eq!(texts[0], "/photos/2023/beach 1.jpg", "UTF-8 paths are stored as they are");
        assert_eq!(texts[1], "/photos/ünïcode/100%.jpg");
        assert_eq!(texts[2], "bytes:/photos/bad%FF.jpg");
        assert_ne!(texts[2], texts[3], "two byte names stay two files");
        for (path, text) in cases.iter().zip(&texts) {
            assert_eq!(&text_to_path(text), path, "{text}");
        }
        assert_eq!(display_path(&texts[2]), "/photos/bad\u{FFFD}.jpg");
    }
}
