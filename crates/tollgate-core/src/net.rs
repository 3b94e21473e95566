//! Egress safety for URLs that callers choose (push-notification webhooks): which addresses a
//! gateway must never connect to on a caller's behalf, and a check that resolves a URL once,
//! refuses it if any address is internal, and returns the addresses to connect to, so the
//! connection cannot be re-pointed by a second DNS answer (rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// An IP network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, bits) = s.split_once('/')?;
        let net: IpAddr = ip.parse().ok()?;
        let bits: u8 = bits.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V4(_), IpAddr::V6(a)) => a
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// Why an IPv4 address is not a public unicast destination, if it is not.
fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => "the unspecified or \"this\" network (0.0.0.0/8)",
        [127, ..] => "loopback",
        [10, ..] => "a private network (10.0.0.0/8)",
        [172, b, ..] if (16..32).contains(&b) => "a private network (172.16.0.0/12)",
        [192, 168, ..] => "a private network (192.168.0.0/16)",
        [169, 254, 169, 254] => "the cloud metadata service",
        [169, 254, ..] => "link-local",
        [100, b, ..] if (64..128).contains(&b) => "carrier-grade NAT (100.64.0.0/10)",
        [192, 0, 0, _] => "IETF protocol assignments (192.0.0.0/24)",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking (198.18.0.0/15)",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [a, ..] if a >= 224 => "multicast, reserved or broadcast",
        _ => return None,
    })
}

/// Why an address is not a public unicast destination, if it is not. IPv6 forms that embed an
/// IPv4 address (mapped, compatible, NAT64, 6to4) are judged by that address.
pub fn internal_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("the unspecified address");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return internal_v4(v4).or(Some("an IPv4-mapped address"));
    }
    // ::a.b.c.d (deprecated IPv4-compatible) and 64:ff9b::a.b.c.d (NAT64).
    if s[..6] == [0; 6] || (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4]) {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return internal_v4(v4).or(Some("an IPv4-embedding address"));
    }
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        if let Some(r) = internal_v4(v4) {
            return Some(r);
        }
    }
    Some(match s[0] {
        x if x & 0xfe00 == 0xfc00 => "a unique local address (fc00::/7)",
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "site-local",
        x if x & 0xff00 == 0xff00 => "multicast",
        0x2001 if s[1] == 0x0db8 => "documentation",
        // Teredo tunnels an arbitrary (possibly internal) IPv4 address.
        0x2001 if s[1] == 0 => "a Teredo address",
        0x0100 if s[1..4] == [0; 3] => "the discard prefix",
        _ => return None,
    })
}

/// Parses an IPv4 literal the way `inet_aton` does (what resolvers accept): one to four
/// parts, each decimal, octal (leading `0`) or hex (`0x`). `2130706433`, `0177.0.0.1` and
/// `0x7f.1` are all 127.0.0.1; a URL host in such a form is judged as that address.
pub fn parse_ipv4_loose(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(4);
    for p in &parts {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or(p.strip_prefix("0X")) {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (*p, 10)
        };
        if digits.is_empty() && radix != 16 {
            return None;
        }
        let n = if digits.is_empty() {
            0
        } else {
            u64::from_str_radix(digits, radix).ok()?
        };
        nums.push(n);
    }
    let last = *nums.last()?;
    let head = &nums[..nums.len() - 1];
    if head.iter().any(|&n| n > 255) {
        return None;
    }
    let last_bits = 8 * (4 - head.len()) as u32;
    if last >= 1u64 << last_bits {
        return None;
    }
    let mut v: u32 = 0;
    for (i, &n) in head.iter().enumerate() {
        v |= (n as u32) << (24 - 8 * i as u32);
    }
    v |= last as u32;
    Some(Ipv4Addr::from(v))
}

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Resolves a host name to addresses (the system resolver in production; a table in tests).
#[async_trait::async_trait]
pub trait Resolve: Send + Sync {
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String>;
}

/// The system resolver.
pub struct SystemResolver;

#[async_trait::async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        tokio::net::lookup_host((host, port))
            .await
            .map(|a| a.collect())
            .map_err(|e| e.to_string())
    }
}

/// A checked destination: the URL as given and the addresses to connect to.
#[derive(Debug, Clone)]
pub struct Destination {
    pub uri: http::Uri,
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

/// The egress rules: internal addresses are refused unless an allow entry (a CIDR block, or
/// an exact host name) permits them.
#[derive(Debug, Clone, Default)]
pub struct EgressGuard {
    cidrs: Vec<Cidr>,
    hosts: Vec<String>,
}

impl EgressGuard {
    pub fn new(allow: &[String]) -> EgressGuard {
        let mut g = EgressGuard::default();
        for a in allow {
            match Cidr::parse(a) {
                Some(c) => g.cidrs.push(c),
                None => g.hosts.push(a.trim_end_matches('.').to_ascii_lowercase()),
            }
        }
        g
    }

