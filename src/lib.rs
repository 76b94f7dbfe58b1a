//! asset-gateway: a streaming gateway for images and videos, built on Pingora.
//!
//! See ARCHITECTURE.md for the path of one request through the hooks.

pub mod admin;
pub mod app;
pub mod config;
pub mod downstream;
pub mod errors;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod response;
pub mod routing;
pub mod upstreams;
