//! Running a model: the executor, its workspace and the observer hook.

pub mod alloc;
pub mod executor;

pub use executor::{Executor, Observer};
