//! venet emulated on mainline Linux: a veth pair whose container end is `venet0`, both ends
//! NOARP with the same MAC (so frames need no neighbour resolution: the kernel addresses a
//! NOARP neighbour with the device's own MAC, which the peer accepts as its own). The
//! container holds its addresses as /32 and /128 with default routes through the device;
//! the host routes each address to its end. Anti-spoofing on the host end: rp_filter=1 for
//! IPv4, and a classic-BPF classifier on its ingress (clsact) that passes only IPv4/IPv6
//! packets whose source is one of the container's addresses and drops everything else.

use std::net::IpAddr;

use super::netlink::{self, Socket, IFF_NOARP, IFF_UP, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE};
use super::{nl, NetError};

/// The device's name inside the container, as in OpenVZ.
pub const IFNAME: &str = "venet0";

/// The host end of container `id`'s venet.
pub fn host_name(id: &str) -> String {
    super::derived_name(&[id, "venet"])
}

/// Fail when a host route to `ip` exists already (another container, or the host's own).
pub fn check_free(host: &mut Socket, ip: &IpAddr) -> Result<(), NetError> {
    if let Some(oif) = host.host_route(ip).map_err(nl("reading host routes"))? {
        return Err(super::bad(
            super::VENET,
            format!(
                "address {ip} is in use: the host already routes it to {}",
                netlink::index_name(oif)
            ),
        ));
    }
    Ok(())
}

fn write_sysctl(path: &str, value: &str) -> Result<(), NetError> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(path, value).map_err(nl(format!("writing {path}")))
}

/// Make the venet of container `id`; returns the container end's index and name.
pub fn setup(
    host: &mut Socket,
    ct: &mut Socket,
    ns: &std::fs::File,
    id: &str,
    ips: &[IpAddr],
) -> Result<(u32, String), NetError> {
    let hname = host_name(id);
    let mac = super::derived_mac(&[id, "venet"]);
    let hidx = super::make_pair(host, ns, (&hname, mac), (IFNAME, mac))?;
    host.set_link(
        hidx,
        IFF_UP | IFF_NOARP,
        IFF_UP | IFF_NOARP,
        None,
        Some(&super::alias(id)),
    )
    .map_err(nl(format!("bringing {hname} up")))?;
    write_sysctl(&format!("/proc/sys/net/ipv4/conf/{hname}/rp_filter"), "1")?;
    write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    if ips.iter().any(IpAddr::is_ipv6) {
        write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    }
    antispoof(host, hidx, ips).map_err(nl(format!("anti-spoofing filter on {hname}")))?;
    for ip in ips {
        let full = if ip.is_ipv4() { 32 } else { 128 };
        host.add_route(ip, full, hidx, None, RT_SCOPE_LINK)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EEXIST) {
                    super::bad(
                        super::VENET,
                        format!("address {ip} is in use: the host already routes it elsewhere"),
                    )
                } else {
                    nl(format!("host route {ip} dev {hname}"))(e)
                }
            })?;
    }
    let idx = super::inner_index(ct, IFNAME)?;
    ct.set_link(idx, IFF_UP | IFF_NOARP, IFF_UP | IFF_NOARP, None, None)
        .map_err(nl("bringing venet0 up"))?;
    for ip in ips {
        let full = if ip.is_ipv4() { 32 } else { 128 };
        ct.add_addr(idx, ip, full)
            .map_err(nl(format!("adding {ip} to venet0")))?;
    }
    let any4 = IpAddr::from([0u8; 4]);
    let any6 = IpAddr::from([0u16; 8]);
    for (any, scope) in [(any4, RT_SCOPE_LINK), (any6, RT_SCOPE_UNIVERSE)] {
        if ips.iter().any(|ip| ip.is_ipv4() == any.is_ipv4()) {
            ct.add_route(&any, 0, idx, None, scope)
                .map_err(nl(format!("default route {any}/0 dev venet0")))?;
        }
    }
    Ok((idx, IFNAME.to_string()))
}

