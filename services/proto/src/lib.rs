//! Generated protobuf messages and gRPC stubs of the licensing API.
//!
//! # Layout
//! - `proto/licensing/*/v1/*.proto` (at the workspace root) is the source of truth.
//! - `build.rs` compiles it with protox (no `protoc` on the machine) and tonic-prost-build.
//! - [`FILE_DESCRIPTOR_SET`] is the encoded descriptor set served by gRPC reflection.

/// Encoded `FileDescriptorSet` of every licensing proto, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/licensing_descriptor.bin"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("licensing.common.v1");
    }
}
pub mod activation {
    pub mod v1 {
        tonic::include_proto!("licensing.activation.v1");
    }
}
pub mod seat {
    pub mod v1 {
        tonic::include_proto!("licensing.seat.v1");
    }
}
pub mod account {
    pub mod v1 {
        tonic::include_proto!("licensing.account.v1");
    }
}
