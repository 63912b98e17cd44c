//! DICOM Segmentation (binary) of a label volume on the grid of the series it was made
//! from: one segment per class, one frame per slice where the class is present, each
//! frame placed by its ImagePositionPatient and derived from its source instance.

use super::series::SeriesSource;
use crate::io::atomic::write_atomically;
use anyhow::{bail, Context, Result};
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject};
use std::path::Path;

/// One segment: the label value in the volume and what it is.
#[derive(Debug, Clone)]
pub struct Segment {
    pub label: u8,
    pub name: String,
}

/// A coded concept: (value, scheme, meaning).
type Code = (&'static str, &'static str, &'static str);
const CATEGORY: Code = ("91723000", "SCT", "Anatomical Structure");
const TYPE: Code = ("85756007", "SCT", "Tissue");
const ARTIFICIAL_INTELLIGENCE: Code = ("123110", "DCM", "Artificial Intelligence");
const SOURCE_IMAGE: Code = (
    "121322",
    "DCM",
    "Source image for image processing operation",
);

/// Writes `labels` (x-fastest on the grid of the volume read from `source`) as a binary
/// DICOM SEG at `path` (through a temporary file and a rename).
pub fn write(
    path: &Path,
    labels: &[u8],
    volume: &crate::io::Volume,
    source: &SeriesSource,
    segments: &[Segment],
) -> Result<()> {
    let [nx, ny, nz] = volume.dims;
    if labels.len() != nx * ny * nz || source.slices.len() != nz {
        bail!(
            "{}: {} labels and {} source slices for a {nx} x {ny} x {nz} volume",
            path.display(),
            labels.len(),
            source.slices.len()
        );
    }
    let segments = numbered(segments, labels);
    let first = source.header(0)?;
    let sop_instance = new_uid(&[
        path.to_string_lossy().as_bytes(),
        source.series.uid.as_bytes(),
    ]);
    let mut obj = InMemDicomObject::new_empty();
    copy_patient_and_study(&mut obj, &first);
    series_and_equipment(&mut obj, &sop_instance, source);
    let frames = frames(labels, volume.dims, &segments)?;
    image_pixel(&mut obj, volume.dims, &frames)?;
    obj.put(sequence(
        tags::SEGMENT_SEQUENCE,
        segments
            .iter()
            .map(|s| segment_item(s.label as usize, s))
            .collect(),
    ));
    for e in dimensions(&new_uid(&[sop_instance.as_bytes(), b"dimensions"])) {
        obj.put(e);
    }
    obj.put(shared_groups(source, volume.spacing[2]));
    let mut per_frame = Vec::with_capacity(frames.len());
    let refs = source.instances()?;
    for f in &frames {
        let (class, instance) = refs.get(f.slice).context("frame slice")?;
        let position = source
            .slices
            .get(f.slice)
            .map(|s| s.1)
            .context("frame slice")?;
        per_frame.push(frame_item(f, position, class, instance));
    }
    obj.put(sequence(
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        per_frame,
    ));
    obj.put(references(source, &refs));
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(uids::SEGMENTATION_STORAGE)
        .media_storage_sop_instance_uid(&sop_instance)
        .implementation_version_name(format!("MSA_{}", env!("CARGO_PKG_VERSION")));
    let file = obj.with_meta(meta).context("DICOM SEG file meta")?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes)
        .context("encoding the DICOM SEG")?;
    write_atomically(path, &bytes)
}

/// A UID under 2.25 (a UUID as a decimal integer), from a hash of `parts`, the time and
/// the process.
fn new_uid(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(now.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
    // UUID version 4 and variant bits, as ISO/IEC 9834-8 derived UIDs expect.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(bytes))
}

fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

fn put_strs(obj: &mut InMemDicomObject, tag: Tag, vr: VR, values: &[String]) {
    obj.put(DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(values.iter().cloned().collect()),
    ));
}

fn put_us(obj: &mut InMemDicomObject, tag: Tag, value: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn decimal(v: f64) -> String {
    // DS holds at most 16 characters.
    let s = format!("{v}");
    if s.len() <= 16 {
        return s;
    }
    let s = format!("{v:.6}");
    s.get(..16).unwrap_or(&s).trim_end_matches('.').to_string()
}

fn code_item((value, scheme, meaning): Code) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::CODE_VALUE, VR::SH, value);
    put_str(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
    put_str(&mut item, tags::CODE_MEANING, VR::LO, meaning);
    item
}

