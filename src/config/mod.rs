//! The one YAML file: Pingora's own server keys at the top level, the gateway's keys under
//! `gateway:`. [`Config::load`] parses, type-checks, cross-checks and loads everything (peer
//! names, TLS files, environment) into runtime types; every problem is reported with the file
//! and the key's path, all at once, and nothing here panics. `-t` runs exactly this.
//!
//! - `file`: the serde types, as the file writes them (unknown keys refused), and the defaults
//!   of absent keys;
//! - `units`: durations and sizes;
//! - `compile`: joins the sections below into `Settings`, with the few top-level keys;
//! - one module per section, each checking its keys and converting them into `runtime` types:
//!   `listen`, `downstream`, `streaming`, `upstreams`, `routes` (with what a cached route keys
//!   on and forwards, and `-t`'s explanation), `cache`, and for access control `access`
//!   joining `auth`, `client_ip`, `rate_limit`, `cors` (which also hold their serde types);
//! - `runtime`: what the rest of the gateway reads;
//! - `tls`: PEM files read and parsed at start; `env`: `${VAR}` expansion.
//!
//! Imports go one way: `compile` -> sections -> `file`, `runtime`; `file` -> the access
//! sections' serde types; nothing here imports `compile`.

mod access;
mod auth;
mod cache;
mod client_ip;
mod compile;
mod cors;
mod downstream;
mod env;
mod file;
mod listen;
mod rate_limit;
mod routes;
mod runtime;
mod streaming;
mod tls;
mod units;
mod upstreams;

#[cfg(test)]
mod tests;

pub(crate) use access::subject_header;
pub(crate) use access::{AccessSettings, RouteAccess};
pub(crate) use auth::{AuthMethod, JwksSource, JwtSettings, SIGNATURE_PARAMS};
pub(crate) use client_ip::ClientIpSettings;
pub(crate) use cors::CorsSettings;
pub(crate) use file::{AccessLogFormat, Selection};
pub(crate) use rate_limit::Counts;
pub(crate) use runtime::*;
pub(crate) use units::parse_duration;

use pingora::server::configuration::ServerConf;
use serde_yaml::{Mapping, Value};
use std::collections::BTreeSet;
use std::fmt;

/// The whole file, parsed, validated and loaded.
pub struct Config {
    /// Pingora's server settings (threads, pid_file, upgrade_sock, grace periods, ...).
    pub server: ServerConf,
    pub(crate) gateway: Settings,
    /// What `-t` (and the start) warns about: valid, but probably not what was meant.
    pub warnings: Vec<String>,
}

/// Every problem found in a config file. Displayed one per line, each naming its key.
#[derive(Debug)]
pub struct ConfigError {
    file: String,
    problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "invalid configuration {}:", self.file)?;
        for p in &self.problems {
            write!(f, "\n  {}: {p}", self.file)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// What `-t` prints besides "configuration OK": what each route forwards and keys on, and
    /// who may fetch it.
    pub fn explain(&self) -> String {
        routes::explain(&self.gateway.routes, &self.gateway.access)
    }

    /// Reads, parses, validates and loads `path`. `-t` runs exactly this.
    pub fn load(path: &str) -> Result<Config, ConfigError> {
        let error = |problems| ConfigError {
            file: path.to_string(),
            problems,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| error(vec![format!("cannot read the file: {e}")]))?;
        Self::from_yaml(&text).map_err(error)
    }

    /// Parses and validates a whole file's text; the errors name each key's path.
    pub(crate) fn from_yaml(text: &str) -> Result<Config, Vec<String>> {
        let root: Value = serde_yaml::from_str(text).map_err(|e| vec![format!("not valid YAML: {e}")])?;
        let mut top = match root {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            _ => return Err(vec!["the file must be a YAML mapping of keys".to_string()]),
        };
        let gateway = top.remove("gateway");

        let mut problems = check_server_keys(&top);
        let server = match serde_path_to_error::deserialize::<_, ServerConf>(Value::Mapping(top)) {
            Ok(conf) => match conf.validate() {
                Ok(conf) if conf.threads == 0 => {
                    problems.push("threads: must be at least 1".to_string());
                    None
                }
                Ok(conf) => Some(conf),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            },
            Err(e) => {
                problems.push(format!("{}: {}", e.path(), e.inner()));
                None
            }
        };

        let gateway = match gateway {
            None => {
                problems.push(
                    "gateway: missing section (listen, upstreams and routes live under `gateway:`)"
                        .to_string(),
                );
                None
            }
            Some(value) => match serde_path_to_error::deserialize::<_, file::GatewayFile>(value) {
                Ok(g) => compile::compile(g).map_err(|p| problems.extend(p)).ok(),
                Err(e) => {
                    problems.push(format!("gateway.{}: {}", e.path(), e.inner()));
                    None
                }
            },
        };
        match (server, gateway) {
            (Some(server), Some(gateway)) if problems.is_empty() => Ok(Config {
                warnings: [
                    access::warnings(gateway.admin, &gateway.access),
                    routes::warnings(&gateway.routes),
                ]
                .concat(),
                server,
                gateway,
            }),
            _ => Err(problems),
        }
    }
}

/// Pingora ignores unknown top-level keys (`thread: 4` would silently do nothing); we refuse
/// them. The known keys are read off `ServerConf` itself so they follow Pingora's version.
fn check_server_keys(top: &Mapping) -> Vec<String> {
    let known: BTreeSet<String> = match serde_yaml::to_value(ServerConf::default()) {
        Ok(Value::Mapping(m)) => m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect(),
        _ => BTreeSet::new(),
    };
    top.keys()
        .filter_map(|k| {
            let name = k.as_str().map(str::to_string).unwrap_or_else(|| format!("{k:?}"));
            (!known.contains(&name)).then(|| {
                format!("{name}: unknown key (top-level keys are Pingora's server settings; the gateway's own keys go under `gateway:`)")
            })
        })
        .collect()
}
