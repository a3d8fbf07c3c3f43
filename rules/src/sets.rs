//! Sets compiled for membership tests, each to its cheapest form: a scan for a handful of
//! members, a hash set beyond that; short strings packed into one integer; IP networks
//! grouped per prefix length, one hash lookup per distinct length.

use std::collections::HashSet;
use std::sync::Arc;

use crate::event::{self, IpNet};
use crate::ir::SetValues;

/// Bits of a number for hashing and set membership: `-0.0` is `0.0`.
pub(crate) fn canonical_bits(x: f64) -> u64 {
    if x == 0.0 { 0 } else { x.to_bits() }
}

/// Sets up to this many members are scanned; larger ones are hashed.
pub(crate) const SCAN_MEMBERS_MAX: usize = 8;

pub(crate) type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// A set compiled for membership tests. Shared (`Arc`) between the closures that use it.
#[derive(Clone)]
pub(crate) enum CompiledSet {
    Str(Arc<StrSet>),
    NumScan(Arc<[f64]>),
    NumHash(Arc<FastSet<u64>>),
    Ip(Arc<IpSet>),
}

/// Strings of up to 15 bytes are packed with their length into one `u128`, so testing a
/// short code (`country in [...]`) is integer compares, not `memcmp` calls.
pub(crate) struct StrSet {
    packed: Vec<u128>,
    long: Vec<Box<str>>,
    /// Every member, hashed, when the set is large.
    hashed: Option<FastSet<Box<str>>>,
}

#[inline(always)]
pub(crate) fn pack(s: &str) -> Option<u128> {
    pack_bytes(s.as_bytes())
}

/// [`pack`] for bytes (a prefix or suffix of a string, cut anywhere): the bytes in order,
/// zero-padded, with the length in the last byte (as `u128::from_le_bytes`).
///
/// Read as two overlapping loads rather than copied into a buffer: the copy is a `memcpy`
/// call, and reading the buffer back stalls on the store of the length byte.
#[inline(always)]
pub(crate) fn pack_bytes(b: &[u8]) -> Option<u128> {
    let n = b.len();
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u64::from(u32::from_le_bytes(b[at..at + 4].try_into().expect("4")));
    let (lo, hi) = match n {
        16.. => return None,
        // Bytes 8..n are the top n - 8 bytes of the last eight.
        9..=15 => (u64_at(0), u64_at(n - 8) >> (8 * (16 - n))),
        8 => (u64_at(0), 0),
        // Bytes 4..n are the top n - 4 bytes of the last four.
        4..=7 => (u32_at(0) | (u32_at(n - 4) >> (8 * (8 - n)) << 32), 0),
        _ => (b.iter().rev().fold(0, |w, &c| w << 8 | u64::from(c)), 0),
    };
    Some(u128::from(lo) | u128::from(hi | (n as u64) << 56) << 64)
}

impl StrSet {
    pub(crate) fn new(members: &[Box<str>]) -> StrSet {
        if members.len() > SCAN_MEMBERS_MAX {
            return StrSet {
                packed: Vec::new(),
                long: Vec::new(),
                hashed: Some(members.iter().cloned().collect()),
            };
        }
        let (mut packed, mut long) = (Vec::new(), Vec::new());
        for m in members {
            match pack(m) {
                Some(p) => packed.push(p),
                None => long.push(m.clone()),
            }
        }
        StrSet {
            packed,
            long,
            hashed: None,
        }
    }

    #[inline]
    pub(crate) fn contains(&self, s: &str) -> bool {
        if let Some(h) = &self.hashed {
            return h.contains(s);
        }
        match pack(s) {
            Some(p) => self.packed.contains(&p),
            None => self.long.iter().any(|m| &**m == s),
        }
    }
}

impl CompiledSet {
    pub(crate) fn new(values: &SetValues) -> CompiledSet {
        match values {
            SetValues::Str(v) => CompiledSet::Str(Arc::new(StrSet::new(v))),
            SetValues::Num(v) if v.len() <= SCAN_MEMBERS_MAX => {
                CompiledSet::NumScan(v.clone().into())
            }
            SetValues::Num(v) => {
                CompiledSet::NumHash(Arc::new(v.iter().map(|x| canonical_bits(*x)).collect()))
            }
            SetValues::Ip(nets) => CompiledSet::Ip(Arc::new(IpSet::new(nets))),
        }
    }

    #[inline]
    pub(crate) fn has_num(&self, x: f64) -> bool {
        match self {
            CompiledSet::NumScan(v) => v.contains(&x),
            CompiledSet::NumHash(h) => !x.is_nan() && h.contains(&canonical_bits(x)),
            _ => false,
        }
    }
}

/// IP networks: a few are scanned (one mask and compare each); many are grouped by prefix
/// length, one hash lookup per distinct length.
pub(crate) enum IpSet {
    Scan(Vec<(bool, u8, u128)>),
    Hashed {
        v4: Vec<(u8, FastSet<u128>)>,
        v6: Vec<(u8, FastSet<u128>)>,
    },
}

impl IpSet {
    pub(crate) fn new(nets: &[IpNet]) -> IpSet {
        let masked =
            |net: &IpNet| event::mask(event::addr_bits(net.addr), net.addr.is_ipv4(), net.prefix);
        if nets.len() <= SCAN_MEMBERS_MAX {
            return IpSet::Scan(
                nets.iter()
                    .map(|n| (n.addr.is_ipv4(), n.prefix, masked(n)))
                    .collect(),
            );
        }
        type Tables = Vec<(u8, FastSet<u128>)>;
        let (mut v4, mut v6): (Tables, Tables) = (Vec::new(), Vec::new());
        for net in nets {
            let table = if net.addr.is_ipv4() { &mut v4 } else { &mut v6 };
            match table.iter_mut().find(|(p, _)| *p == net.prefix) {
                Some((_, h)) => {
                    h.insert(masked(net));
                }
                None => {
                    let mut h = FastSet::default();
                    h.insert(masked(net));
                    table.push((net.prefix, h));
                }
            }
        }
        v4.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
        v6.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
        IpSet::Hashed { v4, v6 }
    }

    /// Whether the address `bits` (IPv4 when `v4`, see [`event::addr_bits`]) is in a member.
    #[inline]
    pub(crate) fn contains(&self, bits: u128, v4: bool) -> bool {
        match self {
            IpSet::Scan(nets) => nets
                .iter()
                .any(|&(is_v4, prefix, net)| is_v4 == v4 && event::mask(bits, v4, prefix) == net),
            IpSet::Hashed { v4: t4, v6: t6 } => {
                let table = if v4 { t4 } else { t6 };
                table
                    .iter()
                    .any(|(prefix, h)| h.contains(&event::mask(bits, v4, *prefix)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_the_bytes_then_the_length_at_every_length() {
        let mut r = fastrand::Rng::with_seed(5);
        for n in 0..=20 {
            for _ in 0..50 {
                let b: Vec<u8> = (0..n).map(|_| r.u8(..)).collect();
                let want = (n <= 15).then(|| {
                    let mut bytes = [0u8; 16];
                    bytes[..n].copy_from_slice(&b);
                    bytes[15] = n as u8;
                    u128::from_le_bytes(bytes)
                });
                assert_eq!(pack_bytes(&b), want, "{b:?}");
            }
        }
    }
}