/// Patient and study modules, and the frame of reference, copied from the source.
fn copy_patient_and_study(obj: &mut InMemDicomObject, source: &DefaultDicomObject) {
    const COPIED: [Tag; 13] = [
        tags::SPECIFIC_CHARACTER_SET,
        tags::PATIENT_NAME,
        tags::PATIENT_ID,
        tags::PATIENT_BIRTH_DATE,
        tags::PATIENT_SEX,
        tags::STUDY_INSTANCE_UID,
        tags::STUDY_DATE,
        tags::STUDY_TIME,
        tags::REFERRING_PHYSICIAN_NAME,
        tags::STUDY_ID,
        tags::ACCESSION_NUMBER,
        tags::FRAME_OF_REFERENCE_UID,
        tags::POSITION_REFERENCE_INDICATOR,
    ];
    for tag in COPIED {
        if let Ok(Some(e)) = source.element_opt(tag) {
            obj.put(e.clone());
        }
    }
    // Type 2 elements of those modules are present, if empty.
    for (tag, vr) in [
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
        (tags::POSITION_REFERENCE_INDICATOR, VR::LO),
    ] {
        if obj.element_opt(tag).ok().flatten().is_none() {
            obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
        }
    }
}

/// SOP common, series, equipment and the segmentation's own identity.
fn series_and_equipment(obj: &mut InMemDicomObject, sop_instance: &str, source: &SeriesSource) {
    let (date, time) = now_date_time();
    put_str(obj, tags::SOP_CLASS_UID, VR::UI, uids::SEGMENTATION_STORAGE);
    put_str(obj, tags::SOP_INSTANCE_UID, VR::UI, sop_instance);
    put_str(obj, tags::MODALITY, VR::CS, "SEG");
    let series_uid = new_uid(&[sop_instance.as_bytes(), b"series"]);
    put_str(obj, tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
    let number = source.series.number.map_or(1, |n| n.saturating_add(1000));
    put_str(obj, tags::SERIES_NUMBER, VR::IS, &number.to_string());
    put_str(obj, tags::SERIES_DESCRIPTION, VR::LO, "msa segmentation");
    put_str(obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(obj, tags::CONTENT_DATE, VR::DA, &date);
    put_str(obj, tags::CONTENT_TIME, VR::TM, &time);
    put_str(obj, tags::SERIES_DATE, VR::DA, &date);
    put_str(obj, tags::SERIES_TIME, VR::TM, &time);
    put_str(obj, tags::MANUFACTURER, VR::LO, "msa");
    put_str(obj, tags::MANUFACTURER_MODEL_NAME, VR::LO, "msa");
    put_str(obj, tags::DEVICE_SERIAL_NUMBER, VR::LO, "1");
    put_str(
        obj,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        env!("CARGO_PKG_VERSION"),
    );
    put_strs(
        obj,
        tags::IMAGE_TYPE,
        VR::CS,
        &["DERIVED".into(), "PRIMARY".into()],
    );
    put_str(obj, tags::CONTENT_LABEL, VR::CS, "MSA");
    put_str(
        obj,
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        "Medical SAM Adapter segmentation",
    );
    obj.put(DataElement::new(
        tags::CONTENT_CREATOR_NAME,
        VR::PN,
        PrimitiveValue::Empty,
    ));
    put_str(obj, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_str(obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
}

fn now_date_time() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}{month:02}{day:02}"),
        format!("{:02}{:02}{:02}", rest / 3600, rest / 60 % 60, rest % 60),
    )
}

/// One frame: a segment on a source slice, its pixels (rows x columns, row-major).
struct Frame {
    segment: usize,
    slice: usize,
    pixels: Vec<bool>,
}

/// Segment n for label n, for every n from 1 to the largest label named or present (the
/// standard numbers segments 1, 2, ... without gaps; a label with no voxels is a segment
/// without frames), named as given or "class n".
fn numbered(named: &[Segment], labels: &[u8]) -> Vec<Segment> {
    let largest = named
        .iter()
        .map(|s| s.label)
        .chain(labels.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    (1..=largest)
        .map(|label| Segment {
            label,
            name: named
                .iter()
                .find(|s| s.label == label)
                .map_or_else(|| format!("class {label}"), |s| s.name.clone()),
        })
        .collect()
}

/// The frames with any foreground, segment by segment and slice by slice; one empty frame
/// when nothing is segmented (a segmentation holds at least one).
fn frames(labels: &[u8], [nx, ny, nz]: [usize; 3], segments: &[Segment]) -> Result<Vec<Frame>> {
    let mut out = vec![];
    for s in segments {
        for k in 0..nz {
            let plane = crate::io::volume::plane(labels, [nx, ny, nz], k)?;
            // Volume slices are x-fastest with x along the columns: DICOM's row-major.
            let pixels: Vec<bool> = plane.iter().map(|&l| l == s.label).collect();
            if pixels.iter().any(|&p| p) {
                out.push(Frame {
                    segment: s.label as usize,
                    slice: k,
                    pixels,
                });
            }
        }
    }
    if out.is_empty() {
        out.push(Frame {
            segment: 1,
            slice: 0,
            pixels: vec![false; nx * ny],
        });
    }
    Ok(out)
}

/// Image pixel module and the frames, one bit per pixel, packed without gaps between
/// frames (PS3.5 8.1.1), least significant bit first.
fn image_pixel(
    obj: &mut InMemDicomObject,
    [nx, ny, _]: [usize; 3],
    frames: &[Frame],
) -> Result<()> {
    let (rows, columns) = (u16::try_from(ny), u16::try_from(nx));
    let (Ok(rows), Ok(columns)) = (rows, columns) else {
        bail!("a {nx} x {ny} slice is too large for DICOM");
    };
    put_us(obj, tags::ROWS, rows);
    put_us(obj, tags::COLUMNS, columns);
    put_us(obj, tags::SAMPLES_PER_PIXEL, 1);
    put_str(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put_us(obj, tags::BITS_ALLOCATED, 1);
    put_us(obj, tags::BITS_STORED, 1);
    put_us(obj, tags::HIGH_BIT, 0);
    put_us(obj, tags::PIXEL_REPRESENTATION, 0);
    put_str(
        obj,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &frames.len().to_string(),
    );
    let bits = frames.len() * nx * ny;
    let mut packed = vec![0u8; bits.div_ceil(8)];
    for (i, on) in frames.iter().flat_map(|f| f.pixels.iter()).enumerate() {
        if *on {
            if let Some(byte) = packed.get_mut(i / 8) {
                *byte |= 1 << (i % 8);
            }
        }
    }
    if packed.len() % 2 == 1 {
        packed.push(0);
    }
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(packed),
    ));
    Ok(())
}

fn segment_item(number: usize, s: &Segment) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_us(&mut item, tags::SEGMENT_NUMBER, number as u16);
    put_str(&mut item, tags::SEGMENT_LABEL, VR::LO, &s.name);
    put_str(
        &mut item,
        tags::SEGMENT_ALGORITHM_TYPE,
        VR::CS,
        "SEMIAUTOMATIC",
    );
    put_str(&mut item, tags::SEGMENT_ALGORITHM_NAME, VR::LO, "msa");
    item.put(sequence(
        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
        vec![code_item(CATEGORY)],
    ));
    item.put(sequence(
        tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
        vec![code_item(TYPE)],
    ));
    let mut algorithm = InMemDicomObject::new_empty();
    algorithm.put(sequence(
        tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
        vec![code_item(ARTIFICIAL_INTELLIGENCE)],
    ));
    put_str(&mut algorithm, tags::ALGORITHM_NAME, VR::LO, "msa");
    put_str(
        &mut algorithm,
        tags::ALGORITHM_VERSION,
        VR::LO,
        env!("CARGO_PKG_VERSION"),
    );
    item.put(sequence(
        tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
        vec![algorithm],
    ));
    item
}

