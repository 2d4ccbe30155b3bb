//! Generated code for Bootfleet's protobuf schema (`proto/bootfleet/v1`).
//!
//! The generated files live in `src/gen/` and are committed, so normal builds
//! need no `protoc`. `tests/bootstrap.rs` regenerates them and fails when the
//! committed copy is stale.
#![allow(missing_docs, unreachable_pub, clippy::all)]

/// `bootfleet.v1`: messages stored in etcd and the gRPC APIs.
pub mod v1 {
    include!("gen/bootfleet.v1.rs");

    /// Encoded `FileDescriptorSet` of the whole schema, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/bootfleet_descriptor.bin");
}