// Classic BPF opcodes (linux/filter.h).
const LD_H_ABS: u16 = 0x28;
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..2].copy_from_slice(&code.to_ne_bytes());
    b[2] = jt;
    b[3] = jf;
    b[4..8].copy_from_slice(&k.to_ne_bytes());
    b
}

/// The anti-spoofing program: offsets are from the Ethernet header (cls_bpf pushes it back at
/// ingress). IPv4 source at 14+12, IPv6 source at 14+8. Returns OK for an allowed source,
/// SHOT for anything else (other sources, other protocols: venet carries IP only).
pub fn antispoof_program(ips: &[IpAddr]) -> Vec<[u8; 8]> {
    let v4: Vec<u32> = ips
        .iter()
        .filter_map(|i| match i {
            IpAddr::V4(a) => Some(u32::from_be_bytes(a.octets())),
            _ => None,
        })
        .collect();
    let v6: Vec<[u32; 4]> = ips
        .iter()
        .filter_map(|i| match i {
            IpAddr::V6(a) => {
                let o = a.octets();
                let w = |n: usize| u32::from_be_bytes([o[n], o[n + 1], o[n + 2], o[n + 3]]);
                Some([w(0), w(4), w(8), w(12)])
            }
            _ => None,
        })
        .collect();
    let mut p = vec![ins(LD_H_ABS, 0, 0, 12)];
    // IPv4 section: ld src; (jeq ip -> ret ok)*; ret shot.
    let v4_len = 2 + 2 * v4.len();
    p.push(ins(JEQ_K, 0, v4_len as u8, 0x0800));
    p.push(ins(LD_W_ABS, 0, 0, 26));
    for a in &v4 {
        p.push(ins(JEQ_K, 0, 1, *a));
        p.push(ins(RET_K, 0, 0, TC_ACT_OK));
    }
    p.push(ins(RET_K, 0, 0, TC_ACT_SHOT));
    // IPv6 section: per address four word compares, then ret ok.
    p.push(ins(JEQ_K, 0, (9 * v6.len()) as u8, 0x86dd));
    for a in &v6 {
        for (n, w) in a.iter().enumerate() {
            p.push(ins(LD_W_ABS, 0, 0, 22 + 4 * n as u32));
            p.push(ins(JEQ_K, 0, (7 - 2 * n) as u8, *w));
        }
        p.push(ins(RET_K, 0, 0, TC_ACT_OK));
    }
    p.push(ins(RET_K, 0, 0, TC_ACT_SHOT));
    p
}

const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
const TC_H_MIN_INGRESS: u32 = 0xFFF2;
const TCA_BPF_OPS_LEN: u16 = 4;
const TCA_BPF_OPS: u16 = 5;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
const ETH_P_ALL: u16 = 3;

/// clsact on the host end plus the direct-action classic BPF filter on its ingress (which is
/// the container's egress).
fn antispoof(host: &mut Socket, index: u32, ips: &[IpAddr]) -> std::io::Result<()> {
    let q = netlink::tcmsg(index, 0xFFFF_0000, TC_H_CLSACT, 0);
    host.add_tc(netlink::RTM_NEWQDISC, &q, "clsact", &[])?;
    let prog = antispoof_program(ips);
    let mut opts = netlink::attr_bytes(TCA_BPF_OPS_LEN, &(prog.len() as u16).to_ne_bytes());
    opts.extend(netlink::attr_bytes(TCA_BPF_OPS, &prog.concat()));
    opts.extend(netlink::attr_bytes(TCA_BPF_NAME, b"runvz-antispoof\0"));
    opts.extend(netlink::attr_bytes(
        TCA_BPF_FLAGS,
        &TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes(),
    ));
    let info = (1 << 16) | ETH_P_ALL.to_be() as u32;
    let f = netlink::tcmsg(
        index,
        0,
        (TC_H_CLSACT & 0xFFFF_0000) | TC_H_MIN_INGRESS,
        info,
    );
    host.add_tc(netlink::RTM_NEWTFILTER, &f, "bpf", &opts)
}