/// Frames are indexed by segment number and by position along the slice normal.
fn dimensions(organization: &str) -> [DataElement<InMemDicomObject>; 2] {
    let index = |pointer: Tag, group: Tag, label: &str| {
        let mut item = InMemDicomObject::new_empty();
        put_str(
            &mut item,
            tags::DIMENSION_ORGANIZATION_UID,
            VR::UI,
            organization,
        );
        item.put(DataElement::new(
            tags::DIMENSION_INDEX_POINTER,
            VR::AT,
            PrimitiveValue::Tags(vec![pointer].into()),
        ));
        item.put(DataElement::new(
            tags::FUNCTIONAL_GROUP_POINTER,
            VR::AT,
            PrimitiveValue::Tags(vec![group].into()),
        ));
        put_str(&mut item, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
        item
    };
    let mut organized = InMemDicomObject::new_empty();
    put_str(
        &mut organized,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        organization,
    );
    [
        sequence(tags::DIMENSION_ORGANIZATION_SEQUENCE, vec![organized]),
        sequence(
            tags::DIMENSION_INDEX_SEQUENCE,
            vec![
                index(
                    tags::REFERENCED_SEGMENT_NUMBER,
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    "ReferencedSegmentNumber",
                ),
                index(
                    tags::IMAGE_POSITION_PATIENT,
                    tags::PLANE_POSITION_SEQUENCE,
                    "ImagePositionPatient",
                ),
            ],
        ),
    ]
}

/// Orientation and pixel measures, the same for every frame.
fn shared_groups(source: &SeriesSource, slice_spacing: f32) -> DataElement<InMemDicomObject> {
    let mut orientation = InMemDicomObject::new_empty();
    put_strs(
        &mut orientation,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        &source.orientation.map(decimal),
    );
    let mut measures = InMemDicomObject::new_empty();
    put_strs(
        &mut measures,
        tags::PIXEL_SPACING,
        VR::DS,
        &source.pixel_spacing.map(decimal),
    );
    let between = f64::from(slice_spacing);
    put_str(
        &mut measures,
        tags::SLICE_THICKNESS,
        VR::DS,
        &decimal(between),
    );
    put_str(
        &mut measures,
        tags::SPACING_BETWEEN_SLICES,
        VR::DS,
        &decimal(between),
    );
    let mut shared = InMemDicomObject::new_empty();
    shared.put(sequence(
        tags::PLANE_ORIENTATION_SEQUENCE,
        vec![orientation],
    ));
    shared.put(sequence(tags::PIXEL_MEASURES_SEQUENCE, vec![measures]));
    sequence(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared])
}

