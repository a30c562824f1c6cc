//! Operator errors. The graph layer wraps them with the node's index, type and name.

/// Why an operator could not be built, inferred or evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpError {
    /// An argument is missing, has the wrong field, or an invalid value.
    #[error("argument `{name}`: {msg}")]
    BadArg {
        /// Argument name.
        name: String,
        /// What is wrong with it.
        msg: String,
    },
    /// Input shapes do not fit the operator.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An input has an element type the operator does not accept.
    #[error("wrong element type: {0}")]
    DType(String),
    /// Wrong number of inputs or outputs.
    #[error("{0}")]
    Arity(String),
    /// The operator (or this configuration of it) is not implemented.
    #[error("not supported: {0}")]
    Unsupported(String),
}

/// Shorthand for results of operator code.
pub type OpResult<T> = Result<T, OpError>;
