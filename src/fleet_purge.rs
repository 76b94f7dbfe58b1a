//! `asset-gateway purge --admin <name:port | addr:port,addr:port,...> <client path>`: purges an
//! asset (or, with `*` for the id, a whole route) on every replica of a cache tier.
//!
//! A name is resolved to every address it has (in Kubernetes: the cache tier's headless
//! Service, one address per ready pod), and each address gets `DELETE /cache<client path>` on
//! its admin listener, at the same time, with `Authorization: Bearer $ADMIN_TOKEN` when that
//! variable is set. Each replica's answer is printed (`10.0.3.7:9090: 200 {"purged":true}`);
//! the exit status is 0 only if every replica answered 2xx, 1 if any failed (or a name did not
//! resolve), 2 for a usage error. A plain blocking HTTP/1.1 client: no runtime is needed for a
//! handful of requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

const USAGE: &str = "usage: asset-gateway purge --admin <name:port | addr:port,addr:port,...> <client path>
  purges the asset at <client path> (e.g. /content/v1/assets/<id>), or every asset of a route
  (the route's path with * for {id}, e.g. '/content/v1/assets/*'), on every admin listener:
  every address of the name (a headless Service), or each address listed.
  ADMIN_TOKEN, when set, is sent as Authorization: Bearer <token>.";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Per read and write; a purge answers at once (a disk tier deletes files on the admin thread).
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an answer read (an admin answer is a line of JSON).
const MAX_ANSWER: u64 = 64 * 1024;

/// Runs the subcommand on the arguments after `purge`; returns the exit status.
pub fn run(args: &[String]) -> i32 {
    let (admins, path) = match parse(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("asset-gateway purge: {e}\n{USAGE}");
            return 2;
        }
    };
    let token = match std::env::var("ADMIN_TOKEN") {
        Ok(t) if t.bytes().all(|b| b.is_ascii_graphic()) && !t.is_empty() => Some(t),
        Ok(_) => {
            eprintln!("asset-gateway purge: ADMIN_TOKEN must be visible ASCII without spaces");
            return 2;
        }
        Err(_) => None,
    };
    let (targets, unresolved) = resolve(&admins);
    for (entry, e) in &unresolved {
        println!("{entry}: failed: cannot resolve: {e}");
    }
    let answers: Vec<(SocketAddr, Answer)> = std::thread::scope(|s| {
        let running: Vec<_> = targets
            .iter()
            .map(|addr| {
                let (path, token) = (&path, token.as_deref());
                (*addr, s.spawn(move || purge_one(*addr, path, token)))
            })
            .collect();
        running
            .into_iter()
            .map(|(addr, h)| (addr, h.join().unwrap_or_else(|_| Err("panicked".to_string()))))
            .collect()
    });
    let mut failed = !unresolved.is_empty() || targets.is_empty();
    if targets.is_empty() && unresolved.is_empty() {
        println!("no address to purge on");
    }
    for (addr, answer) in answers {
        match answer {
            Ok((status, body)) => {
                failed |= !(200..300).contains(&status);
                println!("{addr}: {status} {body}");
            }
            Err(e) => {
                failed = true;
                println!("{addr}: failed: {e}");
            }
        }
    }
    i32::from(failed)
}

/// `--admin <list>` (repeatable, also `--admin=<list>`) and one path.
fn parse(args: &[String]) -> Result<(Vec<String>, String), String> {
    let mut admins = Vec::new();
    let mut path = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--admin" {
            admins.push(it.next().ok_or("--admin needs a value")?.clone());
        } else if let Some(v) = a.strip_prefix("--admin=") {
            admins.push(v.to_string());
        } else if a == "-h" || a == "--help" {
            return Err("help".to_string());
        } else if a.starts_with('-') && a.len() > 1 {
            return Err(format!("unknown option {a:?}"));
        } else if path.replace(a.clone()).is_some() {
            return Err("one client path only".to_string());
        }
    }
    let admins: Vec<String> = admins
        .iter()
        .flat_map(|a| a.split(','))
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    if admins.is_empty() {
        return Err("--admin is required".to_string());
    }
    let path = path.ok_or("the client path is required")?;
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{path:?} is not a client path (it starts with '/' and has no spaces)"
        ));
    }
    Ok((admins, path))
}

/// Every address of every entry (sorted, once each), and the entries that did not resolve.
fn resolve(entries: &[String]) -> (Vec<SocketAddr>, Vec<(String, String)>) {
    let mut addrs = Vec::new();
    let mut failed = Vec::new();
    for entry in entries {
        match entry.to_socket_addrs() {
            Ok(found) => {
                let before = addrs.len();
                addrs.extend(found);
                if addrs.len() == before {
                    failed.push((entry.clone(), "no address".to_string()));
                }
            }
            Err(e) => failed.push((entry.clone(), e.to_string())),
        }
    }
    addrs.sort();
    addrs.dedup();
    (addrs, failed)
}

/// A replica's status and body (trimmed), or why there was none.
type Answer = Result<(u16, String), String>;

/// One `DELETE /cache<path>`.
fn purge_one(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(io_error)?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(io_error)?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "DELETE /cache{path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: asset-gateway-purge\r\n{auth}Connection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).map_err(io_error)?;
    // The head, then `Content-Length` bytes of body (or up to the close): a server may keep
    // the connection open whatever `Connection: close` asked.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut reader = s.take(MAX_ANSWER);
    let head_end = loop {
        if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match reader.read(&mut chunk).map_err(io_error)? {
            0 => return Err(format!("no HTTP answer ({} bytes, then closed)", answer.len())),
            n => answer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| head.starts_with("HTTP/1."))
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                head.lines().next().unwrap_or_default()
            )
        })?;
    let length = head.lines().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let mut body = answer.split_off(head_end + 4);
    while length.is_none_or(|len| body.len() < len) {
        match reader.read(&mut chunk).map_err(io_error)? {
            0 => break,
            n => body.extend_from_slice(&chunk[..n]),
        }
    }
    if let Some(len) = length {
        body.truncate(len);
    }
    Ok((status, String::from_utf8_lossy(&body).trim().to_string()))
}

fn io_error(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no answer within {} s", IO_TIMEOUT.as_secs())
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments() {
        let (admins, path) = parse(&args(&["--admin", "a:1, b:2", "--admin=c:3", "/x/y"])).unwrap();
        assert_eq!(admins, ["a:1", "b:2", "c:3"]);
        assert_eq!(path, "/x/y");
        for bad in [
            &["/x"][..],
            &["--admin", "a:1"],
            &["--admin"],
            &["--admin", "a:1", "x"],
            &["--admin", "a:1", "/a b"],
            &["--admin", "a:1", "/x", "/y"],
            &["--admn", "a:1", "/x"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_resolve_to_every_address_and_lists_to_each() {
        let (addrs, failed) = resolve(&args(&["127.0.0.1:9", "127.0.0.2:9", "127.0.0.1:9"]));
        assert_eq!(addrs.len(), 2);
        assert!(failed.is_empty());
        let (addrs, _) = resolve(&args(&["localhost:9"]));
        assert!(addrs.contains(&"127.0.0.1:9".parse().unwrap()), "{addrs:?}");
        let (addrs, failed) = resolve(&args(&["not-an-address"]));
        assert!(addrs.is_empty() && failed.len() == 1);
    }
}
