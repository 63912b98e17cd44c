"""DICOM read by `msa`, checked against readers we did not write.

The files come from pydicom's own test data (installed by pip) and from GDCM
(python-gdcm), which re-encodes them in the compressed transfer syntaxes. pydicom, with
the pylibjpeg decoders, gives the reference pixel values; nibabel reads the NIfTI that
`msa convert` writes.
"""

import os
import shutil
import subprocess
from pathlib import Path

import gdcm
import nibabel
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

ROOT = Path(__file__).resolve().parents[2]
MSA_BIN = os.environ.get("MSA_BIN", str(ROOT / "target" / "release" / "msa"))
TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent


def msa(*args):
    return subprocess.run([MSA_BIN, *map(str, args)], capture_output=True, text=True)


def transcode(src, dst, syntax):
    """GDCM re-encodes `src` in transfer syntax `syntax` (a gdcm.TransferSyntax code)."""
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read(), src
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    change.SetInput(reader.GetImage())
    assert change.Change(), (src, syntax)
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), dst
    return dst


def reference(path):
    """pydicom's decoded values after the modality rescale, (rows, columns)."""
    ds = pydicom.dcmread(path)
    values = ds.pixel_array.astype(np.float64)
    return values * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def converted(path, tmp_path, *extra):
    out = tmp_path / (Path(path).name + ".nii.gz")
    done = msa("convert", path, out, *extra)
    assert done.returncode == 0, done.stderr
    image = nibabel.load(out)
    return np.asarray(image.dataobj, dtype=np.float64), image.affine


TS = gdcm.TransferSyntax
# (source in pydicom's test data, how it is encoded, largest difference allowed)
CASES = [
    ("CT_small.dcm", None, 0),
    ("MR_small.dcm", None, 0),
    ("MR_small_implicit.dcm", None, 0),
    ("MR_small_bigendian.dcm", None, 0),
    ("MR_small_RLE.dcm", None, 0),
    ("MR_small_jp2klossless.dcm", None, 0),
    ("image_dfl.dcm", None, 0),  # deflated explicit VR little endian
    ("693_J2KI.dcm", None, 0),  # JPEG 2000, irreversible: both decoders are OpenJPEG
    ("CT_small.dcm", TS.JPEGLosslessProcess14_1, 0),
    ("CT_small.dcm", TS.JPEGLosslessProcess14, 0),
    ("CT_small.dcm", TS.JPEG2000Lossless, 0),
    ("CT_small.dcm", TS.RLELossless, 0),
    ("MR_small.dcm", TS.JPEGLosslessProcess14_1, 0),
    # Lossy JPEG: two IDCT implementations may round a level apart.
    ("image_dfl.dcm", TS.JPEGBaselineProcess1, 1),
    ("image_dfl.dcm", TS.JPEGExtendedProcess2_4, 1),
    ("image_dfl.dcm", TS.JPEG2000, 0),
]


@pytest.mark.parametrize("name,syntax,tolerance", CASES)
def test_pixels_equal_pydicom(name, syntax, tolerance, tmp_path):
    path = TEST_FILES / name
    if syntax is not None:
        path = transcode(path, tmp_path / f"{syntax}-{name}", syntax)
    expected = reference(path)
    ours, _ = converted(path, tmp_path)
    assert ours.shape == (expected.shape[1], expected.shape[0], 1)
    diff = np.abs(ours[:, :, 0].T - expected).max()
    assert diff <= tolerance, f"{name} as {syntax}: largest difference {diff}"


def test_an_unsupported_syntax_is_named_with_the_file(tmp_path):
    path = TEST_FILES / "MR_small_jpeg_ls_lossless.dcm"
    done = msa("convert", path, tmp_path / "out.nii.gz")
    assert done.returncode == 1
    assert "1.2.840.10008.1.2.4.80" in done.stderr and "JPEG-LS" in done.stderr, done.stderr
    assert str(path) in done.stderr, done.stderr
    twelve_bit = TEST_FILES / "JPGExtended.dcm"
    done = msa("convert", twelve_bit, tmp_path / "out.nii.gz")
    assert done.returncode == 1 and str(twelve_bit) in done.stderr, done.stderr
    assert "SamplePrecision(12)" in done.stderr, done.stderr


def test_truncated_pixel_data_is_refused(tmp_path):
    path = TEST_FILES / "MR_truncated.dcm"
    done = msa("convert", path, tmp_path / "out.nii.gz")
    assert done.returncode == 1 and str(path) in done.stderr, done.stderr
    assert "claims 8192 bytes" in done.stderr, done.stderr
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_truncated_compressed_fragment_is_refused(tmp_path):
    whole = transcode(TEST_FILES / "CT_small.dcm", tmp_path / "whole.dcm", TS.JPEGLosslessProcess14_1)
    data = whole.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - len(data) // 3])
    done = msa("convert", cut, tmp_path / "out.nii.gz")
    assert done.returncode == 1 and str(cut) in done.stderr, done.stderr


