//! HTTP only: translation between requests and the engine. No decisions here.

pub mod access_log;
pub mod admin;
pub mod client_body;
pub mod dashboard;
pub mod dto;
pub mod error;
pub mod extract;
pub mod gateway;
pub mod grammar;
pub mod health;
pub mod leak_report;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod transport;
pub mod upstream_conn;
