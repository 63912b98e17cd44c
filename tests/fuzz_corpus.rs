//! Replays every fuzz corpus (`fuzz/corpus/<target>/`, seeds and what the fuzzer kept) and
//! every saved crash (`fuzz/crashes/<target>/`) through its target: none may panic.

use std::path::PathBuf;

fn files(dir: &PathBuf) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut v: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_corpus_input_runs_without_a_panic() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = vec![];
    for target in msa::fuzz::TARGETS {
        let corpus = files(&root.join("corpus").join(target));
        assert!(!corpus.is_empty(), "no seeds for fuzz target {target}");
        for path in corpus
            .iter()
            .chain(&files(&root.join("crashes").join(target)))
        {
            let data = std::fs::read(path).unwrap();
            let ran = std::panic::catch_unwind(|| msa::fuzz::run(target, &data));
            match ran {
                Ok(true) => {}
                Ok(false) => failures.push(format!("{target}: unknown target")),
                Err(_) => failures.push(format!("{target}: {} panics", path.display())),
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