fn frame_item(f: &Frame, position: [f64; 3], class: &str, instance: &str) -> InMemDicomObject {
    let mut source_image = InMemDicomObject::new_empty();
    put_str(
        &mut source_image,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        class,
    );
    put_str(
        &mut source_image,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        instance,
    );
    source_image.put(sequence(
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code_item(SOURCE_IMAGE)],
    ));
    // Frames lie on their source slices' pixel grid.
    put_str(
        &mut source_image,
        tags::SPATIAL_LOCATIONS_PRESERVED,
        VR::CS,
        "YES",
    );
    let mut derivation = InMemDicomObject::new_empty();
    derivation.put(sequence(tags::SOURCE_IMAGE_SEQUENCE, vec![source_image]));
    derivation.put(sequence(
        tags::DERIVATION_CODE_SEQUENCE,
        vec![code_item(("113076", "DCM", "Segmentation"))],
    ));
    let mut content = InMemDicomObject::new_empty();
    content.put(DataElement::new(
        tags::DIMENSION_INDEX_VALUES,
        VR::UL,
        PrimitiveValue::U32(vec![f.segment as u32, f.slice as u32 + 1].into()),
    ));
    let mut plane = InMemDicomObject::new_empty();
    put_strs(
        &mut plane,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        &position.map(decimal),
    );
    let mut segment = InMemDicomObject::new_empty();
    put_us(
        &mut segment,
        tags::REFERENCED_SEGMENT_NUMBER,
        f.segment as u16,
    );
    let mut item = InMemDicomObject::new_empty();
    item.put(sequence(tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]));
    item.put(sequence(tags::FRAME_CONTENT_SEQUENCE, vec![content]));
    item.put(sequence(tags::PLANE_POSITION_SEQUENCE, vec![plane]));
    item.put(sequence(
        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
        vec![segment],
    ));
    item
}

/// The source series and its instances (common instance reference module).
fn references(source: &SeriesSource, refs: &[(String, String)]) -> DataElement<InMemDicomObject> {
    let instances = refs
        .iter()
        .map(|(class, instance)| {
            let mut item = InMemDicomObject::new_empty();
            put_str(&mut item, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
            put_str(
                &mut item,
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                instance,
            );
            item
        })
        .collect();
    let mut series = InMemDicomObject::new_empty();
    put_str(
        &mut series,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &source.series.uid,
    );
    series.put(sequence(tags::REFERENCED_INSTANCE_SEQUENCE, instances));
    sequence(tags::REFERENCED_SERIES_SEQUENCE, vec![series])
}
