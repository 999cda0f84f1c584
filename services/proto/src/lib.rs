//! Generated protobuf messages and gRPC stubs of the licensing API.
//!
//! # Layout
//! - `proto/licensing/*/v1/*.proto` (at the workspace root) is the source of truth.
//! - `build.rs` compiles it with protox (no `protoc` on the machine) and tonic-prost-build.
//! - [`FILE_DESCRIPTOR_SET`] is the encoded descriptor set served by gRPC reflection.

/// Encoded `FileDescriptorSet` of every licensing proto, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/licensing_descriptor.bin"));

/// Messages shared by the services (fingerprints, license kinds, modules).
pub mod common {
    /// Version 1, generated: documented as far as the proto's comments go.
    #[allow(missing_docs, unreachable_pub)]
    pub mod v1 {
        tonic::include_proto!("licensing.common.v1");
    }
}
/// The Activation service: node-locked activations and validations.
pub mod activation {
    /// Version 1, generated: documented as far as the proto's comments go.
    #[allow(missing_docs, unreachable_pub)]
    pub mod v1 {
        tonic::include_proto!("licensing.activation.v1");
    }
}
/// The Seat service: floating seats leased by heartbeats.
pub mod seat {
    /// Version 1, generated: documented as far as the proto's comments go.
    #[allow(missing_docs, unreachable_pub)]
    pub mod v1 {
        tonic::include_proto!("licensing.seat.v1");
    }
}
/// The Account service: the customer portal and the vendor's admin API.
pub mod account {
    /// Version 1, generated: documented as far as the proto's comments go.
    #[allow(missing_docs, unreachable_pub)]
    pub mod v1 {
        tonic::include_proto!("licensing.account.v1");
    }
}
/// The on-premises license server's administration.
pub mod onpremises {
    /// Version 1, generated: documented as far as the proto's comments go.
    #[allow(missing_docs, unreachable_pub)]
    pub mod v1 {
        tonic::include_proto!("licensing.onpremises.v1");
    }
}