@pytest.mark.parametrize("syntax", [TS.JPEGLosslessProcess14_1, TS.JPEGBaselineProcess1, TS.JPEG2000Lossless])
def test_a_frame_cut_inside_a_well_formed_file_is_refused(syntax, tmp_path):
    """The file's structure is intact (pydicom re-encapsulates the cut frame); only the
    codestream lacks its last third. Decoders fill that in; msa refuses it."""
    source = "image_dfl.dcm" if syntax == TS.JPEGBaselineProcess1 else "CT_small.dcm"
    whole = transcode(TEST_FILES / source, tmp_path / "whole.dcm", syntax)
    ds = pydicom.dcmread(whole)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = pydicom.encaps.encapsulate([frame[: 2 * len(frame) // 3]])
    cut = tmp_path / "cut.dcm"
    ds.save_as(cut)
    done = msa("convert", cut, tmp_path / "out.nii.gz")
    assert done.returncode == 1 and str(cut) in done.stderr, done.stderr
    assert "truncated" in done.stderr, done.stderr


def series_reference(files):
    """The slices of one series stacked along the slice normal, and its RAS affine."""
    slices = [pydicom.dcmread(f) for f in files]
    o = np.array(slices[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(o[:3], o[3:])
    slices.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
    stack = np.stack([reference_of(d) for d in slices], axis=-1)
    first = slices[0]
    positions = [np.dot(normal, np.array(d.ImagePositionPatient, dtype=float)) for d in slices]
    dz = float(np.median(np.diff(positions))) if len(slices) > 1 else float(first.SliceThickness)
    dr, dc = (float(v) for v in first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = o[:3] * dc
    lps[:3, 1] = o[3:] * dr
    lps[:3, 2] = normal * dz
    lps[:3, 3] = np.array(first.ImagePositionPatient, dtype=float)
    return stack, np.diag([-1, -1, 1, 1]) @ lps


def reference_of(ds):
    values = ds.pixel_array.astype(np.float64).T
    return values * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


@pytest.fixture
def study(tmp_path):
    """pydicom's test study (13 series in nested folders), with the 5-slice CT series
    re-encoded as JPEG lossless (SV1) by GDCM."""
    root = tmp_path / "study"
    shutil.copytree(TEST_FILES / "dicomdirtests", root)
    for f in sorted((root / "98892001" / "CT5N").iterdir()):
        transcode(f, f, TS.JPEGLosslessProcess14_1)
    return root


def test_info_lists_the_series_of_a_study(study):
    done = msa("info", study)
    assert done.returncode == 0, done.stderr
    assert "13 series" in done.stdout, done.stdout
    lines = [line for line in done.stdout.splitlines() if "SmartScore" in line]
    assert len(lines) == 1 and " CT " in lines[0] and " 5 " in lines[0], done.stdout


def test_a_study_needs_a_series_and_reads_the_one_chosen(study, tmp_path):
    done = msa("convert", study, tmp_path / "out.nii.gz")
    assert done.returncode == 1
    assert "holds 13 series" in done.stderr and "SmartScore" in done.stderr, done.stderr
    files = [f for f in study.rglob("*") if f.is_file() and f.name != "DICOMDIR"]
    for choice, key in ((5, "SeriesNumber"),):
        members = []
        for f in files:
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception:
                continue
            if ds.get(key) == choice:
                members.append(f)
        if choice == 5:
            syntaxes = {str(pydicom.dcmread(f).file_meta.TransferSyntaxUID) for f in members}
            assert syntaxes == {"1.2.840.10008.1.2.4.70"}, syntaxes
        expected, affine = series_reference(members)
        ours, our_affine = converted(study, tmp_path, "--series", choice)
        assert ours.shape == expected.shape
        assert np.array_equal(ours, expected)
        np.testing.assert_allclose(our_affine, affine, atol=1e-4)
    # Chosen by UID (number 2 is not unique): four slices, 1.25 mm apart but for a gap of
    # 202.5 mm, which is not one volume.
    brain = "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2"
    done = msa("convert", study, tmp_path / "out.nii.gz", "--series", brain)
    assert done.returncode == 1 and "missing or doubled slice" in done.stderr, done.stderr
    done = msa("convert", study, tmp_path / "out.nii.gz", "--series", 2)
    assert done.returncode == 1 and "several series match number 2" in done.stderr, done.stderr
    # Projections at different angles are not a volume.
    done = msa("convert", study, tmp_path / "out.nii.gz", "--series", 700)
    assert done.returncode == 1 and "not a volume" in done.stderr, done.stderr
