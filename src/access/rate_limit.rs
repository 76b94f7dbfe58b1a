//! A token bucket per client in fixed memory, however many clients there are.
//!
//! Each bucket is kept as GCRA's "theoretical arrival time" (TAT): a client may make a request
//! while its TAT is at most `(burst - 1) * interval` ahead of now, and each request pushes it
//! `interval` further (`interval` = 1 / rate). That is exactly a token bucket of `burst`
//! tokens refilled at the rate, in one number that needs no refill step.
//!
//! The TATs live in a count-min sketch: `ROWS` rows of `WIDTH` cells, a client hashed to one
//! cell per row (keyed SipHash, random per process, so clients cannot aim at each other's
//! cells). A client's TAT is the smallest of its cells, and an admitted request raises each of
//! its cells to the new TAT at most (the sketch's "conservative update"). Sharing a cell can
//! only make a client look busier, never idler, so nobody gets more than their bucket; an
//! innocent client is limited only if every one of its cells is shared with heavy clients.
//! Cells of idle clients need no cleanup: a TAT in the past is a full bucket.
//!
//! Why not `pingora-limits`: its `Rate` counts events per fixed window and its `Estimator` is
//! a sketch of plain counters, with no per-key time state; a bucket with a burst that refills
//! continuously needs that state. This is the same structure (a count-min sketch of atomics,
//! fixed memory, no lock) holding TATs instead of counts: 4 x 16,384 cells, 512 KiB per
//! limited route, whether one client or ten million come.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

const ROWS: usize = 4;
const WIDTH: usize = 1 << 14;

pub(crate) struct RateLimiter {
    interval: u64,
    /// How far ahead of now a TAT may be for a request to pass: `(burst - 1) * interval`.
    tolerance: u64,
    cells: Box<[AtomicU64]>,
    hasher: RandomState,
    epoch: Instant,
}

impl RateLimiter {
    pub(crate) fn new(interval: Duration, burst: u32) -> RateLimiter {
        let interval = (interval.as_nanos() as u64).max(1);
        RateLimiter {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.max(1)) - 1),
            cells: (0..ROWS * WIDTH).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    /// Takes a token for `client`; `Err` with how long until one is free.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.check_at(self.hasher.hash_one(key(client)), now)
            .map_err(Duration::from_nanos)
    }

    /// The bytes held, whatever the number of clients.
    #[cfg(test)]
    fn memory(&self) -> usize {
        std::mem::size_of_val(&*self.cells)
    }

    fn check_at(&self, hash: u64, now: u64) -> Result<(), u64> {
        // One cell per row (Kirsch-Mitzenmacher: two halves of one hash).
        let (h1, h2) = (hash as u32 as usize, (hash >> 32) as usize | 1);
        let cells: [&AtomicU64; ROWS] =
            std::array::from_fn(|row| &self.cells[row * WIDTH + h1.wrapping_add(row * h2) % WIDTH]);
        let tat = cells.iter().map(|c| c.load(Relaxed)).min().unwrap_or(0);
        let allowed_until = now.saturating_add(self.tolerance);
        if tat > allowed_until {
            return Err(tat - allowed_until);
        }
        let next = tat.max(now) + self.interval;
        for c in cells {
            c.fetch_max(next, Relaxed);
        }
        Ok(())
    }
}

/// What identifies a client: its IPv4 address, or the /64 of an IPv6 one (a single host is
/// usually given a whole /64 and could otherwise change address per request).
fn key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) | (1 << 127),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_burst_then_the_rate() {
        // 100/s (10 ms), burst 5.
        let l = RateLimiter::new(Duration::from_millis(10), 5);
        let t = 1_000 * MS;
        for _ in 0..5 {
            assert_eq!(l.check_at(7, t), Ok(()));
        }
        // The sixth must wait 10 ms for the next token.
        assert_eq!(l.check_at(7, t), Err(10 * MS));
        assert_eq!(l.check_at(7, t + 10 * MS), Ok(()));
        assert!(l.check_at(7, t + 10 * MS).is_err());
        // Idle for a while: the bucket is full again, no more.
        for _ in 0..5 {
            assert_eq!(l.check_at(7, t + 1_000 * MS), Ok(()));
        }
        assert!(l.check_at(7, t + 1_000 * MS).is_err());
        // Another client is unaffected.
        assert_eq!(l.check_at(8, t), Ok(()));
    }

    #[test]
    fn memory_is_fixed_and_innocent_clients_pass_among_100_000() {
        let l = RateLimiter::new(Duration::from_millis(10), 20);
        let before = l.memory();
        let now = 5_000 * MS;
        let hash = |i: u32| l.hasher.hash_one(key(IpAddr::from(i.to_be_bytes())));
        for i in 0..100_000u32 {
            assert_eq!(l.check_at(hash(i), now), Ok(()), "client {i}");
        }
        // A heavy client uses up its bucket.
        let heavy = hash(u32::MAX);
        while l.check_at(heavy, now).is_ok() {}
        // Every one of the 100,000 can still make a second request.
        let refused = (0..100_000u32)
            .filter(|i| l.check_at(hash(*i), now).is_err())
            .count();
        assert_eq!(refused, 0);
        assert_eq!(l.memory(), before);
        assert_eq!(before, ROWS * WIDTH * 8);
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(key(mapped), key("10.0.0.1".parse().unwrap()));
    }
}
