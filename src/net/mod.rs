//! OpenVZ networking from annotations: `io.runvz.net.venet` (routed, layer 3),
//! `io.runvz.net.veth` (a layer-2 pair, vzctl `--netif_add` syntax, optionally in a bridge),
//! `io.runvz.net.veth.<IF>.ip` and `io.runvz.net.rate` (egress shaping).
//!
//! `Plan::from_spec` parses and checks everything before anything is made; `Plan::host_links`
//! names every link the runtime will make on the host (recorded before it is made);
//! `Plan::preflight` checks the host (names free, bridges there, addresses unused);
//! `Plan::setup` makes it all once the container's init (and so its network namespace)
//! exists; `teardown` removes the recorded links (and with them their peers, routes and
//! qdiscs) and is idempotent.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

pub mod netlink;
pub mod rate;
pub mod venet;
pub mod veth;

use netlink::Socket;

pub const VENET: &str = "io.runvz.net.venet";
pub const VETH: &str = "io.runvz.net.veth";
pub const RATE: &str = "io.runvz.net.rate";
const PREFIX: &str = "io.runvz.net.";
/// At most this many venet addresses (the anti-spoofing filter is a small classic BPF program).
const MAX_IPS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("annotation {key}: {problem}")]
    Bad { key: String, problem: String },
    #[error("network: {0}")]
    Conflict(String),
    #[error("network: {what}: {source}")]
    Netlink { what: String, source: io::Error },
}

/// A user's mistake in an annotation; control characters in the key or the quoted value are
/// escaped, so the error stays one line.
pub(crate) fn bad(key: &str, problem: impl Into<String>) -> NetError {
    NetError::Bad {
        key: crate::bundle::one_line(key),
        problem: crate::bundle::one_line(&problem.into()),
    }
}

/// Wrap an I/O error from a netlink step with what was being done.
pub(crate) fn nl(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// One `--netif_add` interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Veth {
    /// The name inside the container.
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub host_name: Option<String>,
    pub host_mac: Option<[u8; 6]>,
    pub bridge: Option<String>,
    /// `io.runvz.net.veth.<IF>.ip`: address/prefix inside, and the default gateway.
    pub ip: Option<(IpAddr, u8)>,
    pub gw: Option<IpAddr>,
}

/// What the network annotations ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub venet: Vec<IpAddr>,
    pub veths: Vec<Veth>,
    pub rate_kbit: Option<u64>,
}

/// A Linux interface name: 1-15 bytes, no '/', ':', whitespace, not "." or "..".
fn check_ifname(key: &str, s: &str) -> Result<(), NetError> {
    if s.is_empty()
        || s.len() > 15
        || s == "."
        || s == ".."
        || s.chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(bad(
            key,
            format!("{s:?} is not an interface name (1-15 characters, no '/', ':' or spaces)"),
        ));
    }
    Ok(())
}

fn parse_mac(key: &str, s: &str) -> Result<[u8; 6], NetError> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    let ok = parts.len() == 6
        && parts
            .iter()
            .zip(mac.iter_mut())
            .all(|(p, m)| p.len() == 2 && u8::from_str_radix(p, 16).map(|v| *m = v).is_ok());
    if !ok {
        return Err(bad(
            key,
            format!("{s:?} is not a MAC address (xx:xx:xx:xx:xx:xx)"),
        ));
    }
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(bad(key, format!("{s} is not a unicast MAC address")));
    }
    Ok(mac)
}

fn parse_ip(key: &str, s: &str) -> Result<IpAddr, NetError> {
    let ip: IpAddr = s
        .trim()
        .parse()
        .map_err(|_| bad(key, format!("{s:?} is not an IPv4 or IPv6 address")))?;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return Err(bad(key, format!("{ip} cannot be a container's address")));
    }
    if let IpAddr::V4(v4) = ip {
        if v4.is_broadcast() {
            return Err(bad(key, format!("{ip} cannot be a container's address")));
        }
    }
    Ok(ip)
}

