//! End-to-end tests of the whole mesh: each test starts the real `mesh up`
//! binary on ephemeral ports and talks to it only through the gateway, as a
//! platform engineer would, with generated clients, grpcurl and an OTLP
//! receiver.
//!
//! # Layout
//! - `harness`: [`harness::TestMesh`], a running `mesh up` child process.
//! - `cache`: Cache calls through the gateway, bad input, the memory bound.
//! - `correlation`: correlation ids echoed, minted and carried in errors.
//! - `grpcurl`: reflection and a call with the real grpcurl binary.
//! - `otlp`: spans of the gateway and the cache reach an OTLP receiver.
//! - `services`: every service of the mesh answers through the gateway.

mod cache;
mod correlation;
mod grpcurl;
mod harness;
mod otlp;
mod services;
