//! One AFL++ binary for every target of `msa::fuzz`; MSA_FUZZ_TARGET picks the target.
//! `fuzz_nohook!`: a panic that a loader catches and turns into an error (a third-party
//! decoder's assertion) is handled; one that escapes still aborts, and counts as a crash.

fn main() {
    let target = std::env::var("MSA_FUZZ_TARGET").unwrap_or_default();
    if !msa::fuzz::TARGETS.contains(&target.as_str()) {
        eprintln!("set MSA_FUZZ_TARGET to one of {:?}", msa::fuzz::TARGETS);
        std::process::exit(2);
    }
    afl::fuzz_nohook!(|data: &[u8]| {
        msa::fuzz::run(&target, data);
    });
}
