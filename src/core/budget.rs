//! A budget of records per client address per minute, for records anyone can cause: the audit
//! of refused `/go/` attempts. Past the budget the event is only counted (the caller's metric),
//! so one client can't fill the audit trail or the disk, while each other client keeps its own
//! budget.
//!
//! Clients are kept in a bounded cache that evicts as it inserts (quick_cache, as for names),
//! so an attacker with many addresses costs bounded memory and nothing ever sweeps a map; an
//! address evicted early just starts a fresh minute. The window count is written here by hand:
//! the per-asker token buckets (`ratelimit.rs`) are an unbounded map swept every 30 s, which
//! is right for listed askers and wrong for anyone on the internet.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

/// What counts as one client: an IPv4 address (an IPv4-mapped IPv6 one included), or an IPv6
/// /64, since one host can hold a whole /64. Used for the connection caps too.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// One client's minute: which minute (since the budget began) and how much of it is spent.
#[derive(Default)]
struct Window {
    minute: u64,
    used: u32,
}

/// At most `per_minute` records per client (see [`client_key`]) per clock minute.
pub struct ClientBudget {
    per_minute: u32,
    started: Instant,
    windows: Cache<IpAddr, Arc<Mutex<Window>>>,
}

impl ClientBudget {
    /// A budget of `per_minute` per client, remembering at most `clients` clients at once.
    pub fn new(per_minute: u32, clients: usize) -> Self {
        ClientBudget {
            per_minute,
            started: Instant::now(),
            windows: Cache::new(clients.max(1)),
        }
    }

    /// Spends one record of `client`'s budget: false when this minute's is spent.
    pub fn take(&self, client: IpAddr) -> bool {
        self.take_at(client, self.started.elapsed())
    }

    fn take_at(&self, client: IpAddr, since_start: Duration) -> bool {
        let minute = since_start.as_secs() / 60;
        let Ok(window) = self.windows.get_or_insert_with(&client_key(client), || {
            Ok::<_, std::convert::Infallible>(Arc::new(Mutex::new(Window { minute, used: 0 })))
        });
        let mut w = window.lock().unwrap_or_else(|p| p.into_inner());
        if w.minute != minute {
            *w = Window { minute, used: 0 };
        }
        if w.used >= self.per_minute {
            return false;
        }
        w.used += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn each_client_gets_its_budget_each_minute() {
        let b = ClientBudget::new(3, 100);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let c: IpAddr = "192.0.2.2".parse().unwrap();
        assert!((0..3).all(|_| b.take_at(a, SEC)));
        assert!(!b.take_at(a, 2 * SEC));
        assert!(b.take_at(c, 2 * SEC), "another client has its own");
        assert!(!b.take_at(a, 59 * SEC));
        assert!(b.take_at(a, 60 * SEC), "a new minute, a new budget");
    }

    #[test]
    fn one_ipv6_64_is_one_client_and_mapped_ipv4_is_ipv4() {
        let b = ClientBudget::new(1, 100);
        assert!(b.take_at("2001:db8:1:2::1".parse().unwrap(), SEC));
        assert!(!b.take_at("2001:db8:1:2:ffff::9".parse().unwrap(), SEC));
        assert!(b.take_at("2001:db8:1:3::1".parse().unwrap(), SEC));
        assert!(b.take_at("192.0.2.7".parse().unwrap(), SEC));
        assert!(!b.take_at("::ffff:192.0.2.7".parse().unwrap(), SEC));
    }

    #[test]
    fn many_clients_cost_bounded_memory() {
        let b = ClientBudget::new(1, 64);
        for n in 0..10_000u32 {
            b.take_at(IpAddr::from(n.to_be_bytes()), SEC);
        }
        assert!(b.windows.len() <= 64 * 2, "{}", b.windows.len());
    }
}
