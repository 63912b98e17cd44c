//! Where a training process is, for the kill harness (`bench/kill_test.sh`,
//! `tests/kill_resume.rs`). With `MSA_PHASE_FILE` set, every phase change writes the phase's
//! name to that file, so that whoever kills the process knows what it interrupted. Unset, a
//! mark costs one load of a static.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// The environment variable naming the phase file.
pub const PHASE_FILE: &str = "MSA_PHASE_FILE";

/// The width every phase name is padded to, so that a reader never sees two names mixed.
pub const WIDTH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Loading the model and the data, before the first epoch.
    Setup,
    /// Waiting for the next batch from the loader threads.
    Data,
    Forward,
    Backward,
    Optimizer,
    Validate,
    /// Writing adapters, the run state, metrics and curves after an epoch.
    Checkpoint,
    Done,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Data => "data",
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Optimizer => "optimizer",
            Phase::Validate => "validate",
            Phase::Checkpoint => "checkpoint",
            Phase::Done => "done",
        }
    }
}

fn file() -> Option<&'static File> {
    static FILE: OnceLock<Option<File>> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::var_os(PHASE_FILE)?;
        File::create(path).ok()
    })
    .as_ref()
}

/// Records that the process enters `phase`. Failing to write is ignored: the file is a
/// diagnostic, never a reason to stop training.
pub fn mark(phase: Phase) {
    if let Some(f) = file() {
        let mut buf = [b' '; WIDTH];
        let name = phase.name().as_bytes();
        buf[..name.len()].copy_from_slice(name);
        let _ = f.write_all_at(&buf, 0);
    }
}
