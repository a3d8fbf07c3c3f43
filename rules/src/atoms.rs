//! Atoms: every distinct test the rules make, evaluated once per event, grouped by kind,
//! into a bitset the rules then read with masks.
//!
//! A rule set of 200 rules tests the same few fields over and over (`amount > 500`,
//! `amount > 2000`, `country in [...]`, `country == "US"`). Testing them one by one costs a
//! hard-to-predict branch each. Grouped, the tests of one field cost about one lookup:
//! - **number comparisons** with a constant, on one register (`amount > k` for many `k`),
//!   keep their constants sorted per operator, with atom ids in the same order, so the true
//!   atoms are a prefix (`>`, `>=`) or a suffix (`<`, `<=`) of the group: count, then fill
//!   a bit range. `==` joins the register's number sets below (`x == k` is `x in [k]`), and
//!   `!=` is a negated `==`;
//! - **string equality and membership** on one field (`==`, `in` a literal set or a list)
//!   map each member to the atoms it makes true: one hash lookup of the event's value;
//! - **prefixes and suffixes** of one field (`device starts_with "d-1"`) map each affix, per
//!   length, to its atoms: one lookup per distinct length;
//! - **IP membership** (`ip in` a network, a set or a list) maps each network, per prefix
//!   length, to its atoms: one lookup per distinct prefix length;
//! - everything else (arithmetic, `starts_with`, attributes, ...) is one test per atom,
//!   sorted by kind so consecutive tests take the same path.
//!
//! Atoms are deduplicated: `amount > 500` in ten rules is one atom.

use std::collections::HashMap;
use std::ops::Range;

use crate::branch::{Ctx, Op, Test, test};
use crate::event::{self, Field, IpNet};
use crate::ir::{CmpOp, StrOp};
use crate::masks::BitWriter;
use crate::sets::{SCAN_MEMBERS_MAX, canonical_bits, pack, pack_bytes};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Members -> the atoms they make true: scanned when there are a few (cheaper than hashing),
/// hashed beyond.
enum Lookup<K> {
    Scan(Vec<(K, Range<u32>)>),
    Map(FastMap<K, Range<u32>>),
}

impl<K: std::hash::Hash + Eq> Lookup<K> {
    fn new(entries: Vec<(K, Range<u32>)>) -> Lookup<K> {
        if entries.len() <= SCAN_MEMBERS_MAX {
            Lookup::Scan(entries)
        } else {
            Lookup::Map(entries.into_iter().collect())
        }
    }

    #[inline]
    fn get<Q>(&self, key: &Q) -> Option<&Range<u32>>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        match self {
            Lookup::Scan(v) => v.iter().find(|(k, _)| k.borrow() == key).map(|(_, r)| r),
            Lookup::Map(m) => m.get(key),
        }
    }
}

/// An atom as the compiler names it while collecting; final ids are assigned by
/// [`Collector::finish`], so that each group's atoms are contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Provisional(pub u32);

/// An atom or its negation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lit {
    pub atom: Provisional,
    pub negated: bool,
}

/// Which set a membership test is against, for deduplication.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SetId {
    /// `program.lists[i]`.
    List(u32),
    /// Literal members, sorted and deduplicated.
    Members(Vec<String>),
}

/// A rule's leaf test, classified.
pub(crate) enum Leaf {
    /// `register OP k`.
    Num {
        reg: u32,
        op: CmpOp,
        k: f64,
    },
    /// A string field `==`, `!=`, `in` or `not in` a set of strings.
    Str {
        field: Field,
        set: SetId,
        members: Vec<Box<str>>,
        negated: bool,
    },
    /// A number register `in` / `not in` a set of numbers.
    NumSet {
        reg: u32,
        set: SetId,
        members: Vec<f64>,
        negated: bool,
    },
    /// A string field `starts_with` / `ends_with` a constant of 1 to 15 bytes.
    Affix {
        field: Field,
        op: StrOp,
        k: Box<str>,
    },
    /// The event's IP `in` / `not in` a set of networks.
    Ip {
        set: SetId,
        nets: Vec<IpNet>,
        negated: bool,
    },
    Other(Test),
}

#[derive(PartialEq, Eq, Hash)]
enum Key {
    Num(u32, u8, u64),
    NumSet(u32, SetId),
    Affix(Field, u8, Box<str>),
    Str(Field, SetId),
    Ip(SetId),
}

/// Collects a rule set's atoms while its conditions compile.
#[derive(Default)]
pub(crate) struct Collector {
    atoms: Vec<Leaf>,
    seen: HashMap<Key, Provisional>,
}

