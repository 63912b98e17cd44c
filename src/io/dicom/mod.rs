//! DICOM in and out: studies of several series, series read as volumes (compressed
//! transfer syntaxes included), and a guard against lengths a file does not back.

mod frame;
pub mod guard;
pub mod seg;
pub mod seg_labels;
pub mod series;
pub mod study;

pub use series::{read, read_series, read_source, SeriesSource};
pub use study::{Series, SeriesChoice};
