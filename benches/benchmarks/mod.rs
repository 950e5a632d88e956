pub mod kernels;
pub mod layers;
pub mod train_step;
