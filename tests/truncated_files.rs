//! Files cut short are refused with the reason, never filled in: images (JPEG, PNG, TIFF,
//! BMP), gzip streams (NIfTI), and DICOM slices whose compressed frames are cut.

use msa::io::DecodeLimits;

fn encoded(format: image::ImageFormat) -> Vec<u8> {
    let (rgb, _) = msa::data::synthetic::lesion_image(120, 90, 7);
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(rgb)
        .write_to(&mut bytes, format)
        .unwrap();
    bytes.into_inner()
}

#[test]
fn images_cut_anywhere_are_refused() {
    use image::ImageFormat::*;
    for format in [Jpeg, Png, Tiff, Bmp] {
        let whole = encoded(format);
        msa::io::image::decode_rgb(&whole, &DecodeLimits::default()).unwrap();
        for keep in [
            whole.len() / 3,
            whole.len() / 2,
            whole.len() - 3,
            whole.len() - 1,
        ] {
            let cut = &whole[..keep];
            let err = msa::io::image::decode_rgb(cut, &DecodeLimits::default());
            assert!(
                err.is_err(),
                "{format:?} cut to {keep} of {} bytes was decoded",
                whole.len()
            );
            let err = format!("{:#}", err.unwrap_err());
            assert!(err.contains("truncated"), "{format:?} {keep}: {err}");
        }
    }
}

#[test]
fn a_gzipped_nifti_cut_short_is_refused() {
    use ndarray::ShapeBuilder;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.nii.gz");
    let values: Vec<f32> = (0..40 * 30 * 8)
        .map(|i| ((i * 7919) % 1000) as f32)
        .collect();
    let array = ndarray::Array::from_shape_vec((40, 30, 8).f(), values).unwrap();
    nifti::writer::WriterOptions::new(&path)
        .write_nifti(&array)
        .unwrap();
    msa::io::nifti::read(&path).unwrap();
    let whole = std::fs::read(&path).unwrap();
    for keep in [whole.len() / 2, whole.len() - 4, whole.len() - 1] {
        let cut = dir.path().join(format!("cut{keep}.nii.gz"));
        std::fs::write(&cut, &whole[..keep]).unwrap();
        let err = msa::io::nifti::read(&cut).err().map(|e| format!("{e:#}"));
        let err = err.unwrap_or_else(|| panic!("{} cut to {keep} bytes was read", whole.len()));
        assert!(
            err.contains(&cut.display().to_string()) && err.contains("truncated"),
            "{keep}: {err}"
        );
        let err =
            msa::io::nifti::read_bytes(&whole[..keep], "upload.nii.gz", &DecodeLimits::default());
        let err = err
            .err()
            .map(|e| format!("{e:#}"))
            .expect("the cut bytes were read");
        assert!(
            err.contains("upload.nii.gz") && err.contains("truncated"),
            "{keep}: {err}"
        );
    }
}
