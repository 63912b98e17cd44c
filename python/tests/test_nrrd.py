"""NRRD read and written by `msa::io::nrrd`, checked against pynrrd, a reader we did not write.

The example binary `nrrd_roundtrip` (cargo build --release --example nrrd_roundtrip) reads a
file, prints one JSON line with the dims, spacing and RAS affine it found, and writes the
values back as float32 (gzip unless --raw; uint8 with --labels). pynrrd writes the inputs and
reads the copies. Our affine is in RAS, pynrrd's headers in left-posterior-superior: the two
differ by the sign of the first two world axes.
"""

import json
import os
import subprocess
from pathlib import Path

import nrrd
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(
    os.environ.get(
        "NRRD_ROUNDTRIP_BIN", ROOT / "target" / "release" / "examples" / "nrrd_roundtrip"
    )
)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
SHAPE = (7, 5, 4)


@pytest.fixture(scope="module")
def roundtrip_bin():
    if not BIN.is_file():
        pytest.fail(
            f"{BIN} is missing: build it with `cargo build --release --example nrrd_roundtrip` "
            "or point NRRD_ROUNDTRIP_BIN at it"
        )
    return BIN


def run(binary, *args):
    env = {**os.environ, "RUST_BACKTRACE": "0"}
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, env=env)


def roundtrip(binary, src, dst, *flags):
    done = run(binary, src, dst, *flags)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def rotation(a, b, c):
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


def lps_header(encoding):
    """An oblique grid with voxels of 0.8 x 1.25 x 3 mm; `space directions` has one row per
    axis (pynrrd's convention)."""
    directions = (rotation(0.4, -0.25, 0.1) * np.array([0.8, 1.25, 3.0])).T
    return {
        "space": "left-posterior-superior",
        "space directions": directions,
        "space origin": np.array([-101.5, 87.25, -33.0]),
        "kinds": ["domain", "domain", "domain"],
        "encoding": encoding,
    }


def sample_data(dtype):
    rng = np.random.default_rng(7)
    if np.dtype(dtype).kind == "f":
        data = (rng.standard_normal(SHAPE) * 300).astype(dtype)
        data.flat[0] = -0.0
        data.flat[1] = np.float32(1e-40)  # subnormal
        data.flat[2] = np.float32(3.4e38)
        return data
    info = np.iinfo(dtype)
    data = rng.integers(info.min, info.max, size=SHAPE, endpoint=True).astype(dtype)
    data.flat[0], data.flat[1] = info.min, info.max
    return data


def f32(x):
    return np.asarray(x, dtype=np.float32)


def ras_of(header):
    """pynrrd's LPS header as our RAS affine (4 x 4)."""
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ np.asarray(header["space directions"], dtype=float).T
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(header["space origin"], dtype=float)
    return affine


CASES = [
    ("gzip", "<i2", False),
    ("raw", "<i2", False),
    ("gzip", "<f4", False),
    ("raw", "<f4", False),
    ("raw", ">i2", False),
    ("gzip", ">f4", False),
    ("ascii", "<i2", False),
    ("raw", "<u2", True),
    ("gzip", "<f4", True),
]


@pytest.mark.parametrize("encoding,dtype,detached", CASES)
def test_files_pynrrd_writes_read_the_same(roundtrip_bin, tmp_path, encoding, dtype, detached):
    data = sample_data(dtype)
    header = lps_header(encoding)
    src = tmp_path / ("in.nhdr" if detached else "in.nrrd")
    nrrd.write(str(src), data, header, detached_header=detached)
    assert detached == (len(list(tmp_path.iterdir())) == 2)

    info = roundtrip(roundtrip_bin, src, tmp_path / "copy.nrrd")
    assert info["dims"] == list(SHAPE)
    np.testing.assert_allclose(np.array(info["affine"]), ras_of(header), rtol=0, atol=1e-4)
    spacing = np.linalg.norm(header["space directions"], axis=1)
    np.testing.assert_allclose(info["spacing"], spacing, rtol=1e-6)

    back, back_header = nrrd.read(str(tmp_path / "copy.nrrd"))
    assert back.dtype == np.float32 and back.shape == SHAPE
    assert np.array_equal(back.view(np.uint32), data.astype(np.float32).view(np.uint32))
    assert back_header["encoding"] == "gzip"
    assert back_header["space"] == "left-posterior-superior"
    # Our copy carries the geometry as float32.
    assert np.array_equal(f32(back_header["space directions"]), f32(header["space directions"]))
    assert np.array_equal(f32(back_header["space origin"]), f32(header["space origin"]))


@pytest.mark.parametrize("flags", [(), ("--raw",), ("--labels",), ("--raw", "--labels")])
def test_files_we_write_read_in_pynrrd_with_our_geometry(roundtrip_bin, tmp_path, flags):
    data = sample_data("<u1").astype(np.float32) if "--labels" in flags else sample_data("<f4")
    src = tmp_path / "in.nrrd"
    nrrd.write(str(src), data, lps_header("raw"))
    ours = tmp_path / "ours.nrrd"
    info = roundtrip(roundtrip_bin, src, ours, *flags)

    back, header = nrrd.read(str(ours))
    assert back.dtype == (np.uint8 if "--labels" in flags else np.float32)
    assert back.shape == tuple(info["dims"]) == SHAPE
    assert np.array_equal(back.astype(np.float32).view(np.uint32), data.view(np.uint32))
    assert header["encoding"] == ("raw" if "--raw" in flags else "gzip")
    assert header["space"] == "left-posterior-superior"
    assert list(header["kinds"]) == ["domain", "domain", "domain"]
    # The header holds our float32 affine exactly, in LPS.
    affine = np.array(info["affine"], dtype=float)
    directions = (LPS_TO_RAS @ affine[:3, :3]).T
    assert np.array_equal(f32(header["space directions"]), f32(directions))
    assert np.array_equal(f32(header["space origin"]), f32(LPS_TO_RAS @ affine[:3, 3]))
    assert np.array_equal(affine[3], [0, 0, 0, 1])


def test_a_truncated_file_is_refused_naming_it(roundtrip_bin, tmp_path):
    src = tmp_path / "cut.nrrd"
    nrrd.write(str(src), sample_data("<f4"), lps_header("gzip"))
    whole = src.read_bytes()
    src.write_bytes(whole[: len(whole) - 40])
    done = run(roundtrip_bin, src, tmp_path / "out.nrrd")
    assert done.returncode != 0
    assert "truncated" in done.stderr and "cut.nrrd" in done.stderr, done.stderr
    assert not (tmp_path / "out.nrrd").exists()


def test_msa_convert_writes_nrrd_that_pynrrd_reads_like_the_nifti(tmp_path):
    """`msa convert` of a DICOM series to .nrrd and to .nii.gz: pynrrd and nibabel read the
    same values, and the same geometry once LPS is turned to RAS."""
    import nibabel
    from pydicom.data import get_testdata_file

    msa_bin = os.environ.get("MSA_BIN", str(ROOT / "target" / "release" / "msa"))
    source = get_testdata_file("CT_small.dcm")
    for out in ("ct.nrrd", "ct.nii.gz"):
        done = subprocess.run([msa_bin, "convert", source, tmp_path / out], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    data, header = nrrd.read(str(tmp_path / "ct.nrrd"))
    nii = nibabel.load(tmp_path / "ct.nii.gz")
    assert np.array_equal(data.astype(np.float64), np.asarray(nii.dataobj, dtype=np.float64))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(header["space directions"], dtype=float).T
    lps[:3, 3] = header["space origin"]
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(np.diag([-1, -1, 1, 1]) @ lps, nii.affine, atol=1e-4)
