//! Code generated from the `.proto` files of `proto/urlfleet/v1`.

/// Version 1 of the wire contract.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("urlfleet.v1");
}

/// Encoded `FileDescriptorSet` of the contract, served by gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("urlfleet_descriptor");