fn parse_venet(key: &str, s: &str) -> Result<Vec<IpAddr>, NetError> {
    let mut ips = Vec::new();
    for part in s.split(',') {
        let ip = parse_ip(key, part)?;
        if ips.contains(&ip) {
            return Err(bad(key, format!("{ip} is given twice")));
        }
        ips.push(ip);
    }
    if ips.len() > MAX_IPS {
        return Err(bad(key, format!("at most {MAX_IPS} addresses")));
    }
    Ok(ips)
}

/// `IFNAME[,MAC,HOST_IFNAME,HOST_MAC,BRIDGE]` items separated by `;` (empty fields = default).
fn parse_veth(key: &str, s: &str) -> Result<Vec<Veth>, NetError> {
    let mut out: Vec<Veth> = Vec::new();
    for item in s.split(';').map(str::trim).filter(|i| !i.is_empty()) {
        let f: Vec<&str> = item.split(',').map(str::trim).collect();
        if f.len() > 5 {
            return Err(bad(
                key,
                format!("{item:?}: expected IFNAME[,MAC,HOST_IFNAME,HOST_MAC,BRIDGE]"),
            ));
        }
        let field = |i: usize| f.get(i).copied().filter(|v| !v.is_empty());
        let name = f[0].to_string();
        check_ifname(key, &name)?;
        if name == "lo" || name == venet::IFNAME {
            return Err(bad(key, format!("{name} is reserved inside the container")));
        }
        let host_name = field(2).map(str::to_string);
        if let Some(h) = &host_name {
            check_ifname(key, h)?;
        }
        let bridge = field(4).map(str::to_string);
        if let Some(b) = &bridge {
            check_ifname(key, b)?;
        }
        let v = Veth {
            name,
            mac: field(1).map(|m| parse_mac(key, m)).transpose()?,
            host_name,
            host_mac: field(3).map(|m| parse_mac(key, m)).transpose()?,
            bridge,
            ip: None,
            gw: None,
        };
        if out.iter().any(|o| o.name == v.name) {
            return Err(bad(key, format!("interface {} is given twice", v.name)));
        }
        if v.host_name.is_some() && out.iter().any(|o| o.host_name == v.host_name) {
            return Err(bad(
                key,
                format!(
                    "host interface {} is given twice",
                    v.host_name.as_deref().unwrap_or("")
                ),
            ));
        }
        out.push(v);
    }
    if out.is_empty() {
        return Err(bad(
            key,
            "expected IFNAME[,MAC,HOST_IFNAME,HOST_MAC,BRIDGE][;...]",
        ));
    }
    Ok(out)
}

/// Whether `a` and `b` share their first `prefix` bits (same family).
fn same_subnet(a: &IpAddr, b: &IpAddr, prefix: u8) -> bool {
    let (x, y) = (netlink::ip_bytes(a), netlink::ip_bytes(b));
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    x[..full] == y[..full] && (rest == 0 || (x[full] ^ y[full]) >> (8 - rest) == 0)
}

