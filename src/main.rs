//! `asset-gateway -c <file> [-t] [-d] [-u]`: Pingora's usual flags; `asset-gateway purge
//! ...` purges an asset on every replica of a cache tier (`fleet_purge`); `asset-gateway sign
//! ...` prints a signed URL (`sign`).

use asset_gateway::{app, fleet_purge, logging, sign, Config};
use pingora::server::configuration::Opt;
use std::process::exit;

/// mimalloc instead of glibc malloc: fewer instructions per allocation on the request path
/// and less fragmentation with many slow clients (bench/ measures both).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("purge") {
        exit(fleet_purge::run(&args[2..]));
    }
    logging::init();
    if args.get(1).map(String::as_str) == Some("sign") {
        exit(sign::main(args.into_iter().skip(2)));
    }
    let mut opt = Opt::parse_args();
    // We read the file ourselves (Pingora would ignore unknown keys); Pingora must not
    // read it again.
    let Some(path) = opt.conf.take() else {
        eprintln!("asset-gateway: no configuration file; pass -c <file> (see conf/asset-gateway.yaml)");
        exit(2);
    };
    let config = Config::load(&path).unwrap_or_else(|e| {
        eprintln!("{e}");
        exit(1);
    });
    for w in &config.warnings {
        eprintln!("{path}: warning: {w}");
    }
    if opt.test {
        println!("{path}: configuration OK");
        print!("{}", config.explain());
        exit(0);
    }
    app::run(opt, config)
}
