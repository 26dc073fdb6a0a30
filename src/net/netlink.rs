//! A small synchronous rtnetlink client: build a request, send it, read the answer.
//!
//! Only what `net` needs: links (veth pairs, flags, master, alias), addresses, routes, qdiscs
//! and one classifier. Messages are built by hand in the kernel's layouts (`ifinfomsg`,
//! `ifaddrmsg`, `rtmsg`, `tcmsg`); no async runtime, no `ip`/`tc` commands.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWQDISC: u16 = 36;
pub const RTM_NEWTFILTER: u16 = 44;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MASTER: u16 = 10;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_IFALIAS: u16 = 20;
pub const IFLA_NET_NS_FD: u16 = 28;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;
pub const VETH_INFO_PEER: u16 = 1;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const IFA_F_PERMANENT: u32 = 0x80;

pub const RTA_DST: u16 = 1;
pub const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RT_TABLE_LOCAL: u8 = 255;
const RTPROT_STATIC: u8 = 4;
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

pub const TCA_KIND: u16 = 1;
pub const TCA_OPTIONS: u16 = 2;

pub const IFF_UP: u32 = libc::IFF_UP as u32;
pub const IFF_NOARP: u32 = libc::IFF_NOARP as u32;

/// An rtnetlink request under construction: header, fixed part, attributes.
pub struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Msg {
    /// A message of type `ty` whose fixed part (`ifinfomsg`, `rtmsg`, ...) is `fixed`.
    pub fn new(ty: u16, flags: u16, fixed: &[u8]) -> Msg {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(fixed);
        buf.resize(align4(buf.len()), 0);
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Msg {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Msg {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Msg {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v)
    }

    /// Start a nested attribute; close it with `end`.
    pub fn begin(&mut self, ty: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.attr(ty, &[])
    }

    /// Raw bytes inside the current nest (e.g. the peer's `ifinfomsg`).
    pub fn raw(&mut self, data: &[u8]) -> &mut Msg {
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn end(&mut self) -> &mut Msg {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }
}

/// `struct ifinfomsg` with an index, flags and the mask of flags to change.
pub fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// `struct tcmsg`.
pub fn tcmsg(index: u32, handle: u32, parent: u32, info: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&handle.to_ne_bytes());
    b[12..16].copy_from_slice(&parent.to_ne_bytes());
    b[16..20].copy_from_slice(&info.to_ne_bytes());
    b
}

fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

pub fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The attributes of a message part, as (type without flags, payload).
pub fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[align4(len).min(b.len())..];
    }
    out
}

/// A string attribute's text without the trailing NUL.
pub fn attr_text(data: &[u8]) -> String {
    String::from_utf8_lossy(data.split(|c| *c == 0).next().unwrap_or(&[])).into_owned()
}

/// One link as the kernel describes it.
pub struct Link {
    pub index: u32,
    pub alias: Option<String>,
    pub kind: Option<String>,
}

