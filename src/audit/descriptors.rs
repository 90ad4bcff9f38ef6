//! Spare descriptors: a few descriptors held open on `/dev/null` from the start, so
//! that the audit record can still open a file when the process is out of them (a
//! flood of connections, a descriptor limit lowered from outside).
//!
//! An open that fails with EMFILE or ENFILE gives up one spare (closing it frees a
//! descriptor number below the limit, since it was taken early) and is tried again;
//! once the file is closed, [`SpareDescriptors::refill`] takes the spare back. The
//! same idea as the spare descriptor servers such as Redis and libuv keep to accept
//! and close a connection when the process is out of them. Another thread may take
//! the freed number first: then the open fails as before, and the caller says so.

use std::fs::File;

/// Whether `error` says the process (EMFILE) or the system (ENFILE) has no descriptor
/// left.
pub fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Descriptors held in reserve, up to a fixed count.
#[derive(Debug)]
pub struct SpareDescriptors {
    spares: Vec<File>,
    wanted: usize,
}

impl SpareDescriptors {
    /// Takes `wanted` spares now (as many as the process can give).
    pub fn new(wanted: usize) -> Self {
        let mut spares = SpareDescriptors {
            spares: Vec::with_capacity(wanted),
            wanted,
        };
        spares.refill();
        spares
    }

    /// Spares held now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.spares.len()
    }

    /// Runs `open`; when it fails for want of a descriptor, gives up spares one at a
    /// time and runs it again, until it succeeds or none is left.
    pub fn open_with<T>(
        &mut self,
        mut open: impl FnMut() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        loop {
            match open() {
                Err(error) if is_out_of_descriptors(&error) => {
                    if self.spares.pop().is_none() {
                        return Err(error);
                    }
                }
                result => return result,
            }
        }
    }

    /// Takes back the spares given up, as far as descriptors are free (call once the
    /// files opened with them are closed).
    pub fn refill(&mut self) {
        while self.spares.len() < self.wanted {
            match File::open("/dev/null") {
                Ok(spare) => self.spares.push(spare),
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[test]
    fn an_open_out_of_descriptors_is_retried_once_per_spare_then_fails() {
        let mut spares = SpareDescriptors::new(2);
        assert_eq!(spares.held(), 2);
        let mut attempts = 0;
        let opened = spares.open_with(|| {
            attempts += 1;
            if attempts < 3 { Err(emfile()) } else { Ok(7) }
        });
        assert_eq!((opened.unwrap(), attempts, spares.held()), (7, 3, 0));
        let failed = spares.open_with(|| Err::<(), _>(emfile()));
        assert!(is_out_of_descriptors(&failed.unwrap_err()));
        spares.refill();
        assert_eq!(spares.held(), 2);
        // Other errors are not retried and cost no spare.
        let failed = spares.open_with(|| Err::<(), _>(std::io::Error::other("broken")));
        assert!(!is_out_of_descriptors(&failed.unwrap_err()));
        assert_eq!(spares.held(), 2);
    }
}
