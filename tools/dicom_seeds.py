"""Seeds for the compressed-DICOM and DICOM SEG fuzz targets, encoded by code we did not
write: msa's synthetic CT slice (fuzz/corpus/dicom/ct.dcm, from `cargo run --release
--example fuzz_seeds`) re-encoded by GDCM and pydicom in every compressed transfer syntax,
and a segmentation of the `dicom_seg` target's series written by highdicom.

    pip install pydicom python-gdcm highdicom numpy
    python tools/dicom_seeds.py
"""

import sys
import tempfile
from pathlib import Path

import gdcm
import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "fuzz" / "corpus"


def slice_16x16(path, bits):
    """msa's synthetic slice, made 16 x 16 (codecs need a few blocks) and `bits` deep."""
    ds = pydicom.dcmread(CORPUS / "dicom" / "ct.dcm")
    values = (np.arange(256).reshape(16, 16) * 7) % (1 << min(bits, 12))
    ds.Rows, ds.Columns = 16, 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelData = values.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    ds.save_as(path)
    return path


def transcode(src, dst, syntax):
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read(), src
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    change.SetInput(reader.GetImage())
    assert change.Change(), syntax
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), dst


def compressed(out):
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        s16, s8 = slice_16x16(tmp / "s16.dcm", 16), slice_16x16(tmp / "s8.dcm", 8)
        TS = gdcm.TransferSyntax
        for name, src, syntax in [
            ("jpeg-lossless-sv1", s16, TS.JPEGLosslessProcess14_1),
            ("jpeg-lossless", s16, TS.JPEGLosslessProcess14),
            ("jpeg-baseline", s8, TS.JPEGBaselineProcess1),
            ("jpeg-extended", s8, TS.JPEGExtendedProcess2_4),
            ("jpeg-ls-lossless", s16, TS.JPEGLSLossless),
            ("jpeg2000-lossless", s16, TS.JPEG2000Lossless),
            ("jpeg2000", s8, TS.JPEG2000),
            ("rle", s16, TS.RLELossless),
        ]:
            transcode(src, out / f"{name}.dcm", syntax)
        ds = pydicom.dcmread(s16)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(out / "deflated.dcm", enforce_file_format=True)


def highdicom_seg(out):
    """The `dicom_seg` target's series: 3 slices of 6 x 8 at z = 0, 2.5, 5 (written here
    by pydicom from msa's synthetic slice, as the target writes it)."""
    study, frame_of_reference = generate_uid(), generate_uid()
    sources = []
    for k in range(3):
        ds = pydicom.dcmread(CORPUS / "dicom" / "ct.dcm")
        ds.Rows, ds.Columns = 6, 8
        ds.PixelData = np.full((6, 8), k, np.uint16).tobytes()
        ds.SOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [-10, 20, 2.5 * k]
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study, frame_of_reference
        for tag in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
                    "SeriesNumber", "InstanceNumber"):
            if tag not in ds:
                setattr(ds, tag, "1" if tag.endswith("Number") else "")
        sources.append(ds)
    mask = np.zeros((3, 6, 8), np.uint8)
    mask[1, 2:5, 3:7] = 1
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="block",
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=hd.sr.CodedConcept("85756007", "SCT", "Tissue"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=2,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="highdicom",
        manufacturer_model_name="seed", software_versions="0", device_serial_number="1")
    seg.save_as(out / "highdicom-seg.dcm")


if __name__ == "__main__":
    if not (CORPUS / "dicom" / "ct.dcm").exists():
        sys.exit("run `cargo run --release --example fuzz_seeds` first")
    compressed(CORPUS / "dicom_compressed")
    highdicom_seg(CORPUS / "dicom_seg")
    print("seeds written under", CORPUS)
