//! Evaluation: metrics, per-case and per-class reports, and a dataset's test cases scored by
//! a model (`cases`, for `msa eval` and `msa.evaluate`).

pub mod cases;
pub mod clicks;
pub mod evaluate;
pub mod metrics;
pub mod volume;
