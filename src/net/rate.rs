//! `io.runvz.net.rate=KBIT`: egress shaping of the container.
//!
//! The container's egress is its own devices' egress (the host end sees it as *ingress*, where
//! Linux can only police, i.e. drop, not shape). So the token bucket (TBF) is put on the
//! egress of each container-side device, through a netlink socket opened inside the
//! container's network namespace: packets queue instead of being dropped, and TCP adapts
//! smoothly to the rate. The container cannot remove it unless it has CAP_NET_ADMIN in its
//! network namespace (the OCI default capability set does not include it).

use super::netlink::{self, Socket};

const TC_H_ROOT: u32 = 0xFFFF_FFFF;
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_BURST: u16 = 6;
/// `TC_LINKLAYER_ETHERNET`: the kernel computes rates itself (no rate table needed).
const TC_LINKLAYER_ETHERNET: u8 = 1;

/// The TBF parameters for `kbit`: (bytes per second, burst bytes, queue limit bytes).
pub fn tbf_params(kbit: u64) -> (u32, u32, u32) {
    let bps = (kbit * 1000 / 8).min(u32::MAX as u64) as u32;
    // Burst: 10 ms worth of tokens, at least a few full frames (so a rate below one frame
    // per tick still passes full-size packets).
    let burst = (bps / 100).max(4 * 1514);
    // Queue: 50 ms of traffic plus a burst.
    let limit = (bps / 20).saturating_add(burst);
    (bps, burst, limit)
}

/// Replace the root qdisc of link `index` by a token bucket of `kbit` kbit/s.
pub fn shape(ct: &mut Socket, index: u32, kbit: u64) -> std::io::Result<()> {
    let (bps, burst, limit) = tbf_params(kbit);
    // struct tc_tbf_qopt { tc_ratespec rate, peakrate; u32 limit, buffer, mtu; }
    // struct tc_ratespec { u8 cell_log, linklayer; u16 overhead; s16 cell_align; u16 mpu; u32 rate; }
    let mut q = [0u8; 36];
    q[1] = TC_LINKLAYER_ETHERNET;
    q[8..12].copy_from_slice(&bps.to_ne_bytes());
    q[13] = TC_LINKLAYER_ETHERNET;
    q[24..28].copy_from_slice(&limit.to_ne_bytes());
    let mut opts = netlink::attr_bytes(TCA_TBF_PARMS, &q);
    opts.extend(netlink::attr_bytes(TCA_TBF_BURST, &burst.to_ne_bytes()));
    let tc = netlink::tcmsg(index, 0x0001_0000, TC_H_ROOT, 0);
    ct.add_tc(netlink::RTM_NEWQDISC, &tc, "tbf", &opts)
}
