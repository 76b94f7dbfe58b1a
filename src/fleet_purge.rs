//! `asset-gateway purge --admin <name:port | addr:port,addr:port,...> <client path>`: purges an
//! asset (or, with `*` for the id, a whole route) on every replica of a cache tier.
//!
//! A name is resolved to every address it has (in Kubernetes: the cache tier's headless
//! Service, one address per ready pod), and each address gets `DELETE /cache<client path>` on
//! its admin listener, at the same time, with `Authorization: Bearer $ADMIN_TOKEN` when that
//! variable is set. Each replica's answer is printed (`10.0.3.7:9090: 200 {"purged":true}`,
//! bytes that are not printable ASCII escaped: the answer is the replica's, not ours to let
//! drive a terminal); a replica succeeded only with a 200 whose body is a JSON object with
//! `purged` (what the admin listener answers; a proxy's or another server's 2xx is not a
//! purge). Each replica has one deadline for connect, request and answer (`--timeout`, 30 s):
//! a server dripping a byte at a time cannot hold the command. The token goes in clear text
//! (plain HTTP, like the admin listener), so sending it to an address other than loopback is
//! warned about on stderr. The exit status is 0 only if every replica purged, 1 if any failed
//! (or a name did not resolve), 2 for a usage error. A plain blocking HTTP/1.1 client: no
//! runtime is needed for a handful of requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: asset-gateway purge [--timeout <seconds>] --admin <name:port | addr:port,addr:port,...> <client path>
  purges the asset at <client path> (e.g. /content/v1/assets/<id>), or every asset of a route
  (the route's path with * for {id}, e.g. '/content/v1/assets/*'), on every admin listener:
  every address of the name (a headless Service), or each address listed.
  ADMIN_TOKEN, when set, is sent as Authorization: Bearer <token> (in clear text: plain HTTP).
  --timeout: the most one replica may take, connect to answer (default 30).";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The most one replica may take by default (connect, request and answer together); a purge
/// answers at once (a disk tier deletes files on the admin thread).
const DEADLINE: Duration = Duration::from_secs(30);
/// The most of an answer read (an admin answer is a line of JSON).
const MAX_ANSWER: u64 = 64 * 1024;

/// What the command line asks.
struct Args {
    admins: Vec<String>,
    path: String,
    deadline: Duration,
}

/// Runs the subcommand on the arguments after `purge`; returns the exit status.
pub fn run(args: &[String]) -> i32 {
    let Args {
        admins,
        path,
        deadline,
    } = match parse(args) {
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
        println!("{entry}: failed: cannot resolve: {}", printable(e.as_bytes()));
    }
    if token.is_some() {
        let exposed: Vec<String> = targets
            .iter()
            .filter(|a| !a.ip().to_canonical().is_loopback())
            .map(SocketAddr::to_string)
            .collect();
        if !exposed.is_empty() {
            eprintln!(
                "asset-gateway purge: warning: ADMIN_TOKEN goes in clear text (plain HTTP) to {}: anyone on the path can read it; keep admin traffic on a trusted network",
                exposed.join(", ")
            );
        }
    }
    let answers: Vec<(SocketAddr, Answer)> = std::thread::scope(|s| {
        let running: Vec<_> = targets
            .iter()
            .map(|addr| {
                let (path, token) = (&path, token.as_deref());
                let until = Instant::now() + deadline;
                (*addr, s.spawn(move || purge_one(*addr, path, token, until)))
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
                let purged = status == 200 && is_purge_answer(&body);
                failed |= !purged;
                let text = match printable(&body) {
                    t if t.is_empty() => "(empty body)".to_string(),
                    t => t,
                };
                match purged {
                    true => println!("{addr}: {status} {text}"),
                    false => {
                        println!("{addr}: {status} {text} (failed: not an admin listener's purge answer)")
                    }
                }
            }
            Err(e) => {
                failed = true;
                println!("{addr}: failed: {}", printable(e.as_bytes()));
            }
        }
    }
    i32::from(failed)
}

/// What the admin listener answers to a purge: a JSON object with `purged` (true or false).
fn is_purge_answer(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v.get("purged").is_some_and(serde_json::Value::is_boolean))
}

/// `bytes` as text with everything but printable ASCII escaped (`\x1b`, `\u{e9}` for UTF-8
/// text outside ASCII, `\xff` for bytes that are not UTF-8), trimmed.
fn printable(bytes: &[u8]) -> String {
    let bytes = bytes.trim_ascii();
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                ' '..='~' => out.push(c),
                c if c.is_ascii() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.extend(c.escape_unicode()),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `--admin <list>` (repeatable, also `--admin=<list>`), `--timeout <seconds>` and one path.
fn parse(args: &[String]) -> Result<Args, String> {
    let mut admins = Vec::new();
    let mut path = None;
    let mut deadline = DEADLINE;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--admin" {
            admins.push(it.next().ok_or("--admin needs a value")?.clone());
        } else if let Some(v) = a.strip_prefix("--admin=") {
            admins.push(v.to_string());
        } else if a == "--timeout" || a.starts_with("--timeout=") {
            let v = match a.strip_prefix("--timeout=") {
                Some(v) => v,
                None => it.next().ok_or("--timeout needs a value")?,
            };
            deadline = v
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=3600).contains(s))
                .map(Duration::from_secs)
                .ok_or_else(|| format!("--timeout {v:?}: whole seconds, 1 to 3600"))?;
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
    Ok(Args {
        admins,
        path,
        deadline,
    })
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

/// A replica's status and body, or why there was none.
type Answer = Result<(u16, Vec<u8>), String>;

/// One `DELETE /cache<path>`, all of it before `until`.
fn purge_one(addr: SocketAddr, path: &str, token: Option<&str>, until: Instant) -> Answer {
    let left = |what: &str| {
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no complete answer within the deadline ({what})"))
    };
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT.min(left("connect")?))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(left("request")?)).map_err(io_error)?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "DELETE /cache{path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: asset-gateway-purge\r\n{auth}Connection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).map_err(io_error)?;
    // The head, then `Content-Length` bytes of body (or up to the close): a server may keep
    // the connection open whatever `Connection: close` asked. Each read may wait only for
    // what is left of the deadline.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut reader = s.take(MAX_ANSWER);
    let read = |reader: &mut std::io::Take<TcpStream>, chunk: &mut [u8]| {
        reader
            .get_ref()
            .set_read_timeout(Some(left("reading")?))
            .map_err(io_error)?;
        reader.read(chunk).map_err(io_error)
    };
    let head_end = loop {
        if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match read(&mut reader, &mut chunk)? {
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
                "not an HTTP answer: {}",
                printable(head.lines().next().unwrap_or_default().as_bytes())
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
        match read(&mut reader, &mut chunk)? {
            0 => break,
            n => body.extend_from_slice(&chunk[..n]),
        }
    }
    if let Some(len) = length {
        body.truncate(len);
    }
    Ok((status, body))
}

fn io_error(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            "no complete answer within the deadline".to_string()
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
        let a = parse(&args(&["--admin", "a:1, b:2", "--admin=c:3", "/x/y"])).unwrap();
        assert_eq!(a.admins, ["a:1", "b:2", "c:3"]);
        assert_eq!(a.path, "/x/y");
        assert_eq!(a.deadline, DEADLINE);
        let a = parse(&args(&["--timeout", "5", "--admin", "a:1", "/x"])).unwrap();
        assert_eq!(a.deadline, Duration::from_secs(5));
        assert_eq!(
            parse(&args(&["--timeout=7", "--admin", "a:1", "/x"]))
                .unwrap()
                .deadline
                .as_secs(),
            7
        );
        for bad in [
            &["/x"][..],
            &["--admin", "a:1"],
            &["--admin"],
            &["--admin", "a:1", "x"],
            &["--admin", "a:1", "/a b"],
            &["--admin", "a:1", "/x", "/y"],
            &["--admn", "a:1", "/x"],
            &["--timeout", "0", "--admin", "a:1", "/x"],
            &["--timeout", "x", "--admin", "a:1", "/x"],
            &["--admin", "a:1", "/x", "--timeout"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn answers_are_printed_escaped_and_judged() {
        assert_eq!(printable(b" {\"purged\":true}\n"), "{\"purged\":true}");
        assert_eq!(
            printable(b"\x1b[2J\x1b]0;owned\x07"),
            "\\x1b[2J\\x1b]0;owned\\x07"
        );
        assert_eq!(printable("caf\u{e9} \u{202e}".as_bytes()), "caf\\u{e9} \\u{202e}");
        assert_eq!(printable(b"a\xffb"), "a\\xffb");
        assert!(is_purge_answer(br#"{"purged":true,"assets":2}"#));
        assert!(is_purge_answer(br#"{"purged":false}"#));
        for other in [
            &b""[..],
            b"ok",
            br#"{"error":"x"}"#,
            br#"{"purged":"yes"}"#,
            b"[true]",
        ] {
            assert!(!is_purge_answer(other), "{other:?}");
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
