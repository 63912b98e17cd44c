//! Reads a NRRD file with `msa::io::nrrd::read`, writes its values back as float32 with
//! `msa::io::nrrd::write`, and prints one JSON line with the dims, spacing and RAS affine
//! (python/tests/test_nrrd.py compares both with pynrrd).
//!
//! nrrd_roundtrip IN OUT [--raw] [--labels]: `--raw` writes raw instead of gzip, `--labels`
//! writes the values as uint8 labels.
use msa::io::nrrd::{self, Encoding, Values};
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(input), Some(output)) = (args.first(), args.get(1)) else {
        anyhow::bail!("usage: nrrd_roundtrip IN OUT [--raw] [--labels]");
    };
    let flag = |f: &str| args.iter().skip(2).any(|a| a == f);
    let volume = nrrd::read(Path::new(input))?;
    let labels: Vec<u8>;
    let values = if flag("--labels") {
        labels = volume.data.iter().map(|&v| v as u8).collect();
        Values::Labels(&labels)
    } else {
        Values::Float(&volume.data)
    };
    if flag("--raw") {
        nrrd::write_with(Path::new(output), &volume, values, Encoding::Raw)?;
    } else {
        nrrd::write(Path::new(output), &volume, values)?;
    }
    let line = serde_json::json!({
        "dims": volume.dims,
        "spacing": volume.spacing,
        "affine": volume.affine,
    });
    println!("{line}");
    Ok(())
}
