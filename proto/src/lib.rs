//! The mesh contract: Rust code generated from `proto/mesh/**` and the
//! descriptor sets that reflection serves.
//!
//! Each `mesh.<service>.v1` package is a module (`mesh_proto::cache::v1`)
//! holding its messages, its tonic client and server, and
//! `FILE_DESCRIPTOR_SET` — the package's files plus their imports.
//! `google.rpc.Status` is `tonic_types::pb::Status`, so per-item results use
//! the same error model as whole calls. Generated code is the only thing here.

#![forbid(unsafe_code)]

/// Every mesh package in one encoded `FileDescriptorSet`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mesh_descriptor.bin"));

/// Messages shared by every service (`mesh.common.v1`).
pub mod common {
    /// Version 1 of `mesh.common`.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::pedantic)] // generated code
        tonic::include_proto!("mesh.common.v1");

        /// `mesh.common.v1` and its imports, encoded.
        pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mesh.common.v1.bin"));
    }
}

/// The Cache service (`mesh.cache.v1`).
pub mod cache {
    /// Version 1 of `mesh.cache`.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::pedantic)] // generated code
        tonic::include_proto!("mesh.cache.v1");

        /// `mesh.cache.v1` and its imports, encoded.
        pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mesh.cache.v1.bin"));

        /// The fully qualified service name, as routed by the gateway.
        pub const SERVICE_NAME: &str = "mesh.cache.v1.Cache";
    }
}