impl Collector {
    /// The literal `leaf` is, or `Err(b)` for a constant. The atom is the test without its
    /// negation (`not in`, `!=`), which the literal carries.
    pub fn lit(&mut self, mut leaf: Leaf) -> Result<Lit, bool> {
        // `x != k` is `not (x == k)`, NaN included.
        let mut ne = false;
        if let Leaf::Num { op, .. } = &mut leaf
            && *op == CmpOp::Ne
        {
            *op = CmpOp::Eq;
            ne = true;
        }
        let (key, negated) = match &leaf {
            Leaf::Other(Test::Const(b)) => return Err(*b),
            Leaf::Num { reg, op, k } => (Some(Key::Num(*reg, *op as u8, canonical_bits(*k))), ne),
            Leaf::Str {
                field,
                set,
                negated,
                ..
            } => (Some(Key::Str(*field, set.clone())), *negated),
            Leaf::NumSet {
                reg, set, negated, ..
            } => (Some(Key::NumSet(*reg, set.clone())), *negated),
            Leaf::Affix { field, op, k } => (Some(Key::Affix(*field, *op as u8, k.clone())), false),
            Leaf::Ip { set, negated, .. } => (Some(Key::Ip(set.clone())), *negated),
            Leaf::Other(_) => (None, false),
        };
        if let Some(key) = &key
            && let Some(&atom) = self.seen.get(key)
        {
            return Ok(Lit { atom, negated });
        }
        let atom = Provisional(self.atoms.len() as u32);
        self.atoms.push(leaf);
        if let Some(key) = key {
            self.seen.insert(key, atom);
        }
        Ok(Lit { atom, negated })
    }

