//! One training process per run folder. `run.lock` holds an advisory lock (flock) for as
//! long as its process lives and names that process's pid. The kernel drops the lock when the
//! process dies however it dies, so a lock file left by a killed run is taken over.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of run folder `dir`, or says which process holds it. Fails with the
    /// folder named when it cannot be written (read-only, full), before any work starts.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join("run.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| {
                format!(
                    "cannot write in the run folder {} (read-only, or no permission?)",
                    dir.display()
                )
            })?;
        let mut previous = String::new();
        // An unreadable previous holder only loses its name in the messages below.
        let _ = file.read_to_string(&mut previous);
        let previous = previous.trim().to_string();
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !locked {
            bail!(
                "{} is in use by another msa train (pid {}); wait for it to finish or stop it",
                dir.display(),
                if previous.is_empty() {
                    "unknown"
                } else {
                    &previous
                }
            );
        }
        if !previous.is_empty() {
            tracing::warn!(
                "{}: taking over the lock of pid {previous}, which no longer runs",
                dir.display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())
            .and_then(|_| file.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Emptied first: a lock file that still names a pid was left by a run that died.
        let _ = self.file.set_len(0);
        // SAFETY: as above.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_a_released_lock_is_taken() {
        let dir = std::env::temp_dir().join(format!("msa-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = RunLock::acquire(&dir).unwrap();
        // flock locks belong to open file descriptions: a second open in this process
        // conflicts as another process's would.
        let e = RunLock::acquire(&dir).err().unwrap().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        let again = RunLock::acquire(&dir).unwrap();
        assert!(again.path().ends_with("run.lock"));
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
