//! Why the gateway cannot serve ([`GatewayError`]), and why a health check is
//! refused ([`HealthError`]). Failures of a single call are `mesh_kit`'s
//! `EdgeError`, turned into a status by `mesh_kit::to_status`.

use mesh_kit::RpcError;
use tonic::Code;

/// Why [`crate::serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The settings are invalid; each line names its setting.
    #[error(transparent)]
    Config(#[from] mesh_kit::ConfigError),
    /// The health channel to an upstream could not be built.
    #[error("health channel to `{service}`: {source}")]
    HealthChannel {
        /// The service whose upstream it is.
        service: &'static str,
        /// What tonic refused.
        source: tonic::transport::Error,
    },
    /// Reflection could not load a descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Why `grpc.health.v1.Health` refuses a check.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HealthError {
    /// Neither the whole mesh (`""`) nor a service the gateway routes; the
    /// health protocol answers `NOT_FOUND`.
    #[error("service `{service}` has no health status at this gateway")]
    UnknownService { service: String },
}

impl RpcError for HealthError {
    fn code(&self) -> Code {
        match self {
            Self::UnknownService { .. } => Code::NotFound,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::UnknownService { .. } => "UNKNOWN_SERVICE",
        }
    }

    fn domain(&self) -> &'static str {
        "mesh.gateway"
    }
}
