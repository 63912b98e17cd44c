//! Training: losses (the loop, schedule and checkpoints come next).

pub mod loss;
