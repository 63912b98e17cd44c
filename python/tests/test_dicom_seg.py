"""`msa predict-volume --out seg.dcm`: a DICOM Segmentation read back by highdicom.

A two-series study is written here with pydicom (the series to segment re-encoded as JPEG
lossless by GDCM). LiteMedSAM segments it once to NIfTI and once to DICOM SEG; highdicom's
reading of the SEG (segments, frames, references, pixels) must equal the NIfTI labels.
dciodvfy (Debian's dicom3tools) checks the SEG against the standard when installed.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import gdcm
import highdicom as hd
import nibabel
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parents[2]
MSA_BIN = os.environ.get("MSA_BIN", str(ROOT / "target" / "release" / "msa"))
SHAPE = (6, 64, 80)  # slices, rows, columns
ORIENTATION = [0.9986295, 0.05233596, 0.0, -0.05233596, 0.9986295, 0.0]  # tilted 3 degrees


def msa(*args):
    done = subprocess.run([MSA_BIN, *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def phantom():
    """A bright ellipsoid and a brighter rod on darker tissue, in HU."""
    k, r, c = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    inside = ((r - 30) / 14) ** 2 + ((c - 42) / 18) ** 2 + ((k - 2.5) / 3) ** 2 < 1
    rod = (r - 53) ** 2 + (c - 14) ** 2 < 36
    rng = np.random.default_rng(3)
    hu = np.where(inside, 180, np.where(rod, 400, -20)) + rng.normal(0, 8, SHAPE)
    return hu.round().astype(np.int16)


def write_series(folder, study, frame_of_reference, number, hu, compress):
    folder.mkdir(parents=True)
    series = generate_uid()
    for k in range(hu.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Ellipsoid", "P1", "", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, "20261206", "120000", "1"
        ds.ReferringPhysicianName, ds.AccessionNumber = "", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series, number, "CT"
        ds.SeriesDescription = f"phantom {number}"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.InstanceNumber = k + 1
        normal = np.cross(ORIENTATION[:3], ORIENTATION[3:])
        ds.ImagePositionPatient = [float(v) for v in np.array([-40.0, -32.5, 10.0]) + 2.5 * k * normal]
        ds.ImageOrientationPatient = ORIENTATION
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.7], 2.5
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (hu[k] + 1024).astype(np.int16).tobytes()
        # Files named against slice order, in nested folders.
        path = folder / f"sub{k % 2}" / f"im{(7 * k) % hu.shape[0]}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        if compress:
            reader = gdcm.ImageReader()
            reader.SetFileName(str(path))
            assert reader.Read()
            change = gdcm.ImageChangeTransferSyntax()
            change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
            change.SetInput(reader.GetImage())
            assert change.Change()
            writer = gdcm.ImageWriter()
            writer.SetFileName(str(path))
            writer.SetFile(reader.GetFile())
            writer.SetImage(change.GetOutput())
            assert writer.Write()
    return series


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    study, frame_of_reference = generate_uid(), generate_uid()
    hu = phantom()
    series = write_series(tmp / "study" / "ct", study, frame_of_reference, 3, hu, compress=True)
    write_series(tmp / "study" / "other", study, frame_of_reference, 4, hu[:, ::-1], compress=False)
    prompts = tmp / "prompts.json"
    prompts.write_text(json.dumps({"classes": {
        "1": {"name": "ellipsoid", "box3d": [22, 14, 1, 62, 46, 4]},
        "2": {"name": "rod", "box3d": [5, 44, 0, 23, 62, 5]},
    }}))
    common = ["predict-volume", "--checkpoint", "lite_medsam", "--image", tmp / "study",
              "--series", 3, "--prompts", prompts]
    msa(*common, "--out", tmp / "labels.nii.gz")
    msa(*common, "--out", tmp / "seg.dcm")
    return tmp, series


def test_a_study_of_several_series_needs_one_named(segmented):
    tmp, _ = segmented
    done = subprocess.run([MSA_BIN, "info", tmp / "study"], capture_output=True, text=True)
    assert done.returncode == 0 and "2 series" in done.stdout, done.stdout + done.stderr


def test_highdicom_reads_what_the_nifti_labels_hold(segmented):
    tmp, series = segmented
    labels = np.asarray(nibabel.load(tmp / "labels.nii.gz").dataobj)  # (columns, rows, slices)
    assert (labels == 1).sum() > 100 and (labels == 2).sum() > 0, np.unique(labels, return_counts=True)
    seg = hd.seg.segread(tmp / "seg.dcm")
    assert seg.SegmentationType == "BINARY"
    assert seg.number_of_segments == 2
    names = [seg.get_segment_description(n).SegmentLabel for n in (1, 2)]
    assert names == ["ellipsoid", "rod"]
    for n in (1, 2):
        d = seg.get_segment_description(n)
        assert d.segmented_property_category.value == "91723000"
        assert d.segmented_property_type.value == "85756007"
        assert d.algorithm_identification[0].AlgorithmName == "msa"
        assert d.algorithm_identification[0].AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    # References: the source series, every instance, its frame of reference and study.
    sources = sorted(p for p in (tmp / "study" / "ct").rglob("*.dcm"))
    source = [pydicom.dcmread(p, stop_before_pixels=True) for p in sources]
    normal = np.cross(ORIENTATION[:3], ORIENTATION[3:])
    source.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
    uids = [d.SOPInstanceUID for d in source]
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert seg.PatientID == "P1" and seg.Modality == "SEG"
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == set(uids)
    # Per-frame positions are the source slices' positions.
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = uids.index(uid)
        np.testing.assert_allclose(
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in source[k].ImagePositionPatient], atol=1e-4)
    # Pixels, through highdicom, slice by slice in source order.
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True)
    assert pixels.shape == (SHAPE[0], SHAPE[1], SHAPE[2])
    assert np.array_equal(pixels, np.transpose(labels, (2, 1, 0)))


def test_dciodvfy_finds_no_errors(segmented):
    tmp, _ = segmented
    assert shutil.which("dciodvfy"), "dciodvfy (Debian's dicom3tools, installed by .ci/run) is missing"
    done = subprocess.run(["dciodvfy", tmp / "seg.dcm"], capture_output=True, text=True)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)


def test_eval_takes_a_seg_that_highdicom_wrote_as_labels(segmented):
    """The NIfTI labels become a SEG written by highdicom; `msa eval` on the DICOM series
    with that SEG scores exactly as on NIfTI copies of the series and labels."""
    tmp, _ = segmented
    labels = np.asarray(nibabel.load(tmp / "labels.nii.gz").dataobj)
    sources = [pydicom.dcmread(p) for p in sorted((tmp / "study" / "ct").rglob("*.dcm"))]
    normal = np.cross(ORIENTATION[:3], ORIENTATION[3:])
    sources.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=name,
            segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
            segmented_property_type=hd.sr.CodedConcept("85756007", "SCT", "Tissue"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, name in ((1, "ellipsoid"), (2, "rod"))
    ]
    theirs = hd.seg.Segmentation(
        source_images=sources, pixel_array=np.transpose(labels, (2, 1, 0)).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=9, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="highdicom", manufacturer_model_name="test", software_versions="0",
        device_serial_number="1")
    theirs.save_as(tmp / "highdicom-seg.dcm")
    # The case id (the folder's or file's name) seeds the prompts' jitter: both are "ct".
    msa("convert", tmp / "study", tmp / "ct.nii.gz", "--series", 3)
    scores = {}
    # The DICOM case names its study's series in dataset.json; its id is the folder's name.
    (tmp / "ct").symlink_to(tmp / "study", target_is_directory=True)
    for name, entry in (("dicom", {"image": str(tmp / "ct"), "series": "3",
                                   "label": str(tmp / "highdicom-seg.dcm")}),
                        ("nifti", {"image": str(tmp / "ct.nii.gz"), "label": str(tmp / "labels.nii.gz")})):
        data = tmp / f"data-{name}"
        data.mkdir()
        (data / "dataset.json").write_text(json.dumps({
            "labels": {"0": "background", "1": "ellipsoid", "2": "rod"}, "modality": {"0": "CT"},
            "training": [entry]}))
        msa("eval", "--checkpoint", "lite_medsam", "--data", data, "--dataset", "decathlon",
            "--prompt", "box", "--out", tmp / f"eval-{name}")
        scores[name] = json.loads((tmp / f"eval-{name}" / "summary.json").read_text())
    assert scores["dicom"]["n_cases"] == 1 and scores["dicom"]["dice"]["mean"] > 0.5
    assert scores["dicom"] == scores["nifti"]
