//! Process logging: `env_logger` on stderr, `RUST_LOG` picks the level (default `info`).
//! Lines look like `[2026-11-26T10:40:29.513Z INFO  target] message`. Access lines have the
//! same prefix but their own writer (`access_log`).

use std::io::Write as _;

pub fn init() {
    // pingora-cache warns once, at the first stored header, that no zstd dictionary for
    // headers is loaded: the gateway uses none on purpose, so by default that is not a warning.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,pingora_cache::meta=error"),
    )
    .format(|buf, record| {
        let msg = record.args();
        let mut level = record.level();
        // Pingora logs a client that fails before its request is read (a slow head cut
        // off, a reset) at error level, once per connection. That is the client's fault
        // and per connection: it goes out at info like the access lines.
        if level == log::Level::Error
            && record.target() == "pingora_proxy"
            && msg.to_string().starts_with("Fail to proxy: Downstream")
        {
            level = log::Level::Info;
        }
        // Pingora warns once per request served stale after an upstream failure (not behind
        // the hook that silences its per-request errors): during an outage, a line per
        // request. The access line says it already (`cache=stale-if-error`,
        // `upstream_failures`).
        if level == log::Level::Warn
            && record.target() == "pingora_proxy::proxy_cache"
            && msg.to_string().contains(", serving stale, ")
        {
            return Ok(());
        }
        writeln!(
            buf,
            "[{} {:<5} {}] {msg}",
            buf.timestamp_millis(),
            level,
            record.target()
        )
    })
    .init();
    // `std::process::exit` (Pingora's and ours) runs C `atexit` handlers: the access lines
    // still waiting are written then.
    extern "C" fn flush_at_exit() {
        crate::access_log::flush();
    }
    // SAFETY: registers a plain function; `atexit` has no other requirement.
    unsafe {
        libc::atexit(flush_at_exit);
    }
}
