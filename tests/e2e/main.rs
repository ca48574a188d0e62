//! End-to-end tests of the whole mesh: each test starts the real `mesh up`
//! binary on ephemeral ports and talks to it only through the gateway, as a
//! platform engineer would, with generated clients, grpcurl and an OTLP
//! receiver.
//!
//! # Layout
//! - `abuse`: HTTP/2 and gRPC abuse of the gateway: rapid reset, header floods, bad frames.
//! - `bulkops`: a bulk job through the gateway and `mesh bulk`; kill -9 mid-job.
//! - `harness`: [`harness::TestMesh`], a running `mesh up` child process.
//! - `cache`: Cache calls through the gateway, bad input, the memory bound.
//! - `correlation`: correlation ids echoed, minted and carried in errors.
//! - `errors_catalogue`: every service's bad inputs and their statuses, checked against `docs/errors.md`.
//! - `grpcurl`: reflection and a call with the real grpcurl binary.
//! - `otlp`: spans of the gateway and the cache reach an OTLP receiver.
//! - `raw_call`: gRPC calls by hand with the `h2` crate, every byte of the answer kept.
//! - `secrets`: no configured secret leaves through answers, logs or spans.
//! - `services`: every service of the mesh answers through the gateway.

mod abuse;
mod bulkops;
mod cache;
mod correlation;
mod errors_catalogue;
mod grpcurl;
mod harness;
mod otlp;
mod raw_call;
mod secrets;
mod services;
