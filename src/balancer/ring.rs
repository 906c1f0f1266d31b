//! Consistent-hash ring (ketama style) for [`Algorithm::ConsistentHash`](super::Algorithm).
//!
//! Every server contributes `VNODES_PER_WEIGHT * min(weight, MAX_RING_WEIGHT)` points. A point is
//! derived only from the server's `id` and the virtual-node number (`crc32("{id}-{vnode}")`, passed
//! through a bijective mixer), so adding or removing one server leaves every other server's points
//! exactly where they were: only keys owned by the changed server move.

use super::ServerSpec;

/// Virtual nodes per unit of weight (the classic ketama figure).
pub(super) const VNODES_PER_WEIGHT: u32 = 160;
/// Weights above this are clamped when building the ring, bounding it to 10,240 points per server.
pub(super) const MAX_RING_WEIGHT: u32 = 64;

/// The ring, stored as two parallel arrays so the binary search only touches the dense `points`.
#[derive(Debug, Clone, Default)]
pub(super) struct Ring {
    /// Sorted ascending.
    points: Vec<u32>,
    /// `owners[i]` is the server index owning `points[i]`.
    owners: Vec<u32>,
}

impl Ring {
    pub(super) fn new(servers: &[ServerSpec<'_>]) -> Ring {
        let total: usize = servers
            .iter()
            .map(|s| ring_weight(s.weight) as usize * VNODES_PER_WEIGHT as usize)
            .sum();
        let mut entries: Vec<(u32, u32)> = Vec::with_capacity(total);
        let mut digits = [0u8; 10];
        for (idx, server) in servers.iter().enumerate() {
            // Server indices fit in u32: a ring for more than 2^32 servers (>= 160 points each)
            // could never be allocated in the first place.
            let owner = idx as u32;
            let mut prefix = crc32fast::Hasher::new();
            prefix.update(server.id.as_bytes());
            prefix.update(b"-");
            for vnode in 0..ring_weight(server.weight) * VNODES_PER_WEIGHT {
                let mut h = prefix.clone();
                h.update(decimal(vnode, &mut digits));
                entries.push((fmix32(h.finalize()), owner));
            }
        }
        // Ties between different servers are broken by id (not index) so that a point collision
        // resolves the same way whichever other servers are present.
        entries.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| servers[a.1 as usize].id.cmp(servers[b.1 as usize].id))
                .then_with(|| a.1.cmp(&b.1))
        });
        let (points, owners) = entries.into_iter().unzip();
        Ring { points, owners }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.points.len()
    }

    /// First point clockwise from `key` (inclusive, with wraparound) whose owner is not skipped.
    /// Bounded by the ring length; `skip` is consulted once per run of same-owner points.
    #[inline]
    pub(super) fn lookup(&self, key: u64, skip: &impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let k = fold_key(key);
        let start = self.points.partition_point(|&p| p < k);
        let mut last_skipped = usize::MAX;
        for step in 0..len {
            let mut pos = start + step;
            if pos >= len {
                pos -= len;
            }
            let owner = self.owners[pos] as usize;
            if owner == last_skipped {
                continue;
            }
            if !skip(owner) {
                return Some(owner);
            }
            last_skipped = owner;
        }
        None
    }

    #[cfg(test)]
    pub(super) fn points(&self) -> &[u32] {
        &self.points
    }

    #[cfg(test)]
    pub(super) fn owners(&self) -> &[u32] {
        &self.owners
    }
}

/// Weight used for ring sizing: 0 is treated as 1, large weights are clamped.
pub(super) fn ring_weight(weight: u32) -> u32 {
    weight.clamp(1, MAX_RING_WEIGHT)
}

/// Fold a 64-bit key onto the 32-bit ring.
#[inline]
pub(super) fn fold_key(key: u64) -> u32 {
    (key ^ (key >> 32)) as u32
}

/// murmur3's 32-bit finalizer: bijective, so it keeps crc32's (lack of) collisions but breaks up
/// crc32's linearity, which otherwise clusters the points of near-identical "{id}-{vnode}" strings.
#[inline]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// ASCII decimal of `v` without allocating.
fn decimal(mut v: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_formats_like_display() {
        let mut buf = [0u8; 10];
        for v in [0u32, 7, 10, 159, 10_239, u32::MAX] {
            assert_eq!(decimal(v, &mut buf), v.to_string().as_bytes());
        }
    }

    #[test]
    fn points_match_crc_of_id_dash_vnode() {
        let servers = [ServerSpec {
            id: "10.0.0.1:80",
            weight: 1,
        }];
        let ring = Ring::new(&servers);
        assert_eq!(ring.len(), VNODES_PER_WEIGHT as usize);
        let mut expected: Vec<u32> = (0..VNODES_PER_WEIGHT)
            .map(|v| fmix32(crc32fast::hash(format!("10.0.0.1:80-{v}").as_bytes())))
            .collect();
        expected.sort_unstable();
        assert_eq!(ring.points(), &expected[..]);
    }
}
