//! Volumes: `msa.read_volume(path)` (NIfTI, or a DICOM series folder), their voxels as a
//! numpy array in the file's voxel order (x, y, k), and `msa.write_labels(path, labels,
//! like=v)` onto the input's grid.

use super::errors::{from_anyhow, value_error};
use super::image::describe;
use crate::io::nifti::{self, NiftiVolume};
use numpy::{PyArray1, PyArray3, PyArrayMethods, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::prelude::*;
use std::path::PathBuf;

/// A volume read from a file, with its geometry.
#[pyclass(module = "msa._msa", frozen)]
pub struct Volume {
    pub inner: NiftiVolume,
}

#[pymethods]
impl Volume {
    /// The voxel values (after the file's scaling) as float32, shape (nx, ny, nz): element
    /// [x, y, k] is voxel (x, y) of slice k, as nibabel's `get_fdata()` has them.
    #[getter]
    fn array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let v = &self.inner.volume;
        to_array(py, v.data.clone(), v.dims)
    }

    /// Voxel index (x, y, k, 1) to world coordinates in mm, 4 x 4.
    #[getter]
    fn affine<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let a = self.inner.volume.affine;
        let flat: Vec<f64> = a.iter().flatten().map(|&v| v as f64).collect();
        Ok(PyArray1::from_vec(py, flat).reshape([4, 4])?.into_any())
    }

    /// Voxel size in mm along the three axes.
    #[getter]
    fn spacing(&self) -> (f32, f32, f32) {
        let [x, y, z] = self.inner.volume.spacing;
        (x, y, z)
    }

    #[getter]
    fn shape(&self) -> (usize, usize, usize) {
        let [x, y, z] = self.inner.volume.dims;
        (x, y, z)
    }

    /// The voxels as the 8-bit gray the model sees them, shape (nx, ny, nz): `window` (a CT
    /// window `LO,HI`, its name, or `mri`) when given, else chosen from the values, as
    /// `msa predict-volume` does.
    #[pyo3(signature = (window=None))]
    fn to_uint8<'py>(
        &self,
        py: Python<'py>,
        window: Option<&str>,
    ) -> PyResult<Bound<'py, PyArray3<u8>>> {
        let v = &self.inner.volume;
        let scaling =
            crate::infer::volume::SliceScaling::of(v, window).map_err(super::errors::invalid)?;
        to_array(
            py,
            crate::io::Intensity::to_gray(&v.data, scaling.range),
            v.dims,
        )
    }

    fn __repr__(&self) -> String {
        let v = &self.inner.volume;
        format!("Volume(shape={:?}, spacing={:?})", v.dims, v.spacing)
    }
}

/// The volume in `path`: a NIfTI file, or DICOM (a folder holding a study, or one file);
/// `series` (a number or a UID) picks one of several.
#[pyfunction]
#[pyo3(signature = (path, series=None))]
pub fn read_volume(py: Python<'_>, path: PathBuf, series: Option<String>) -> PyResult<Volume> {
    let series = series.as_deref().map(crate::io::dicom::SeriesChoice::parse);
    let inner = py
        .detach(|| crate::io::volume_file::read(&path, series.as_ref()))
        .map_err(from_anyhow)?;
    Ok(Volume { inner })
}

/// Writes uint8 `labels` of shape (nx, ny, nz) as NIfTI on the grid and affine of `like`.
#[pyfunction]
pub fn write_labels(
    py: Python<'_>,
    path: PathBuf,
    labels: &Bound<'_, PyAny>,
    like: &Bound<'_, Volume>,
) -> PyResult<()> {
    let like = &like.get().inner;
    let labels: PyReadonlyArray3<'_, u8> = labels.extract().map_err(|_| {
        value_error(format!(
            "labels: expected a uint8 array of shape {:?}, got {}",
            like.volume.dims,
            describe(labels)
        ))
    })?;
    let dims = like.volume.dims;
    if labels.shape() != dims {
        return Err(value_error(format!(
            "labels: shape {:?} does not match the volume's {dims:?}",
            labels.shape()
        )));
    }
    let flat = x_fastest(&labels);
    py.detach(|| nifti::write_labels(&path, &flat, like))
        .map_err(from_anyhow)
}

/// The values of an (nx, ny, nz) array, x fastest (`Volume::data`'s order).
fn x_fastest<T: numpy::Element + Copy>(a: &PyReadonlyArray3<'_, T>) -> Vec<T> {
    a.as_array().reversed_axes().iter().copied().collect()
}

/// x-fastest values as an (nx, ny, nz) array.
pub fn to_array<'py, T: numpy::Element>(
    py: Python<'py>,
    values: Vec<T>,
    [nx, ny, nz]: [usize; 3],
) -> PyResult<Bound<'py, PyArray3<T>>> {
    let a = PyArray1::from_vec(py, values).reshape([nz, ny, nx])?;
    Ok(a.transpose()?.cast_into::<PyArray3<T>>()?)
}

/// A bare (nx, ny, nz) array as a volume with 1 mm voxels and an identity affine.
pub fn from_array(array: &Bound<'_, PyAny>) -> PyResult<crate::io::Volume> {
    let a: PyReadonlyArray3<'_, f32> = array
        .call_method1("astype", ("float32",))
        .and_then(|a| a.extract())
        .map_err(|_| {
            value_error(format!(
                "volume: expected a msa.Volume or a 3D numeric array, got {}",
                describe(array)
            ))
        })?;
    let data = x_fastest(&a);
    if data.iter().any(|v| !v.is_finite()) {
        return Err(value_error("volume: holds NaN or infinite values"));
    }
    let s = a.shape();
    let mut affine = [[0f32; 4]; 4];
    for (i, row) in affine.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    Ok(crate::io::Volume {
        dims: [s[0], s[1], s[2]],
        data,
        spacing: [1.0; 3],
        affine,
    })
}