    /// Checks `url` and resolves its host once. Nothing is sent anywhere but to the resolver.
    pub async fn check(&self, url: &str, resolver: &dyn Resolve) -> Result<Destination, Refused> {
        let refuse = |m: String| Err(Refused(m));
        if url.len() > 2048 {
            return refuse("the URL is longer than 2048 bytes".into());
        }
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return refuse("the URL contains control or whitespace characters".into());
        }
        let Ok(uri) = url.parse::<http::Uri>() else {
            return refuse("not a valid URL".into());
        };
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return refuse("only http:// and https:// URLs are allowed".into()),
        };
        let Some(authority) = uri.authority() else {
            return refuse("the URL has no host".into());
        };
        if authority.as_str().contains('@') {
            return refuse("credentials in the URL are not allowed".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if host.is_empty() {
            return refuse("the URL has no host".into());
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if port == 0 {
            return refuse("port 0 is not a destination".into());
        }
        let host_allowed = self.hosts.contains(&host);
        let literal = host
            .parse::<IpAddr>()
            .ok()
            .or_else(|| parse_ipv4_loose(&host).map(IpAddr::V4));
        let addrs = match literal {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => {
                if (host == "localhost" || host.ends_with(".localhost")) && !host_allowed {
                    return refuse(format!("{host} is a loopback name"));
                }
                match resolver.resolve(&host, port).await {
                    Ok(a) if !a.is_empty() => a,
                    Ok(_) => return refuse(format!("{host} does not resolve")),
                    Err(e) => return refuse(format!("{host} does not resolve: {e}")),
                }
            }
        };
        if !host_allowed {
            for a in &addrs {
                let ip = a.ip();
                if self.cidrs.iter().any(|c| c.contains(ip)) {
                    continue;
                }
                if let Some(why) = internal_reason(ip) {
                    return refuse(format!("{host} resolves to {ip}: {why}"));
                }
            }
        }
        Ok(Destination { uri, host, addrs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_ipv4_forms() {
        let lo = Some(Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(parse_ipv4_loose("2130706433"), lo);
        assert_eq!(parse_ipv4_loose("0177.0.0.1"), lo);
        assert_eq!(parse_ipv4_loose("0x7f.1"), lo);
        assert_eq!(parse_ipv4_loose("127.1"), lo);
        assert_eq!(parse_ipv4_loose("0x7f000001"), lo);
        assert_eq!(parse_ipv4_loose("example.com"), None);
        assert_eq!(parse_ipv4_loose("256.0.0.1"), None);
        assert_eq!(parse_ipv4_loose("08.0.0.1"), None);
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
    }

    #[test]
    fn public_addresses_pass() {
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "93.184.216.34"] {
            assert_eq!(internal_reason(ip.parse().unwrap()), None, "{ip}");
        }
    }

    /// Names resolve from a table; nothing reaches a network.
    struct Table;

    #[async_trait::async_trait]
    impl Resolve for Table {
        async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
            let ips: &[&str] = match host {
                "public.test" => &["93.184.216.34"],
                "rebind.test" => &["93.184.216.34", "10.0.0.7"],
                "metadata.test" => &["169.254.169.254"],
                "private.test" => &["192.168.1.20"],
                "ula.test" => &["fd00::5"],
                "mapped.test" => &["::ffff:127.0.0.1"],
                "v6loop.test" => &["::1"],
                "cgnat.test" => &["100.100.100.200"],
                _ => return Err("NXDOMAIN".into()),
            };
            Ok(ips
                .iter()
                .filter_map(|i| i.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, port))
                .collect())
        }
    }

    /// The webhook SSRF corpus: every target is refused before any connection exists.
    #[tokio::test]
    async fn ssrf_corpus_is_refused() {
        let guard = EgressGuard::new(&[]);
        let corpus = [
            "http://127.0.0.1/hook",
            "http://127.0.0.1:8080/hook",
            "http://127.1/",
            "http://0177.0.0.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7f.0.0.1/",
            "http://0/",
            "http://0.0.0.0:80/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://api.localhost/",
            "http://[::1]/",
            "http://[::]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:c0a8:101::1]/",
            "http://10.0.0.1/",
            "http://10.255.255.255/",
            "http://172.16.0.1/",
            "http://172.31.255.254/",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.170.2/v2/credentials",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://[fc00::1]/",
            "http://100.64.0.1/",
            "http://198.18.0.1/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://metadata.test/",
            "http://private.test/",
            "http://rebind.test/",
            "http://ula.test/",
            "http://mapped.test/",
            "http://v6loop.test/",
            "http://cgnat.test/",
            "http://nxdomain.test/",
            "file:///etc/passwd",
            "gopher://127.0.0.1:6379/_INFO",
            "ftp://public.test/",
            "http://user:pass@public.test/",
            "http://public.test@127.0.0.1/",
            "http://public.test/\r\nX-Injected: 1",
            "http://public.test:0/",
            "//public.test/",
            "http:///nohost",
        ];
        assert!(corpus.len() >= 40);
        for url in corpus {
            let r = guard.check(url, &Table).await;
            assert!(r.is_err(), "{url} was allowed: {r:?}");
        }
        let ok = guard
            .check("https://public.test/hook", &Table)
            .await
            .unwrap();
        assert_eq!(ok.addrs, vec!["93.184.216.34:443".parse().unwrap()]);
    }

    #[tokio::test]
    async fn allow_entries_open_internal_targets() {
        let guard = EgressGuard::new(&["127.0.0.0/8".into(), "private.test".into()]);
        assert!(guard.check("http://127.0.0.1:9000/h", &Table).await.is_ok());
        assert!(guard.check("http://private.test/h", &Table).await.is_ok());
        assert!(guard.check("http://10.0.0.1/h", &Table).await.is_err());
        assert!(guard.check("http://localhost/h", &Table).await.is_err());
    }
}
