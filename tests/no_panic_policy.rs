//! The no-panic rule for code that reads user data (RELIABILITY.md): the loader modules deny
//! clippy's unwrap, expect, indexing and panic lints, and every exception states its proof.
//! `cargo clippy` enforces the lints; this test keeps them from being dropped quietly.

use std::path::{Path, PathBuf};

/// The roots of the modules that parse files, prompts and requests from users.
const LOADER_ROOTS: [&str; 7] = [
    "src/weights/mod.rs",
    "src/io/mod.rs",
    "src/data/mod.rs",
    "src/infer/mod.rs",
    "src/serve/mod.rs",
    "src/train/config.rs",
    "src/fuzz.rs",
];

const LINTS: [&str; 5] = [
    "clippy::unwrap_used",
    "clippy::expect_used",
    "clippy::indexing_slicing",
    "clippy::panic",
    "clippy::unreachable",
];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// The text of the attribute starting at `start`, up to its closing bracket.
fn attribute_at(text: &str, start: usize) -> &str {
    let rest = &text[start..];
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => {
                depth -= 1;
                if depth == 0 && c == ']' {
                    return &rest[..=i];
                }
            }
            _ => {}
        }
    }
    rest
}

#[test]
fn every_loader_module_denies_the_panicking_lints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in LOADER_ROOTS {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let start = text
            .find("#![deny(")
            .unwrap_or_else(|| panic!("{file}: no #![deny(...)] of the panicking lints"));
        let attr = attribute_at(&text, start);
        for lint in LINTS {
            assert!(
                attr.contains(lint),
                "{file}: {lint} is not denied in {attr}"
            );
        }
    }
}

#[test]
fn every_exception_to_the_rule_gives_its_reason() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut exceptions = 0;
    for file in rust_files(&root.join("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for pattern in ["#[expect(", "#![allow(", "#[allow(", "#![expect("] {
            for (start, _) in text.match_indices(pattern) {
                let attr = attribute_at(&text, start);
                if LINTS.iter().any(|l| attr.contains(l)) {
                    exceptions += 1;
                    assert!(
                        attr.contains("reason ="),
                        "{}: an exception without its reason: {attr}",
                        file.display()
                    );
                }
            }
        }
    }
    assert!(exceptions > 0, "the scan found no exception at all");
}
