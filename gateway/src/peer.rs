//! The caller's address, put in every request's extensions by the
//! connection that received it (`connection::ConnectionService`), for rate
//! limits and the access log.

use std::net::SocketAddr;

/// The remote address of the caller connection a request came on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);
