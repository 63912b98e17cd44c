//! Prints what `msa::io::nifti::read` makes of NIfTI files: dims, spacing, range and the
//! default intensity scaling.
use msa::io::{nifti, Intensity};

fn main() -> anyhow::Result<()> {
    for path in std::env::args().skip(1) {
        let v = nifti::read(std::path::Path::new(&path))?;
        let (lo, hi) = v.volume.min_max();
        let (how, why) = Intensity::choose(None, &v.volume);
        println!(
            "{path}: dims {:?}, spacing {:?}, type code {}, values {lo}..{hi}, {how:?} ({why})",
            v.volume.dims, v.volume.spacing, v.header.datatype
        );
    }
    Ok(())
}
