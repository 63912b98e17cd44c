//! Training: the loop with its run folder, on 2D images or on volumes; losses, optimiser,
//! batches and curves.

pub mod batches;
pub mod config;
pub mod curves;
mod images;
pub mod launch;
pub mod lock;
pub mod loss;
pub mod loss_scale;
#[cfg(feature = "cuda")]
mod nccl;
pub mod optim;
pub mod parallel;
pub mod phase;
mod prompting;
pub mod run;
mod run_folder;
pub mod step;
pub mod tcp_group;
mod volume;
