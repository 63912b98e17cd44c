//! Training: losses (the loop, schedule and checkpoints come next).

pub mod batches;
pub mod config;
pub mod curves;
pub mod loss;
pub mod optim;
pub mod run;