/// `CIDR[,gw=IP]`.
fn parse_veth_ip(key: &str, s: &str) -> Result<((IpAddr, u8), Option<IpAddr>), NetError> {
    let mut parts = s.split(',').map(str::trim);
    let cidr = parts.next().unwrap_or("");
    let (a, p) = cidr
        .split_once('/')
        .ok_or_else(|| bad(key, format!("{cidr:?} is not ADDRESS/PREFIX")))?;
    let ip = parse_ip(key, a)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| bad(key, format!("prefix {p:?} is not 0-{max}")))?;
    let mut gw = None;
    for extra in parts {
        let g = extra
            .strip_prefix("gw=")
            .ok_or_else(|| bad(key, format!("{extra:?}: expected gw=IP")))?;
        let g = parse_ip(key, g)?;
        if g.is_ipv4() != ip.is_ipv4() {
            return Err(bad(
                key,
                format!("gateway {g} is not of the address's family"),
            ));
        }
        if !same_subnet(&ip, &g, prefix) {
            return Err(bad(key, format!("gateway {g} is not in {ip}/{prefix}")));
        }
        gw = Some(g);
    }
    Ok(((ip, prefix), gw))
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.venet.is_empty() && self.veths.is_empty()
    }

    /// Parse the `io.runvz.net.*` annotations; `None` when there are none. The container
    /// must get a new network namespace of its own.
    pub fn from_spec(spec: &Spec) -> Result<Option<Plan>, NetError> {
        let empty = HashMap::new();
        let ann = spec.annotations().as_ref().unwrap_or(&empty);
        let Some(plan) = Plan::from_annotations(ann)? else {
            return Ok(None);
        };
        let new_netns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none())
            });
        if !new_netns {
            let key = if plan.venet.is_empty() { VETH } else { VENET };
            return Err(bad(
                key,
                "the container needs a new network namespace (linux.namespaces: {\"type\": \"network\"} without a path)",
            ));
        }
        Ok(Some(plan))
    }

    pub fn from_annotations(ann: &HashMap<String, String>) -> Result<Option<Plan>, NetError> {
        let mut plan = Plan::default();
        let mut ips: Vec<(&str, &str)> = Vec::new();
        let mut keys: Vec<&String> = ann.keys().filter(|k| k.starts_with(PREFIX)).collect();
        keys.sort();
        if keys.is_empty() {
            return Ok(None);
        }
        for k in keys {
            let v = ann[k].as_str();
            match k.as_str() {
                VENET => plan.venet = parse_venet(k, v)?,
                VETH => plan.veths = parse_veth(k, v)?,
                RATE => {
                    let n: u64 = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| (8..=10_000_000).contains(n))
                        .ok_or_else(|| {
                            bad(k, format!("{v:?} is not a rate in kbit/s (8-10000000)"))
                        })?;
                    plan.rate_kbit = Some(n);
                }
                _ => match k
                    .strip_prefix("io.runvz.net.veth.")
                    .and_then(|r| r.strip_suffix(".ip"))
                {
                    Some(ifname) => ips.push((k, ifname)),
                    None => return Err(bad(k, "unknown io.runvz.net annotation")),
                },
            }
        }
        for (key, ifname) in ips {
            let (ip, gw) = parse_veth_ip(key, &ann[key])?;
            let v = plan
                .veths
                .iter_mut()
                .find(|v| v.name == ifname)
                .ok_or_else(|| bad(key, format!("no interface {ifname} in {VETH}")))?;
            v.ip = Some(ip);
            v.gw = gw;
        }
        if plan.is_empty() {
            return Err(bad(RATE, format!("needs {VENET} or {VETH}")));
        }
        Ok(Some(plan))
    }

    /// Every link this plan makes on the host, in the order they are made.
    pub fn host_links(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        if !self.venet.is_empty() {
            out.push(venet::host_name(id));
        }
        out.extend(self.veths.iter().map(|v| veth::host_name(id, v)));
        out
    }

    /// Check the host before anything is made: link names free, bridges present, venet
    /// addresses not routed elsewhere already.
    pub fn preflight(&self, id: &str) -> Result<(), NetError> {
        let mut host = Socket::open().map_err(nl("netlink socket"))?;
        for name in self.host_links(id) {
            if host
                .link(&name)
                .map_err(nl(format!("looking up {name}")))?
                .is_some()
            {
                let key = if self.venet.is_empty() || name != venet::host_name(id) {
                    VETH
                } else {
                    VENET
                };
                return Err(bad(key, format!("host interface {name} already exists")));
            }
        }
        for v in &self.veths {
            if let Some(b) = &v.bridge {
                veth::bridge_index(&mut host, b)?;
            }
        }
        for ip in &self.venet {
            venet::check_free(&mut host, ip)?;
        }
        Ok(())
    }

    /// Make the network of the container whose init is `pid` (its network namespace exists).
    pub fn setup(&self, id: &str, pid: i32) -> Result<(), NetError> {
        let path = format!("/proc/{pid}/ns/net");
        let ns = std::fs::File::open(&path).map_err(nl(path))?;
        let mut host = Socket::open().map_err(nl("netlink socket"))?;
        let mut ct = Socket::open_in(ns.as_fd()).map_err(nl("netlink socket in the container"))?;
        if let Some(lo) = ct.link("lo").map_err(nl("lo"))? {
            ct.set_link(lo.index, netlink::IFF_UP, netlink::IFF_UP, None, None)
                .map_err(nl("bringing lo up"))?;
        }
        let mut inside = Vec::new();
        if !self.venet.is_empty() {
            inside.push(venet::setup(&mut host, &mut ct, &ns, id, &self.venet)?);
        }
        for v in &self.veths {
            inside.push(veth::setup(&mut host, &mut ct, &ns, id, v)?);
        }
        if let Some(kbit) = self.rate_kbit {
            for (index, name) in inside {
                rate::shape(&mut ct, index, kbit).map_err(nl(format!("rate limit on {name}")))?;
            }
        }
        Ok(())
    }
}