    /// The grouped evaluator, and each provisional atom's final id.
    pub fn finish(self) -> (Atoms, Vec<u32>) {
        let mut ids = Ids {
            remap: vec![u32::MAX; self.atoms.len()],
            next: 0,
        };
        // Grouped by register / field, each member with its provisional atom.
        let mut num_sides: Groups<u32, [Vec<(f64, usize)>; 4]> = Vec::new();
        let mut num_sets: Groups<u32, Vec<(u64, usize)>> = Vec::new();
        let mut strs: Groups<Field, Members> = Vec::new();
        let mut affixes: Groups<(Field, bool), Members> = Vec::new();
        let mut ip_nets: Groups<(bool, u8), Vec<(u128, usize)>> = Vec::new();
        let mut others: Vec<(Test, usize)> = Vec::new();
        for (p, atom) in self.atoms.into_iter().enumerate() {
            match atom {
                // `x == k` is `x in [k]`: one lookup for all of a register's constants.
                // Nothing equals NaN: that atom is in no group, so always false.
                Leaf::Num {
                    reg,
                    op: CmpOp::Eq | CmpOp::Ne,
                    k,
                } => {
                    if !k.is_nan() {
                        group(&mut num_sets, reg).push((canonical_bits(k), p));
                    }
                }
                // Nothing compares with NaN: that atom is in no group, so always false (and
                // a NaN would break the sorted order the ranges rely on).
                Leaf::Num { k, .. } if k.is_nan() => {}
                Leaf::Num { reg, op, k } => {
                    let side = match op {
                        CmpOp::Gt => Side::Gt,
                        CmpOp::Ge => Side::Ge,
                        CmpOp::Lt => Side::Lt,
                        _ => Side::Le,
                    };
                    group(&mut num_sides, reg)[side as usize].push((k, p));
                }
                Leaf::NumSet { reg, members, .. } => group(&mut num_sets, reg)
                    .extend(members.into_iter().map(|m| (canonical_bits(m), p))),
                Leaf::Str { field, members, .. } => {
                    group(&mut strs, field).extend(members.into_iter().map(|m| (m, p)))
                }
                Leaf::Affix { field, op, k } => {
                    group(&mut affixes, (field, op == StrOp::EndsWith)).push((k, p))
                }
                Leaf::Ip { nets, .. } => {
                    for net in nets {
                        let v4 = net.addr.is_ipv4();
                        let masked = event::mask(event::addr_bits(net.addr), v4, net.prefix);
                        group(&mut ip_nets, (v4, net.prefix)).push((masked, p));
                    }
                }
                Leaf::Other(t) => others.push((t, p)),
            }
        }
        // Thresholds first: their ids must follow their sorted constants.
        let mut nums = Vec::new();
        for (reg, sides) in num_sides {
            let all = [Side::Gt, Side::Ge, Side::Lt, Side::Le];
            for (side, mut v) in all.into_iter().zip(sides) {
                if v.is_empty() {
                    continue;
                }
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                let first: Vec<u32> = v.iter().map(|&(_, p)| ids.of(p)).collect();
                let base = first[0];
                nums.push(Sorted {
                    reg,
                    side,
                    ks: v.iter().map(|&(k, _)| k).collect(),
                    base,
                    words: base / 64..(base + v.len() as u32).div_ceil(64),
                });
            }
        }
        let num_sets = num_sets
            .into_iter()
            .map(|(reg, members)| Indexed::new(reg, members, &mut ids))
            .collect();
        let strs = strs
            .into_iter()
            .map(|(field, members)| {
                let (packed, long): (Vec<_>, Vec<_>) =
                    members.into_iter().partition(|(m, _)| pack(m).is_some());
                let packed = packed
                    .into_iter()
                    .map(|(m, p)| (pack(&m).expect("partitioned"), p));
                StrGroup {
                    packed: Indexed::new(field, packed, &mut ids),
                    long: Indexed::new(field, long, &mut ids),
                }
            })
            .collect();
        let affixes = affixes
            .into_iter()
            .flat_map(|((field, suffix), members)| {
                let mut by_len: Groups<u8, Vec<(u128, usize)>> = Vec::new();
                for (k, p) in members {
                    let key = pack(&k).expect("affixes are 15 bytes at most");
                    group(&mut by_len, k.len() as u8).push((key, p));
                }
                by_len
                    .into_iter()
                    .map(|(len, members)| Affix {
                        field,
                        suffix,
                        len: usize::from(len),
                        members: Indexed::new((), members, &mut ids),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut ips: Vec<Indexed<(bool, u8), u128>> = ip_nets
            .into_iter()
            .map(|(at, members)| Indexed::new(at, members, &mut ids))
            .collect();
        // Longest prefixes first (most specific).
        ips.sort_by_key(|g| std::cmp::Reverse(g.at.1));
        // Same kinds together: consecutive tests then take the same path.
        others.sort_by_key(|(t, _)| t.rank());
        let others = others.into_iter().map(|(t, p)| (ids.of(p), t)).collect();
        // An empty set's atom is in no group: it stays false.
        for p in 0..ids.remap.len() {
            ids.of(p);
        }
        let atoms = Atoms {
            count: ids.next as usize,
            // At least one word: padding terms read word 0.
            words: (ids.next as usize).div_ceil(64).max(1),
            nums,
            num_sets,
            strs,
            affixes,
            ips,
            others,
        };
        (atoms, ids.remap)
    }
}

/// Small groups, found by scanning: `(key, members)`.
type Groups<K, V> = Vec<(K, V)>;

/// String members, each with its provisional atom.
type Members = Vec<(Box<str>, usize)>;

/// The members of `key`'s group, added empty if missing.
fn group<K: PartialEq, V: Default>(groups: &mut Groups<K, V>, key: K) -> &mut V {
    let i = match groups.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            groups.push((key, V::default()));
            groups.len() - 1
        }
    };
    &mut groups[i].1
}

/// Members of one group (a register, a field, an affix length, a prefix length `at`)
/// -> the atoms each makes true, as ranges of one list of `(word, bits)`: a member that
/// sets 15 atoms of one word costs one OR.
struct Indexed<At, K> {
    at: At,
    members: Lookup<K>,
    words: Vec<(u32, u64)>,
}

impl<At, K: std::hash::Hash + Eq + Clone> Indexed<At, K> {
    fn new(at: At, members: impl IntoIterator<Item = (K, usize)>, ids: &mut Ids) -> Self {
        let mut by_key: Vec<(K, Vec<u32>)> = Vec::new();
        let mut slot: FastMap<K, usize> = FastMap::default();
        for (k, p) in members {
            let id = ids.of(p);
            let i = *slot.entry(k.clone()).or_insert_with(|| {
                by_key.push((k, Vec::new()));
                by_key.len() - 1
            });
            if !by_key[i].1.contains(&id) {
                by_key[i].1.push(id);
            }
        }
        let mut flat: Vec<(u32, u64)> = Vec::new();
        let entries = by_key
            .into_iter()
            .map(|(k, atoms)| {
                let start = flat.len();
                for id in atoms {
                    let (word, bit) = (id / 64, 1u64 << (id % 64));
                    match flat[start..].iter_mut().find(|(w, _)| *w == word) {
                        Some((_, bits)) => *bits |= bit,
                        None => flat.push((word, bit)),
                    }
                }
                (k, start as u32..flat.len() as u32)
            })
            .collect();
        Indexed {
            at,
            members: Lookup::new(entries),
            words: flat,
        }
    }

    /// Sets the bits of the atoms `key` makes true.
    #[inline]
    fn set<Q>(&self, key: &Q, bits: &mut [u64])
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if let Some(r) = self.members.get(key) {
            for &(word, set) in &self.words[r.start as usize..r.end as usize] {
                bits[word as usize] |= set;
            }
        }
    }
}

/// Final atom ids, handed out in order.
struct Ids {
    remap: Vec<u32>,
    next: u32,
}

impl Ids {
    /// The final id of provisional atom `p`, assigned now if it has none.
    fn of(&mut self, p: usize) -> u32 {
        if self.remap[p] == u32::MAX {
            self.remap[p] = self.next;
            self.next += 1;
        }
        self.remap[p]
    }
}

#[derive(Clone, Copy)]
enum Side {
    Gt,
    Ge,
    Lt,
    Le,
}

/// The constants one register is compared with by one operator, ascending; atom
/// `base + i` tests `ks[i]`.
struct Sorted {
    reg: u32,
    side: Side,
    ks: Vec<f64>,
    base: u32,
    /// The bitset words the atoms span.
    words: Range<u32>,
}

/// One string field's members: packed when 15 bytes or shorter, as text beyond.
struct StrGroup {
    packed: Indexed<Field, u128>,
    long: Indexed<Field, Box<str>>,
}

/// The prefixes (or suffixes) of one length of one field, packed.
struct Affix {
    field: Field,
    suffix: bool,
    len: usize,
    members: Indexed<(), u128>,
}

/// A rule set's atoms, evaluated once per event into a bitset (atom `i` is bit `i % 64` of
/// word `i / 64`).
pub(crate) struct Atoms {
    count: usize,
    words: usize,
    nums: Vec<Sorted>,
    /// Per register, members as [`canonical_bits`].
    num_sets: Vec<Indexed<u32, u64>>,
    strs: Vec<StrGroup>,
    affixes: Vec<Affix>,
    /// Per (IPv4?, prefix length), longest first: masked networks.
    ips: Vec<Indexed<(bool, u8), u128>>,
    others: Vec<(u32, Test)>,
}

/// Sets bits `from..to`, which lie in `words`: the same few words whatever the range, each
/// with a mask computed without branching on where the range starts or ends.
#[inline(always)]
fn set_range(bits: &mut [u64], words: Range<u32>, from: u32, to: u32) {
    for w in words {
        let (lo, hi) = (from.saturating_sub(w * 64), to.saturating_sub(w * 64));
        // Bits lo..hi of this word (none when lo >= hi); a shift by 64 or more is zero.
        let above = |n: u32| u64::MAX.checked_shl(n).unwrap_or(0);
        bits[w as usize] |= above(lo) & !above(hi);
    }
}

impl Atoms {
    pub fn count(&self) -> usize {
        self.count
    }

