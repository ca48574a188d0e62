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

/// The `BulkOps` service (`mesh.bulkops.v1`).
pub mod bulkops {
    /// Version 1 of `mesh.bulkops`.
    pub mod v1 {
        // Generated code; `StartBulkOperationRequest.target_set` is a oneof of a list and a selector.
        #![allow(missing_docs, unreachable_pub, clippy::pedantic, clippy::large_enum_variant)]
        tonic::include_proto!("mesh.bulkops.v1");

        /// `mesh.bulkops.v1` and its imports, encoded.
        pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mesh.bulkops.v1.bin"));

        /// The fully qualified service name, as routed by the gateway.
        pub const SERVICE_NAME: &str = "mesh.bulkops.v1.BulkOps";
    }
}

/// The `DockerOps` service (`mesh.docker.v1`).
pub mod docker {
    /// Version 1 of `mesh.docker`.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::pedantic)] // generated code
        tonic::include_proto!("mesh.docker.v1");

        /// `mesh.docker.v1` and its imports, encoded.
        pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mesh.docker.v1.bin"));

        /// The fully qualified service name, as routed by the gateway.
        pub const SERVICE_NAME: &str = "mesh.docker.v1.DockerOps";
    }
}

/// The `VpnUsers` service (`mesh.vpnusers.v1`).
pub mod vpnusers {
    /// Version 1 of `mesh.vpnusers`.
    pub mod v1 {
        // Generated code; `SetStatusRequest.selector` is a oneof of a filter and an id list.
        #![allow(missing_docs, unreachable_pub, clippy::pedantic, clippy::large_enum_variant)]
        tonic::include_proto!("mesh.vpnusers.v1");

        /// `mesh.vpnusers.v1` and its imports, encoded.
        pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mesh.vpnusers.v1.bin"));

        /// The fully qualified service name, as routed by the gateway.
        pub const SERVICE_NAME: &str = "mesh.vpnusers.v1.VpnUsers";
    }
}

/// The `VirtualminGateway` service (`mesh.virtualmin.v1`).
pub mod virtualmin {
    /// Version 1 of `mesh.virtualmin`.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::pedantic)] // generated code
        tonic::include_proto!("mesh.virtualmin.v1");

        /// `mesh.virtualmin.v1` and its imports, encoded.
        pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mesh.virtualmin.v1.bin"));

        /// The fully qualified service name, as routed by the gateway.
        pub const SERVICE_NAME: &str = "mesh.virtualmin.v1.VirtualminGateway";
    }
}

/// Memory introspection, served by every mesh server, and the `MemoryProfiler` (`mesh.memory.v1`).
pub mod memory {
    /// Version 1 of `mesh.memory`.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::pedantic)] // generated code
        tonic::include_proto!("mesh.memory.v1");

        /// `mesh.memory.v1` (both services) and its imports, encoded.
        pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mesh.memory.v1.bin"));

        /// `introspection.proto` and its imports, encoded: what every server
        /// advertises, without the MemoryProfiler only one server runs.
        pub const INTROSPECTION_FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/mesh.memory.v1.introspection.proto.bin"));

        /// `profiler.proto` and its imports (introspection's messages included), encoded.
        pub const PROFILER_FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/mesh.memory.v1.profiler.proto.bin"));

        /// The fully qualified name of the service every server runs.
        pub const INTROSPECTION_SERVICE_NAME: &str = "mesh.memory.v1.MemoryIntrospection";

        /// The fully qualified name of the profiler, as routed by the gateway.
        pub const PROFILER_SERVICE_NAME: &str = "mesh.memory.v1.MemoryProfiler";
    }
}