/// The alias runvz puts on a host link it made, so `teardown` never removes another's.
pub fn alias(id: &str) -> String {
    format!("runvz:{id}")
}

/// FNV-1a, 64 bits: stable across versions, for names and MACs derived from an ID.
pub(crate) fn hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// A host link name `vz` + 12 hex digits of a hash (14 characters, under IFNAMSIZ).
pub(crate) fn derived_name(parts: &[&str]) -> String {
    format!("vz{:012x}", hash(parts) & 0xffff_ffff_ffff)
}

/// A locally administered unicast MAC derived from `parts`.
pub(crate) fn derived_mac(parts: &[&str]) -> [u8; 6] {
    let b = hash(parts).to_be_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// Create a veth pair: `host` on the host, `peer` directly in the namespace `ns`.
pub(crate) fn make_pair(
    host: &mut Socket,
    ns: &std::fs::File,
    (host_name, host_mac): (&str, [u8; 6]),
    (peer_name, peer_mac): (&str, [u8; 6]),
) -> Result<u32, NetError> {
    use std::os::fd::AsRawFd;
    let mut m = netlink::Msg::new(
        netlink::RTM_NEWLINK,
        netlink::NLM_F_CREATE | netlink::NLM_F_EXCL,
        &netlink::ifinfomsg(0, 0, 0),
    );
    m.attr_str(netlink::IFLA_IFNAME, host_name)
        .attr(netlink::IFLA_ADDRESS, &host_mac)
        .begin(netlink::IFLA_LINKINFO)
        .attr_str(netlink::IFLA_INFO_KIND, "veth")
        .begin(netlink::IFLA_INFO_DATA)
        .begin(netlink::VETH_INFO_PEER)
        .raw(&netlink::ifinfomsg(0, 0, 0))
        .attr_str(netlink::IFLA_IFNAME, peer_name)
        .attr(netlink::IFLA_ADDRESS, &peer_mac)
        .attr_u32(netlink::IFLA_NET_NS_FD, ns.as_raw_fd() as u32)
        .end()
        .end()
        .end();
    host.request(&mut m).map_err(|e| {
        if e.raw_os_error() == Some(libc::EEXIST) {
            NetError::Conflict(format!("host interface {host_name} already exists"))
        } else {
            nl(format!("creating veth pair {host_name}/{peer_name}"))(e)
        }
    })?;
    let link = host
        .link(host_name)
        .map_err(nl(format!("looking up {host_name}")))?
        .ok_or_else(|| NetError::Conflict(format!("{host_name} vanished after creation")))?;
    Ok(link.index)
}

/// The index of `name` inside the container.
pub(crate) fn inner_index(ct: &mut Socket, name: &str) -> Result<u32, NetError> {
    ct.link(name)
        .map_err(nl(format!("looking up {name} in the container")))?
        .map(|l| l.index)
        .ok_or_else(|| NetError::Conflict(format!("{name} missing in the container")))
}

/// Remove the host links recorded for container `id`. A link already gone is fine (the
/// kernel removes a veth pair with the container's namespace); a link with someone else's
/// alias is left alone.
pub fn teardown(id: &str, links: &[String]) -> Result<(), NetError> {
    if links.is_empty() {
        return Ok(());
    }
    let mut host = Socket::open().map_err(nl("netlink socket"))?;
    let mine = alias(id);
    for name in links {
        let Some(link) = host.link(name).map_err(nl(format!("looking up {name}")))? else {
            continue;
        };
        if link
            .alias
            .as_deref()
            .is_some_and(|a| !a.is_empty() && a != mine)
        {
            tracing::warn!("not removing {name}: it belongs to {:?}", link.alias);
            continue;
        }
        host.del_link(name)
            .map_err(nl(format!("removing {name}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