    /// Evaluates every atom for the event in `c` into `bits` (cleared and sized here;
    /// allocates only the first time).
    pub fn eval(&self, ops: &[Op], c: &Ctx, bits: &mut Vec<u64>) {
        bits.clear();
        bits.resize(self.words, 0);
        for s in &self.nums {
            let x = c.regs[s.reg as usize];
            if x.is_nan() {
                // Every comparison with NaN is false.
                continue;
            }
            let below = || s.ks.iter().filter(|&&k| k < x).count() as u32;
            let at_or_below = || s.ks.iter().filter(|&&k| k <= x).count() as u32;
            let end = s.base + s.ks.len() as u32;
            let (from, to) = match s.side {
                // x > k for the k below x: a prefix; x >= k: k at or below.
                Side::Gt => (s.base, s.base + below()),
                Side::Ge => (s.base, s.base + at_or_below()),
                // x < k for the k above x: a suffix; x <= k: at or above.
                Side::Lt => (s.base + at_or_below(), end),
                Side::Le => (s.base + below(), end),
            };
            set_range(bits, s.words.clone(), from, to);
        }
        for g in &self.num_sets {
            g.set(&canonical_bits(c.regs[g.at as usize]), bits);
        }
        for g in &self.strs {
            let s = g.packed.at.str(c.event);
            match pack(s) {
                Some(p) => g.packed.set(&p, bits),
                None => g.long.set(s, bits),
            }
        }
        for g in &self.affixes {
            let s = g.field.str(c.event).as_bytes();
            if s.len() < g.len {
                continue;
            }
            let cut = if g.suffix {
                &s[s.len() - g.len..]
            } else {
                &s[..g.len]
            };
            g.members
                .set(&pack_bytes(cut).expect("15 bytes at most"), bits);
        }
        for g in &self.ips {
            let (v4, prefix) = g.at;
            if v4 == c.ip_v4 {
                g.set(&event::mask(c.ip, v4, prefix), bits);
            }
        }
        let mut others = BitWriter::new(bits);
        for (id, t) in &self.others {
            others.set(*id, test(ops, t, c));
        }
    }
}
