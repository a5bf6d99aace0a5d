//! Who the client is: the TCP peer, unless the peer is a proxy listed in
//! `server.trusted_proxies`; then the rightmost `X-Forwarded-For` hop that is not a trusted
//! proxy.
//!
//! Every proxy appends the address it received the request from, so reading from the right,
//! each hop is vouched for by the trusted proxy to its right, up to the first one that is not a
//! proxy of ours: that is the client. Whatever stands to its left the client wrote itself (the
//! leftmost hop is exactly what a client can forge). A hop that is not an address ends the walk
//! at the last trusted proxy, never at a value the client chose.
//!
//! Written by hand: the header is one comma-separated list of addresses, and the crates that
//! read it (axum-client-ip and the like) bring their own extractor framework for these twenty
//! lines; CIDR matching is `ipnet`'s.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Hops read from the right, at most: more proxies than this in a row is not a real chain.
const MAX_HOPS: usize = 32;

/// The proxies whose `X-Forwarded-For` the bot believes (`server.trusted_proxies`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Believes the proxies in `nets`; none: the peer is always the client.
    pub fn new(nets: &[IpNet]) -> Self {
        TrustedProxies(nets.to_vec())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind a request from `peer` that carried `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.0.is_empty() {
            return peer.to_canonical();
        }
        // Several header lines are one list, in order (RFC 9110, 5.3); one that is not text
        // is a hop that is not an address.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .collect();
        self.client_of(peer, &hops)
    }

    /// [`TrustedProxies::client`] over the hops of `X-Forwarded-For`, leftmost first.
    fn client_of(&self, peer: IpAddr, hops: &[&str]) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        for hop in hops.iter().rev().take(MAX_HOPS) {
            let Some(ip) = hop_address(hop) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// One hop: an address, possibly with a port (`192.0.2.1:443`, `[2001:db8::1]:443`) or in
/// brackets, as proxies write them.
fn hop_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse::<IpAddr>().ok())
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let p = proxies(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let hops = ["203.0.113.66", " 198.51.100.23", "10.1.2.3 "];
        assert_eq!(p.client_of(ip("10.0.0.1"), &hops), ip("198.51.100.23"));
        assert_eq!(
            p.client_of(ip("192.0.2.9"), &hops),
            ip("192.0.2.9"),
            "an untrusted peer's header is its own"
        );
        assert_eq!(
            p.client_of(ip("::ffff:10.0.0.1"), &["[2001:db8::7]:443"]),
            ip("2001:db8::7")
        );
        assert_eq!(
            p.client_of(ip("10.0.0.1"), &["192.0.2.1:8080"]),
            ip("192.0.2.1")
        );
        assert_eq!(p.client_of(ip("10.0.0.1"), &[]), ip("10.0.0.1"));
        assert_eq!(
            p.client_of(ip("10.0.0.1"), &["unknown", "10.9.9.9"]),
            ip("10.9.9.9"),
            "a hop that is not an address stops at the last proxy"
        );
        assert_eq!(
            p.client_of(ip("10.0.0.1"), &["10.2.2.2", "10.3.3.3"]),
            ip("10.2.2.2"),
            "all proxies: the farthest"
        );
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
        assert_eq!(
            TrustedProxies::default().client(ip("127.0.0.9"), &h),
            ip("127.0.0.9")
        );
        h.append(
            "x-forwarded-for",
            "198.51.100.1, 127.0.0.5".parse().unwrap(),
        );
        assert_eq!(
            proxies(&["127.0.0.0/8"]).client(ip("127.0.0.9"), &h),
            ip("198.51.100.1"),
            "header lines are one list"
        );
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
            // Mostly inside 10/8, so chains of trusted hops are common.
            any::<[u8; 3]>().prop_map(|b| IpAddr::from([10, b[0], b[1], b[2]])),
        ]
    }

    /// A hop as a proxy or a client might write it: an address in any of the usual forms, or
    /// anything at all.
    fn any_hop() -> impl Strategy<Value = String> {
        prop_oneof![
            any_ip().prop_map(|ip| ip.to_string()),
            (any_ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port).to_string()),
            ".{0,40}",
        ]
    }

    fn trusted() -> TrustedProxies {
        proxies(&["10.0.0.0/8", "192.0.2.0/24"])
    }

    proptest! {
        #[test]
        fn an_untrusted_peer_is_the_client_whatever_it_says(
            peer in any::<[u8; 4]>().prop_filter("untrusted", |b| b[0] != 10 && b[..3] != [192, 0, 2]),
            hops in proptest::collection::vec(any_hop(), 0..8),
        ) {
            let hops: Vec<&str> = hops.iter().map(String::as_str).collect();
            let peer = IpAddr::from(peer);
            prop_assert_eq!(trusted().client_of(peer, &hops), peer);
            prop_assert_eq!(TrustedProxies::default().client_of(peer, &hops), peer);
        }

        #[test]
        fn the_client_is_the_peer_or_a_hop_and_every_hop_right_of_it_is_trusted(
            peer in any_ip(),
            hops in proptest::collection::vec(any_hop(), 0..8),
        ) {
            let t = trusted();
            let hops: Vec<&str> = hops.iter().map(String::as_str).collect();
            let client = t.client_of(peer, &hops);
            if client == peer.to_canonical() {
                return Ok(());
            }
            prop_assert!(t.trusts(peer.to_canonical()));
            let at = hops.iter().rposition(|h| hop_address(h) == Some(client));
            prop_assert!(at.is_some(), "{client} is one of the hops");
            for hop in &hops[at.unwrap_or(0) + 1..] {
                prop_assert!(hop_address(hop).is_some_and(|ip| t.trusts(ip)), "{hop:?} right of the client");
            }
        }

        /// What a client writes before its request reaches the first trusted proxy can't
        /// change who the bot thinks it is.
        #[test]
        fn hops_the_client_wrote_change_nothing(
            client in any::<[u8; 4]>().prop_filter("untrusted", |b| b[0] != 10 && b[..3] != [192, 0, 2]),
            inner in proptest::collection::vec(any::<[u8; 3]>(), 0..4),
            forged in proptest::collection::vec(any_hop(), 0..6),
        ) {
            let client = IpAddr::from(client);
            let chain: Vec<String> = std::iter::once(client.to_string())
                .chain(inner.iter().map(|b| IpAddr::from([10, b[0], b[1], b[2]]).to_string()))
                .collect();
            let mut hops: Vec<&str> = forged.iter().map(String::as_str).collect();
            hops.extend(chain.iter().map(String::as_str));
            prop_assert_eq!(trusted().client_of(IpAddr::from([10, 0, 0, 1]), &hops), client);
        }
    }
}
