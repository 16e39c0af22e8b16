//! Integration tests of keygate-server: real nodes on loopback, real HTTP.

// Test code: a failed expectation should panic where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_api;
mod bad_input;
mod credits;
mod dashboard;
mod error_catalog;
mod fast_path;
mod forwarding;
mod generated_client;
mod import;
mod key_changes;
mod leaks;
mod lifecycle;
mod metrics;
mod nodes;
mod openapi;
mod paths;
mod pools;
mod proxy;
mod ratelimits;
mod real_upstreams;
mod reload;
mod roles;
mod secrets;
mod seeds;
mod support;
mod telemetry;
mod webhooks;
