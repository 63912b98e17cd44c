//! The Python module `msa._msa`: a thin layer of numpy in, numpy out over the library, built
//! by maturin with the `python` feature (pyproject.toml). The GIL is released while Rust
//! computes. Errors become `FileNotFoundError` (a missing file), `ValueError` (bad shapes,
//! dtypes, prompts or values) or `RuntimeError`, each with msa's message.

mod errors;
mod evaluate;
mod image;
mod model;
mod train;
mod volume;

use pyo3::prelude::*;

/// The path of a named model (`lite_medsam`) in msa's cache, fetched on first use.
#[pyfunction]
fn fetch(py: Python<'_>, name: &str) -> PyResult<String> {
    let named = crate::weights::registry::find(name).ok_or_else(|| {
        errors::value_error(format!(
            "no model named `{name}`; `msa fetch --list` shows the names"
        ))
    })?;
    let path = py
        .detach(|| crate::weights::registry::fetch(named, false))
        .map_err(errors::from_anyhow)?;
    Ok(path.display().to_string())
}

#[pymodule]
fn _msa(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fetch, m)?)?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Embedding>()?;
    m.add_class::<volume::Volume>()?;
    m.add_function(wrap_pyfunction!(volume::read_volume, m)?)?;
    m.add_function(wrap_pyfunction!(volume::write_labels, m)?)?;
    m.add_function(wrap_pyfunction!(train::train, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate::evaluate, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
