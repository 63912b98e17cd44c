//! Files written whole or not at all: through a temporary file beside the target, synced
//! and renamed, so that an interrupted write never leaves a truncated file behind.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// `bytes` to `path` through `tmp_path(path)`, synced, renamed, the folder synced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = tmp_path(path);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "cannot write {} ({e}); the previous {} is untouched",
            tmp.display(),
            path.display()
        );
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Makes the rename itself durable; a folder that cannot be opened is no error.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// `dir/.name.tmp`, beside the final file so that the rename stays on one filesystem.
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp"))
}
