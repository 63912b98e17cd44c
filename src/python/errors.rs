//! msa's errors as Python exceptions, their messages kept whole.

use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

/// `FileNotFoundError` when a file was not there, `RuntimeError` otherwise; the message is
/// msa's whole chain ("cannot read image x.png: No such file or directory").
pub fn from_anyhow(e: anyhow::Error) -> PyErr {
    let message = format!("{e:#}");
    let missing = e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    });
    match missing {
        true => PyFileNotFoundError::new_err(message),
        false => PyRuntimeError::new_err(message),
    }
}

/// Input the caller must fix: a shape, a dtype, a prompt, a value.
pub fn value_error(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

/// An error from checking the caller's input as a `ValueError` (a missing file it names
/// stays a `FileNotFoundError`).
pub fn invalid(e: anyhow::Error) -> PyErr {
    let missing = e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    });
    match missing {
        true => from_anyhow(e),
        false => value_error(format!("{e:#}")),
    }
}