/// A netlink route socket, bound to the network namespace it was opened in.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// A socket in the caller's network namespace.
    pub fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2) and is ours alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Socket { fd, seq: 1 })
    }

    /// A socket in the network namespace `ns` (an fd of /proc/PID/ns/net): opened by a
    /// short-lived thread that enters the namespace, so this process never leaves its own.
    pub fn open_in(ns: BorrowedFd) -> io::Result<Socket> {
        let ns = ns.try_clone_to_owned()?;
        std::thread::spawn(move || -> io::Result<Socket> {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            Socket::open()
        })
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
    }

    /// Send `msg`; collect the payloads of the answers (for GET and dumps) until the kernel's
    /// acknowledgement or `NLMSG_DONE`. A negative acknowledgement is the error.
    pub fn request(&mut self, msg: &mut Msg) -> io::Result<Vec<Vec<u8>>> {
        let dump = u16::from_ne_bytes([msg.buf[6], msg.buf[7]]) & NLM_F_DUMP == NLM_F_DUMP;
        if !dump {
            let f = u16::from_ne_bytes([msg.buf[6], msg.buf[7]]) | NLM_F_ACK;
            msg.buf[6..8].copy_from_slice(&f.to_ne_bytes());
        }
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = msg.buf.len() as u32;
        msg.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        msg.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        // SAFETY: sending our own buffer on our own socket (the kernel is the default peer).
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.buf.as_ptr().cast(),
                msg.buf.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: receiving into a buffer we own, of the length given.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut b = &buf[..n as usize];
            while b.len() >= 16 {
                let mlen = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                let mseq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                if mlen < 16 || mlen > b.len() {
                    return Err(io::Error::other("truncated netlink answer"));
                }
                let payload = &b[16..mlen];
                b = &b[align4(mlen).min(b.len())..];
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = payload
                            .get(0..4)
                            .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                            .unwrap_or(-libc::EIO);
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    _ => out.push(payload.to_vec()),
                }
            }
        }
    }

    /// The link named `name`, or `None` when there is none.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut m = Msg::new(RTM_GETLINK, 0, &ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, name);
        let answers = match self.request(&mut m) {
            Ok(a) => a,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(a) = answers.first().filter(|a| a.len() >= 16) else {
            return Ok(None);
        };
        let index = u32::from_ne_bytes([a[4], a[5], a[6], a[7]]);
        let mut link = Link {
            index,
            alias: None,
            kind: None,
        };
        for (ty, data) in attrs(&a[16..]) {
            match ty {
                IFLA_IFALIAS => link.alias = Some(attr_text(data)),
                IFLA_LINKINFO => {
                    for (t, d) in attrs(data) {
                        if t == IFLA_INFO_KIND {
                            link.kind = Some(attr_text(d));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Some(link))
    }

    /// Change flags (`mask` says which), optionally master and alias, of link `index`.
    pub fn set_link(
        &mut self,
        index: u32,
        flags: u32,
        mask: u32,
        master: Option<u32>,
        alias: Option<&str>,
    ) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, 0, &ifinfomsg(index, flags, mask));
        if let Some(ms) = master {
            m.attr_u32(IFLA_MASTER, ms);
        }
        if let Some(a) = alias {
            m.attr(IFLA_IFALIAS, a.as_bytes());
        }
        self.request(&mut m).map(drop)
    }

    /// Delete the link named `name`; `Ok(false)` when it does not exist.
    pub fn del_link(&mut self, name: &str) -> io::Result<bool> {
        let mut m = Msg::new(RTM_DELLINK, 0, &ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, name);
        match self.request(&mut m) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Add `ip/prefix` to link `index` (no duplicate address detection: it is ours).
    pub fn add_addr(&mut self, index: u32, ip: &IpAddr, prefix: u8) -> io::Result<()> {
        let mut fixed = [0u8; 8];
        fixed[0] = family(ip);
        fixed[1] = prefix;
        fixed[4..8].copy_from_slice(&index.to_ne_bytes());
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &fixed);
        let b = ip_bytes(ip);
        m.attr(IFA_LOCAL, &b).attr(IFA_ADDRESS, &b);
        m.attr_u32(IFA_FLAGS, IFA_F_NODAD | IFA_F_PERMANENT);
        self.request(&mut m).map(drop)
    }

    /// Add a route to `dst/prefix` out of link `oif`, through `gw` when given. Fails with
    /// EEXIST when the main table already has a route to that destination.
    pub fn add_route(
        &mut self,
        dst: &IpAddr,
        prefix: u8,
        oif: u32,
        gw: Option<&IpAddr>,
        scope: u8,
    ) -> io::Result<()> {
        let fixed = [
            family(dst),
            prefix,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_STATIC,
            scope,
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &fixed);
        if prefix > 0 {
            m.attr(RTA_DST, &ip_bytes(dst));
        }
        m.attr_u32(RTA_OIF, oif);
        if let Some(g) = gw {
            m.attr(RTA_GATEWAY, &ip_bytes(g));
        }
        m.attr_u32(RTA_TABLE, RT_TABLE_MAIN as u32);
        self.request(&mut m).map(drop)
    }

    /// The output link of a route to exactly `ip` (/32 or /128) in the main table, or of the
    /// local-table entry when `ip` is one of the host's own addresses, if there is one.
    pub fn host_route(&mut self, ip: &IpAddr) -> io::Result<Option<u32>> {
        let full = if ip.is_ipv4() { 32 } else { 128 };
        let fixed = [family(ip), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut m = Msg::new(RTM_GETROUTE, NLM_F_DUMP, &fixed);
        let want = ip_bytes(ip);
        for r in self.request(&mut m)? {
            if r.len() < 12 || r[1] != full {
                continue;
            }
            let (mut dst, mut oif, mut table) = (None, None, r[4] as u32);
            for (ty, d) in attrs(&r[12..]) {
                match ty {
                    RTA_DST => dst = Some(d.to_vec()),
                    RTA_OIF if d.len() == 4 => {
                        oif = Some(u32::from_ne_bytes([d[0], d[1], d[2], d[3]]))
                    }
                    RTA_TABLE if d.len() == 4 => {
                        table = u32::from_ne_bytes([d[0], d[1], d[2], d[3]])
                    }
                    _ => {}
                }
            }
            let wanted = table == RT_TABLE_MAIN as u32 || table == RT_TABLE_LOCAL as u32;
            if wanted && dst.as_deref() == Some(&want[..]) {
                return Ok(Some(oif.unwrap_or(0)));
            }
        }
        Ok(None)
    }

    /// Add a qdisc or filter (`ty` = RTM_NEWQDISC/RTM_NEWTFILTER) of `kind` with `options`
    /// (already encoded attributes).
    pub fn add_tc(&mut self, ty: u16, tc: &[u8; 20], kind: &str, options: &[u8]) -> io::Result<()> {
        let mut m = Msg::new(ty, NLM_F_CREATE | NLM_F_EXCL, tc);
        m.attr_str(TCA_KIND, kind);
        m.begin(TCA_OPTIONS).raw(options).end();
        self.request(&mut m).map(drop)
    }
}

/// The name of link `index`, for messages (falls back to the number).
pub fn index_name(index: u32) -> String {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into buf.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return format!("link #{index}");
    }
    attr_text(&buf)
}

/// One encoded attribute, for option blocks built outside a `Msg` (tc options).
pub fn attr_bytes(ty: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(align4(4 + data.len()));
    v.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(data);
    v.resize(align4(v.len()), 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_round_trip() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE, &ifinfomsg(7, IFF_UP, IFF_UP));
        m.attr_str(IFLA_IFNAME, "vzx")
            .begin(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .begin(IFLA_INFO_DATA)
            .attr_u32(9, 42)
            .end()
            .end();
        // header (16) + ifinfomsg (16), then the attributes.
        let top = attrs(&m.buf[32..]);
        assert_eq!(top.len(), 2);
        assert_eq!(
            (top[0].0, attr_text(top[0].1).as_str()),
            (IFLA_IFNAME, "vzx")
        );
        assert_eq!(top[1].0, IFLA_LINKINFO);
        let info = attrs(top[1].1);
        assert_eq!(attr_text(info[0].1), "veth");
        let data = attrs(info[1].1);
        assert_eq!(data, vec![(9, &42u32.to_ne_bytes()[..])]);
        assert_eq!(m.buf.len() % 4, 0);
    }

    #[test]
    fn attrs_stop_at_garbage() {
        assert!(attrs(&[1, 0, 0]).is_empty());
        assert!(attrs(&[200, 0, 1, 0, 0, 0]).is_empty());
        assert_eq!(attr_bytes(3, b"ab").len(), 8);
    }
}
