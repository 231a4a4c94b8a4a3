//! One writer at a time: an exclusive `flock` on `<store>/write.lock`.

use std::path::Path;

use crate::{Error, Result};

/// An exclusive lock on a store's `write.lock`, held while writing; released
/// when dropped (or when the process dies: flock locks go with the file).
pub struct WriteLock {
    _file: std::fs::File,
}

impl WriteLock {
    /// Waits for the lock, saying so when another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        Self::take(dir, true).map(|l| l.expect("a blocking lock is taken"))
    }

    /// The lock if nobody holds it, else `None` at once.
    pub fn try_acquire(dir: &Path) -> Result<Option<Self>> {
        Self::take(dir, false)
    }

    fn take(dir: &Path, wait: bool) -> Result<Option<Self>> {
        use std::os::fd::AsRawFd;
        let path = dir.join("write.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let fd = file.as_raw_fd();
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(Self { _file: file }));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::io(&path, err));
        }
        if !wait {
            return Ok(None);
        }
        eprintln!("waiting for another imgsearch process writing to {} ...", dir.display());
        loop {
            // SAFETY: as above.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
                return Ok(Some(Self { _file: file }));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io(&path, err));
            }
        }
    }
}
