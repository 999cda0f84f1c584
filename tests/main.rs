//! The end-to-end tests, as one binary (zero-to-production's layout): each file beside this one is
//! a module for one area, and `common` is the harness they share. One binary links the whole stack
//! once instead of once per file (see the README's test section for what that saves).
//!
//! A new `tests/<area>.rs` must be declared below; `server::every_test_file_is_a_module_of_the_test_binary`
//! fails when one is not, since Cargo no longer builds such files on its own (`autotests = false`).

// A test binary has no users outside it: `pub` here only shares helpers between its modules.
#![allow(unreachable_pub)]

mod common;

mod activation;
mod admin_api;
mod authorization_matrix;
mod binaries;
mod client;
mod compose;
mod entitlements;
mod ffi;
mod frame_fuzz;
mod grace_period;
mod heartbeats;
mod hostile_input;
mod image;
mod kubernetes;
mod licensectl;
mod meters;
mod migrate;
mod monitoring;
mod network_faults;
mod offline_deactivation;
mod onprem;
mod operations;
mod policies;
mod portal;
mod portal_self_service;
mod process_faults;
mod protobuf;
mod rate_limits;
mod readme_replay;
mod seat;
mod seat_policy;
mod seat_redis_faults;
mod secrets_in_logs;
mod server;
mod server_license;
mod server_usage;
mod soak;
mod store_conformance;
mod tls;
mod traces;
mod trials;
mod web_portal;
mod web_security;
