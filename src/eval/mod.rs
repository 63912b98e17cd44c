//! Evaluation: metrics (reports come with `msa eval`).

pub mod metrics;
