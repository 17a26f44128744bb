use std::path::PathBuf;

/// Errors from reading model files. Every variant names the file; tensor-level errors name the tensor.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is malformed: truncated, corrupt, lying about sizes.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A tensor is missing, has the wrong shape or an unsupported type.
    #[error("{path}: tensor '{tensor}': {msg}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
    /// The model is well-formed but lowbit cannot run it (unknown architecture, missing tokenizer, ...).
    #[error("{path}: {msg}")]
    Unsupported { path: PathBuf, msg: String },
    #[error("{0}")]
    Other(String),
}

impl ModelError {
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        ModelError::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            msg: msg.into(),
        }
    }
    pub fn unsupported(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Unsupported {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
