//! asset-gateway: a streaming gateway for images and videos, built on Pingora.
//!
//! See ARCHITECTURE.md for the path of one request through the hooks and where each concern
//! lives. Only what `main.rs` needs is public.

mod access;
mod access_log;
mod admin;
pub mod app;
mod attempts;
mod cache;
mod config;
mod downstream;
mod errors;
pub mod fleet_purge;
mod fmt;
mod gateway;
mod headers;
mod jwt;
pub mod logging;
mod memory;
mod metrics;
mod proxy;
mod request_id;
mod response;
mod routing;
mod shutdown;
pub mod sign;
mod upstreams;

pub use config::{Config, ConfigError};
