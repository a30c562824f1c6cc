//! Running a model: the executor, its workspace and the observer hook.

pub mod executor;

pub use executor::{Executor, Observer};
