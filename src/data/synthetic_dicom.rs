//! A generated DICOM CT series (uncompressed, explicit VR little endian) with known values,
//! for tests and fuzz seeds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "generated data for tests and demos, never user input"
)]

use anyhow::Result;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use std::path::Path;

fn strs(values: &[&str]) -> PrimitiveValue {
    PrimitiveValue::Strs(
        values
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into(),
    )
}

/// Slice `k` of a rows x columns series at z = `z` mm: raw pixel (row r, column c) =
/// 100 k + 10 r + c, rescaled by 2x - 1024; pixel spacing 0.5 x 0.75 mm, 2.5 mm thick.
pub fn write_slice(
    path: &Path,
    series: &str,
    k: usize,
    z: f64,
    (rows, columns): (usize, usize),
) -> Result<()> {
    let pixels: Vec<u16> = (0..rows * columns)
        .map(|i| (100 * k + 10 * (i / columns) + i % columns) as u16)
        .collect();
    let plane = Plane {
        position: [-10.0, 20.0, z],
        orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    };
    write_image(path, series, k, plane, (rows, columns), &pixels)
}

/// Where a slice lies: ImagePositionPatient and ImageOrientationPatient (LPS).
#[derive(Debug, Clone, Copy)]
pub struct Plane {
    pub position: [f64; 3],
    pub orientation: [f64; 6],
}

/// One CT slice of `series` holding `pixels` (row-major, raw values rescaled by 2x - 1024)
/// at `plane`; instance `k`; pixel spacing 0.5 (rows) x 0.75 (columns) mm, 2.5 mm thick.
pub fn write_image(
    path: &Path,
    series: &str,
    k: usize,
    plane: Plane,
    (rows, columns): (usize, usize),
    pixels: &[u16],
) -> Result<()> {
    let mut obj = InMemDicomObject::new_empty();
    let sop = format!("1.2.826.0.1.3680043.2.1125.{}.{}", series.len(), k + 1);
    let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
    obj.put(DataElement::new(
        tags::SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from(uids::CT_IMAGE_STORAGE),
    ));
    obj.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(sop.as_str()),
    ));
    obj.put(DataElement::new(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(series),
    ));
    obj.put(DataElement::new(
        tags::MODALITY,
        VR::CS,
        PrimitiveValue::from("CT"),
    ));
    obj.put(us(tags::ROWS, rows as u16));
    obj.put(us(tags::COLUMNS, columns as u16));
    obj.put(us(tags::SAMPLES_PER_PIXEL, 1));
    obj.put(DataElement::new(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        PrimitiveValue::from("MONOCHROME2"),
    ));
    obj.put(us(tags::BITS_ALLOCATED, 16));
    obj.put(us(tags::BITS_STORED, 16));
    obj.put(us(tags::HIGH_BIT, 15));
    obj.put(us(tags::PIXEL_REPRESENTATION, 0));
    obj.put(DataElement::new(tags::RESCALE_SLOPE, VR::DS, strs(&["2"])));
    obj.put(DataElement::new(
        tags::RESCALE_INTERCEPT,
        VR::DS,
        strs(&["-1024"]),
    ));
    let decimals = |v: &[f64]| PrimitiveValue::Strs(v.iter().map(|x| format!("{x}")).collect());
    obj.put(DataElement::new(
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        decimals(&plane.position),
    ));
    obj.put(DataElement::new(
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        decimals(&plane.orientation),
    ));
    obj.put(DataElement::new(
        tags::PIXEL_SPACING,
        VR::DS,
        strs(&["0.5", "0.75"]),
    ));
    obj.put(DataElement::new(
        tags::SLICE_THICKNESS,
        VR::DS,
        strs(&["2.5"]),
    ));
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixels.to_vec().into()),
    ));
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(sop.as_str());
    obj.with_meta(meta)?.write_to_file(path)?;
    Ok(())
}
