//! veth mode (vzctl `--netif_add`): a layer-2 pair, the container end named as asked, the host
//! end named as asked (or `vz` + a hash of the ID and interface), MACs as asked (or derived,
//! locally administered), the host end enslaved to a bridge when one is named, and the address
//! and default gateway inside when `io.runvz.net.veth.<IF>.ip` gives them.

use std::net::IpAddr;

use super::netlink::{Socket, IFF_UP, RT_SCOPE_UNIVERSE};
use super::{nl, NetError, Veth};

/// The host end's name.
pub fn host_name(id: &str, v: &Veth) -> String {
    v.host_name
        .clone()
        .unwrap_or_else(|| super::derived_name(&[id, "veth", &v.name]))
}

/// The index of bridge `name`; a clear error when it is missing or not a bridge.
pub fn bridge_index(host: &mut Socket, name: &str) -> Result<u32, NetError> {
    let link = host
        .link(name)
        .map_err(nl(format!("looking up bridge {name}")))?
        .ok_or_else(|| {
            super::bad(
                super::VETH,
                format!("bridge {name} does not exist on the host"),
            )
        })?;
    if link.kind.as_deref() != Some("bridge") {
        return Err(super::bad(super::VETH, format!("{name} is not a bridge")));
    }
    Ok(link.index)
}

/// Make interface `v` of container `id`; returns the container end's index and name.
pub fn setup(
    host: &mut Socket,
    ct: &mut Socket,
    ns: &std::fs::File,
    id: &str,
    v: &Veth,
) -> Result<(u32, String), NetError> {
    let hname = host_name(id, v);
    let hmac = v
        .host_mac
        .unwrap_or_else(|| super::derived_mac(&[id, "veth-host", &v.name]));
    let mac = v
        .mac
        .unwrap_or_else(|| super::derived_mac(&[id, "veth", &v.name]));
    let master = match &v.bridge {
        Some(b) => Some(bridge_index(host, b)?),
        None => None,
    };
    let hidx = super::make_pair(host, ns, (&hname, hmac), (&v.name, mac))?;
    host.set_link(hidx, IFF_UP, IFF_UP, master, Some(&super::alias(id)))
        .map_err(nl(format!("bringing {hname} up")))?;
    let idx = super::inner_index(ct, &v.name)?;
    ct.set_link(idx, IFF_UP, IFF_UP, None, None)
        .map_err(nl(format!("bringing {} up", v.name)))?;
    if let Some((ip, prefix)) = &v.ip {
        ct.add_addr(idx, ip, *prefix)
            .map_err(nl(format!("adding {ip}/{prefix} to {}", v.name)))?;
    }
    if let Some(gw) = &v.gw {
        let any = if gw.is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u16; 8])
        };
        ct.add_route(&any, 0, idx, Some(gw), RT_SCOPE_UNIVERSE)
            .map_err(nl(format!("default route via {gw} dev {}", v.name)))?;
    }
    Ok((idx, v.name.clone()))
}
