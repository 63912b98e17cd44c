//! Data: generated samples (real dataset layouts come with training).

pub mod synthetic;
