//! The DICOM inputs the fuzzer saved as hangs (`fuzz/hangs/dicom/`): files of 650 to 1040
//! bytes whose elements claim gigabytes. dicom-rs reserved and zero-filled what they
//! claimed (2.8 to 4.2 GB each, RELIABILITY.md). Each must now be refused from its headers,
//! by name, by a process that stays small.

use std::path::PathBuf;
use std::process::Command;

/// The largest resident set of any child this test process has waited for, in KiB.
fn children_peak_kib() -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss
}

#[test]
fn every_saved_dicom_hang_is_refused_small() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/hangs/dicom");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    assert_eq!(inputs.len(), 9, "the saved hangs in {}", root.display());
    for input in &inputs {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(input, dir.path().join("slice.dcm")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_msa"))
            .arg("info")
            .arg(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", input.display());
        assert!(
            err.contains("slice.dcm: refused before parsing")
                && (err.contains("bytes follow") || err.contains("not a multiple of")),
            "{}: {err}",
            input.display()
        );
    }
    let peak = children_peak_kib();
    assert!(peak < 100 * 1024, "a child peaked at {peak} KiB");
}
