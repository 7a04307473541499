//! The operator's one error type, with stable labels for metrics.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Core(#[from] coupon_core::Error),
    #[error("secret {0}: {1}")]
    Secret(String, String),
    #[error("cannot serialize {0}: {1}")]
    Serialize(String, String),
    #[error("{}: {source}", path.display())]
    Manifest {
        path: std::path::PathBuf,
        source: serde_yaml::Error,
    },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Core(e) => e.label(),
            Self::Secret(..) => "secret",
            Self::Serialize(..) => "serialize",
            Self::Manifest { .. } => "manifest",
            Self::Finalizer(_) => "finalizer",
        }
    }
}
