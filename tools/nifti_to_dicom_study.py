"""A NIfTI volume as a compressed DICOM study, for trying msa's DICOM path on real data:
the volume as an MR series re-encoded JPEG lossless (SV1) by GDCM, and beside it a second
series (the same voxels, rows reversed and slices in reverse file order) so that the study
needs `--series`.

    python tools/nifti_to_dicom_study.py IMAGE.nii.gz OUT_FOLDER
"""

import sys
from pathlib import Path

import gdcm
import nibabel
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def write_series(folder, values, affine, number, study, frame_of_reference, flip_rows):
    """values: (nx, ny, nz) as nibabel gives them; RAS affine."""
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1, -1, 1, 1]) @ affine
    series = generate_uid()
    nx, ny, nz = values.shape
    for k in range(nz):
        plane = values[:, :, k].T  # rows along y, columns along x
        col_dir, row_dir = lps[:3, 0], lps[:3, 1]
        origin = lps[:3, 3] + lps[:3, 2] * k
        if flip_rows:
            plane = plane[::-1]
            origin = origin + row_dir * (ny - 1)
            row_dir = -row_dir
        dx, dy = np.linalg.norm(col_dir), np.linalg.norm(row_dir)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "MSD^Hippocampus", "hippo", "", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, "20261206", "120000", "1"
        ds.ReferringPhysicianName, ds.AccessionNumber = "", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series, number, "MR"
        ds.SeriesDescription = "hippocampus" + (" rows reversed" if flip_rows else "")
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in origin]
        ds.ImageOrientationPatient = [float(v) for v in (*(col_dir / dx), *(row_dir / dy))]
        ds.PixelSpacing = [float(dy), float(dx)]
        ds.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(plane).round().astype(np.uint16).tobytes()
        name = folder / f"{(k * 7919) % 100000:05d}.dcm"  # file order unlike slice order
        ds.save_as(name, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(name))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(name))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()


if __name__ == "__main__":
    image, out = Path(sys.argv[1]), Path(sys.argv[2])
    nii = nibabel.load(image)
    values = np.asarray(nii.dataobj, dtype=np.float64)
    study, frame_of_reference = generate_uid(), generate_uid()
    write_series(out / "series1", values, nii.affine, 1, study, frame_of_reference, False)
    write_series(out / "series2", values, nii.affine, 2, study, frame_of_reference, True)
    print(f"{out}: 2 series of {values.shape[2]} slices, JPEG lossless (SV1)")
