//! Who sent a request, and its id: the middleware every request passes first.
//!
//! The client's address is the TCP peer, unless the peer is a trusted proxy
//! (`--trusted-proxies`): then it is read from `Forwarded` (RFC 7239) or, when
//! that is absent, `X-Forwarded-For`, right to left, stepping over trusted
//! proxies, so the first address no trusted proxy vouches for is the client.
//! From any other peer those headers are ignored: a client cannot choose the
//! address its connection limit is counted against.
//!
//! The request id is the `x-request-id` a trusted proxy sent, when it is a
//! usable one, or a new UUID. Every response carries it in `x-request-id`,
//! every error body names it, and every log line written while the request
//! runs (the `http` span) carries it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a proxy.
const MAX_REQUEST_ID: usize = 128;

/// The networks whose forwarding headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address (`10.1.2.3`).
    pub fn parse(list: &[String]) -> anyhow::Result<Self> {
        let mut nets = Vec::new();
        for entry in list.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "--trusted-proxies: `{entry}` is not an address or a CIDR block such as 10.0.0.0/8"
                    )
                })?;
            nets.push(net.trunc());
        }
        Ok(TrustedProxies(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`, given the request's forwarding headers.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let chain = forwarded_chain(headers);
        let mut client = peer;
        for hop in chain.iter().rev() {
            if !self.contains(client) {
                break;
            }
            match hop {
                Some(ip) => client = canonical(*ip),
                // `unknown` or an obfuscated name: nothing further is known.
                None => break,
            }
        }
        client
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:10.0.0.1`, as a dual-stack
/// listener reports it) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The addresses the proxies recorded, client first: from `Forwarded`'s
/// `for=` parameters, else from `X-Forwarded-For`. `None` for a hop that is
/// not an address.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let forwarded = values("forwarded");
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(value.trim()))
                })
            })
            .collect();
    }
    values("x-forwarded-for")
        .iter()
        .map(|v| parse_node(v))
        .collect()
}

/// `192.0.2.60`, `"192.0.2.60:4711"`, `"[2001:db8::17]:4711"`, `2001:db8::17`.
fn parse_node(value: &str) -> Option<IpAddr> {
    let value = value.trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Some(ip);
    }
    // IPv4 with a port.
    let (host, port) = value.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The address a request came from, after the trusted proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The id of the request being served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub Arc<str>);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

tokio::task_local! {
    static CURRENT: RequestId;
}

/// The id of the request this task is serving, for error bodies.
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(Clone::clone).ok()
}

/// A proxy's id is taken when it is short and plain (letters, digits and
/// `-_.:/+=@`), so it can go into logs and headers as it is.
fn usable(id: &str) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b))
}

/// Sets [`ClientAddr`] and [`RequestId`] on the request, runs it with the id
/// current, and echoes the id on the response.
pub async fn identify(
    State(proxies): State<Arc<TrustedProxies>>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let client = proxies.client(peer, req.headers());
    let offered = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| usable(id) && proxies.contains(peer));
    let id = RequestId(match offered {
        Some(id) => id.into(),
        None => uuid::Uuid::new_v4().to_string().into(),
    });
    req.extensions_mut().insert(ClientAddr(client));
    req.extensions_mut().insert(id.clone());
    let header = HeaderValue::from_str(&id.0).expect("request ids are visible ASCII");
    let mut response = CURRENT.scope(id, next.run(req)).await;
    response.headers_mut().insert(REQUEST_ID, header);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let p = proxies(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(p.client(ip("10.1.1.1"), &h), ip("203.0.113.7"));
        assert_eq!(p.client(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        assert_eq!(proxies(&[]).client(ip("10.1.1.1"), &h), ip("10.1.1.1"));
    }

    #[test]
    fn the_chain_is_read_from_the_right_past_trusted_hops_only() {
        let p = proxies(&["10.0.0.0/8", "192.0.2.9"]);
        // The client put a fake address first; the proxies appended theirs.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.7, 192.0.2.9")]);
        assert_eq!(p.client(ip("10.0.0.2"), &h), ip("203.0.113.7"));
        // Every hop trusted: the leftmost is the client.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 192.0.2.9")]);
        assert_eq!(p.client(ip("10.0.0.2"), &h), ip("10.9.9.9"));
        // Two header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "10.2.2.2"),
        ]);
        assert_eq!(p.client(ip("10.0.0.2"), &h), ip("203.0.113.7"));
        // A hop that is not an address ends the walk at the proxy behind it.
        let h = headers(&[("x-forwarded-for", "203.0.113.7, garbage")]);
        assert_eq!(p.client(ip("10.0.0.2"), &h), ip("10.0.0.2"));
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_parses_its_forms() {
        let p = proxies(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            (
                "forwarded",
                r#"for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.5;by=10.0.0.1"#,
            ),
        ]);
        assert_eq!(p.client(ip("10.0.0.1"), &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", r#"For="203.0.113.7:443""#)]);
        assert_eq!(p.client(ip("10.0.0.1"), &h), ip("203.0.113.7"));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(p.client(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_networks() {
        let p = proxies(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(p.client(ip("::ffff:10.0.0.1"), &h), ip("203.0.113.7"));
    }

    #[test]
    fn bad_entries_are_refused_with_the_flag_named() {
        let err = TrustedProxies::parse(&["10.0.0.0/33".into()]).unwrap_err();
        assert!(err.to_string().contains("--trusted-proxies"), "{err}");
        assert!(TrustedProxies::parse(&["proxy.local".into()]).is_err());
        let p = proxies(&["10.1.2.3/8", "::1"]);
        assert_eq!(p.networks()[0].to_string(), "10.0.0.0/8");
        assert!(p.contains(ip("::1")));
    }

    #[test]
    fn only_plain_request_ids_are_taken() {
        assert!(usable("req-7f1c_8a2e.3b4d:1/2+3=4@x"));
        assert!(!usable(""));
        assert!(!usable("has space"));
        assert!(!usable("new\nline"));
        assert!(!usable(&"x".repeat(129)));
    }
}
