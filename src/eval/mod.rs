//! Evaluation: metrics (reports come with `msa eval`).

pub mod evaluate;
pub mod metrics;
pub mod volume;
