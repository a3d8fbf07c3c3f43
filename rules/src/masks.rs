//! Rule conditions as masks over the atoms' bits, evaluated without branching on the event.
//!
//! A condition in disjunctive normal form is a few conjunctions; a conjunction is a few
//! [`Term`]s, each "these atoms of word `w` are set, those clear". Rules are grouped by
//! shape so that the loops have fixed trip counts and the branch predictor has nothing to
//! guess: one term, one conjunction of two terms, two such conjunctions, and any other
//! shape. Within a shape, rules are sorted by the words their terms read and packed four to
//! a [`Quad`], so that a run of quads loads its words once and tests four rules per
//! instruction (AVX2 when the CPU has it, one lane at a time otherwise). Each quad writes
//! four bits of a hit set by *position*; [`Masks::rule_at`] maps positions back to rules,
//! and the caller restores rule order.

/// Atoms `word` masked by `mask` equal `want`. The padding term (all zero) always holds.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub(crate) struct Term {
    pub word: u32,
    pub mask: u64,
    pub want: u64,
}

/// A term that never holds: no masked word equals 1.
const NEVER: Term = Term {
    word: 0,
    mask: 0,
    want: 1,
};

#[inline(always)]
fn term(bits: &[u64], t: &Term) -> bool {
    bits[t.word as usize] & t.mask == t.want
}

/// Sets bits (rule hits, atom results) a word at a time in a register, in ascending order:
/// `|=` straight into memory would chain every store to the next one's load.
pub(crate) struct BitWriter<'a> {
    hits: &'a mut [u64],
    word: usize,
    acc: u64,
}

impl<'a> BitWriter<'a> {
    pub fn new(hits: &'a mut [u64]) -> BitWriter<'a> {
        BitWriter {
            hits,
            word: 0,
            acc: 0,
        }
    }

    #[inline(always)]
    pub fn set(&mut self, rule: u32, holds: bool) {
        let word = (rule / 64) as usize;
        if word != self.word {
            self.hits[self.word] |= self.acc;
            self.word = word;
            self.acc = 0;
        }
        self.acc |= u64::from(holds) << (rule % 64);
    }
}

impl Drop for BitWriter<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.hits.get_mut(self.word) {
            *w |= self.acc;
        }
    }
}

/// Marks a position that no rule holds (the padding of a quad or of a section).
const NO_RULE: u32 = u32::MAX;

/// Four rules of one shape side by side, lane `i` being the `i`th: `N` terms each. With
/// `N == 4` a lane holds when `(t0 and t1) or (t2 and t3)`, otherwise when all terms do.
/// A padding lane's terms never hold (mask 0, want 1).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Quad<const N: usize> {
    mask: [[u64; 4]; N],
    want: [[u64; 4]; N],
}

/// Consecutive quads (up to `end`) whose lanes read the same atom words, term by term: the
/// words are loaded once per run and compared against four rules at a time.
#[derive(Clone, Copy)]
struct Run<const N: usize> {
    words: [u32; N],
    end: u32,
}

/// The rules of one shape: quad `k`'s lanes are hit positions `base + 4k ..`.
struct Section<const N: usize> {
    runs: Vec<Run<N>>,
    quads: Vec<Quad<N>>,
    /// A multiple of 64, so that each 16 quads fill one hit word.
    base: u32,
}

impl<const N: usize> Section<N> {
    /// Sorts `rules` by the words their terms read and packs them four to a quad; appends
    /// each lane's rule to `rule_at`, padded to a whole hit word.
    fn build(mut rules: Vec<(u32, [Term; N])>, rule_at: &mut Vec<u32>) -> Section<N> {
        let base = rule_at.len() as u32;
        let words = |terms: &[Term; N]| terms.map(|t| t.word);
        rules.sort_by_key(|(rule, terms)| (words(terms), *rule));
        let mut runs = Vec::new();
        let mut quads = Vec::new();
        for run in rules.chunk_by(|a, b| words(&a.1) == words(&b.1)) {
            for four in run.chunks(4) {
                let mut q = Quad {
                    mask: [[0; 4]; N],
                    want: [[1; 4]; N],
                };
                for (lane, (rule, terms)) in four.iter().enumerate() {
                    for (i, t) in terms.iter().enumerate() {
                        q.mask[i][lane] = t.mask;
                        q.want[i][lane] = t.want;
                    }
                    rule_at.push(*rule);
                }
                rule_at.resize(rule_at.len() + 4 - four.len(), NO_RULE);
                quads.push(q);
            }
            runs.push(Run {
                words: words(&run[0].1),
                end: quads.len() as u32,
            });
        }
        rule_at.resize(rule_at.len().next_multiple_of(64), NO_RULE);
        Section { runs, quads, base }
    }

    /// Writes the section's hit words: 4 bits per quad, from `L`.
    ///
    /// # Safety
    /// The CPU has the features `L` needs (see [`Lanes`]).
    #[inline(always)]
    unsafe fn eval<L: Lanes>(&self, bits: &[u64], hits: &mut [u64]) {
        let hits = &mut hits[(self.base / 64) as usize..];
        let (mut acc, mut k, mut from) = (0u64, 0usize, 0usize);
        for run in &self.runs {
            let words = run.words.map(|w| bits[w as usize]);
            for q in &self.quads[from..run.end as usize] {
                // Each quad enters at the top and moves down: constant shifts only.
                // SAFETY: passed on from the caller.
                acc = acc >> 4 | unsafe { L::quad(&words, q) } << 60;
                k += 1;
                if k % 16 == 0 {
                    hits[k / 16 - 1] = acc;
                }
            }
            from = run.end as usize;
        }
        if k % 16 != 0 {
            hits[k / 16] = acc >> (4 * (16 - k % 16));
        }
    }
}

/// Evaluates one quad against its run's atom words: bit `i` set if lane `i` holds.
trait Lanes {
    /// # Safety
    /// The CPU has the features the implementation is built for ([`Portable`]: none).
    unsafe fn quad<const N: usize>(words: &[u64; N], q: &Quad<N>) -> u64;
}

/// One lane at a time, on any target.
struct Portable;

impl Lanes for Portable {
    #[inline(always)]
    unsafe fn quad<const N: usize>(words: &[u64; N], q: &Quad<N>) -> u64 {
        let mut hits = 0;
        for lane in 0..4 {
            let mut t = [false; N];
            for i in 0..N {
                t[i] = words[i] & q.mask[i][lane] == q.want[i][lane];
            }
            let holds = if N == 4 {
                (t[0] & t[1]) | (t[2] & t[3])
            } else {
                t.iter().fold(true, |all, &t| all & t)
            };
            hits |= u64::from(holds) << lane;
        }
        hits
    }
}

/// Four lanes per instruction, on x86-64 with AVX2 (checked at run time).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Lanes, Quad};

    pub(super) struct Avx2;

    /// Lanes where `words & mask == want`, all ones or all zeros.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn term(words: __m256i, mask: &[u64; 4], want: &[u64; 4]) -> __m256i {
        // SAFETY: `Quad` is 32-byte aligned and each row is 32 bytes at a 32-byte offset.
        let (mask, want) = unsafe {
            (
                _mm256_load_si256(mask.as_ptr().cast()),
                _mm256_load_si256(want.as_ptr().cast()),
            )
        };
        _mm256_cmpeq_epi64(_mm256_and_si256(words, mask), want)
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn quad<const N: usize>(words: &[u64; N], q: &Quad<N>) -> u64 {
        let t = |i: usize| term(_mm256_set1_epi64x(words[i] as i64), &q.mask[i], &q.want[i]);
        let holds = if N == 4 {
            _mm256_or_si256(_mm256_and_si256(t(0), t(1)), _mm256_and_si256(t(2), t(3)))
        } else {
            (1..N).fold(t(0), |all, i| _mm256_and_si256(all, t(i)))
        };
        _mm256_movemask_pd(_mm256_castsi256_pd(holds)) as u64
    }

    impl Lanes for Avx2 {
        /// # Safety
        /// The CPU has AVX2.
        #[inline(always)]
        unsafe fn quad<const N: usize>(words: &[u64; N], q: &Quad<N>) -> u64 {
            // SAFETY: the caller's contract.
            unsafe { quad(words, q) }
        }
    }
}

/// Rules as they are added, by shape, before they are laid out.
#[derive(Default)]
pub(crate) struct MaskRules {
    single: Vec<(u32, [Term; 1])>,
    one: Vec<(u32, [Term; 2])>,
    two: Vec<(u32, [Term; 4])>,
    other: Vec<(u32, Vec<Vec<Term>>)>,
}

impl MaskRules {
    /// Adds rule `rule` whose condition holds when any of `conjunctions` does (none: never).
    pub fn add(&mut self, rule: u32, conjunctions: Vec<Vec<Term>>) {
        // The terms of a conjunction of two at most, by word (the key quads are sorted by).
        let pair = |c: &[Term]| -> Option<[Term; 2]> {
            let mut p = match *c {
                [] => [Term::default(); 2],
                [a] => [a, Term::default()],
                [a, b] => [a, b],
                _ => return None,
            };
            p.sort_by_key(|t| t.word);
            Some(p)
        };
        match conjunctions.as_slice() {
            [] => self.single.push((rule, [NEVER])),
            [c] if c.len() <= 1 => self
                .single
                .push((rule, [c.first().copied().unwrap_or_default()])),
            [c] if c.len() == 2 => self.one.push((rule, pair(c).expect("two"))),
            [a, b] if a.len() <= 2 && b.len() <= 2 => {
                let mut both = [pair(a).expect("two at most"), pair(b).expect("two at most")];
                both.sort_by_key(|p| p.map(|t| t.word));
                let [[a, b], [c, d]] = both;
                self.two.push((rule, [a, b, c, d]));
            }
            _ => self.other.push((rule, conjunctions)),
        }
    }

    /// Lays the rules out in hit positions, then one more position for each of `branches`,
    /// the rules that are not masks (see [`Masks::branch_position`]).
    pub fn finish(self, branches: &[u32]) -> Masks {
        let mut rule_at = Vec::new();
        let single = Section::build(self.single, &mut rule_at);
        let one = Section::build(self.one, &mut rule_at);
        let two = Section::build(self.two, &mut rule_at);
        let other_base = rule_at.len() as u32;
        let (mut conjunctions, mut terms) = (Vec::new(), Vec::new());
        let other = self
            .other
            .into_iter()
            .map(|(rule, all)| {
                rule_at.push(rule);
                let from = conjunctions.len() as u32;
                for c in all {
                    let start = terms.len() as u32;
                    terms.extend(c);
                    conjunctions.push((start, terms.len() as u32));
                }
                (from, conjunctions.len() as u32)
            })
            .collect();
        let branch_base = rule_at.len() as u32;
        rule_at.extend_from_slice(branches);
        let hit_words = rule_at.len().div_ceil(64).max(1);
        rule_at.resize(hit_words * 64, NO_RULE);
        Masks {
            single,
            one,
            two,
            other,
            other_base,
            conjunctions,
            terms,
            branch_base,
            rule_at,
            #[cfg(target_arch = "x86_64")]
            avx2: std::arch::is_x86_feature_detected!("avx2"),
        }
    }
}

/// The mask-evaluated rules of one rule set, laid out in hit positions: the rules of each
/// shape sorted by the atom words they read, so that four are compared at once. The hit
/// positions are therefore not in rule order: [`Masks::rule_at`] maps them back.
pub(crate) struct Masks {
    /// One term: one word of atoms decides.
    single: Section<1>,
    /// One conjunction of two terms.
    one: Section<2>,
    /// Two conjunctions of up to two terms each.
    two: Section<4>,
    /// Any other shape, at `other_base + i`: `conjunctions[from..to]`, each `terms[from..to]`.
    other: Vec<(u32, u32)>,
    other_base: u32,
    conjunctions: Vec<(u32, u32)>,
    terms: Vec<Term>,
    /// Where the branch-program rules' positions start.
    branch_base: u32,
    /// The rule at each hit position, [`NO_RULE`] for padding.
    rule_at: Vec<u32>,
    #[cfg(target_arch = "x86_64")]
    avx2: bool,
}

impl Masks {
    /// The hit words [`Masks::eval`] writes (every position, branch rules' included).
    pub fn hit_words(&self) -> usize {
        self.rule_at.len() / 64
    }

    /// The rule at each hit position: `u32::MAX` for padding, which is never hit.
    pub fn rule_at(&self) -> &[u32] {
        &self.rule_at
    }

    /// The hit position of `branches[i]` as handed to [`MaskRules::finish`].
    pub fn branch_position(&self, i: usize) -> u32 {
        self.branch_base + i as u32
    }

    /// Writes `hits` (of [`Masks::hit_words`] words): a position's bit is set if its rule's
    /// condition holds on the atoms' `bits`. Branch rules' bits are left clear.
    #[inline]
    pub fn eval(&self, bits: &[u64], hits: &mut [u64]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 was detected when the masks were built.
            unsafe { self.eval_avx2(bits, hits) };
            return;
        }
        // SAFETY: `Portable` needs no CPU feature.
        unsafe { self.eval_with::<Portable>(bits, hits) };
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn eval_avx2(&self, bits: &[u64], hits: &mut [u64]) {
        // SAFETY: this function only runs on a CPU with AVX2 (its own contract).
        unsafe { self.eval_with::<avx2::Avx2>(bits, hits) };
    }

    #[inline(always)]
    /// # Safety
    /// The CPU has the features `L` needs (see [`Lanes`]).
    unsafe fn eval_with<L: Lanes>(&self, bits: &[u64], hits: &mut [u64]) {
        hits.fill(0);
        // SAFETY: passed on from the caller.
        unsafe {
            self.single.eval::<L>(bits, hits);
            self.one.eval::<L>(bits, hits);
            self.two.eval::<L>(bits, hits);
        }
        let mut other = BitWriter::new(hits);
        for (i, &(from, to)) in self.other.iter().enumerate() {
            let mut any = false;
            for &(start, end) in &self.conjunctions[from as usize..to as usize] {
                let mut all = true;
                for t in &self.terms[start as usize..end as usize] {
                    all &= term(bits, t);
                }
                any |= all;
            }
            other.set(self.other_base + i as u32, any);
        }
    }
}

/// The terms of one conjunction of `(atom id, negated)` literals, or `None` if it can
/// never hold (`x and not x`).
pub(crate) fn conjunction(lits: impl IntoIterator<Item = (u32, bool)>) -> Option<Vec<Term>> {
    let mut terms: Vec<Term> = Vec::new();
    for (id, negated) in lits {
        let (word, bit) = (id / 64, 1u64 << (id % 64));
        let want = if negated { 0 } else { bit };
        match terms.iter_mut().find(|t| t.word == word) {
            Some(t) if t.mask & bit != 0 && t.want & bit != want => return None,
            Some(t) => {
                t.mask |= bit;
                t.want |= want;
            }
            None => terms.push(Term {
                word,
                mask: bit,
                want,
            }),
        }
    }
    Some(terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masks(rules: Vec<Vec<Vec<(u32, bool)>>>) -> Masks {
        let mut m = MaskRules::default();
        for (i, conjunctions) in rules.into_iter().enumerate() {
            let terms = conjunctions.into_iter().filter_map(conjunction).collect();
            m.add(i as u32, terms);
        }
        m.finish(&[])
    }

    /// The hits in rule order: bit `r` for rule `r`.
    fn hits(m: &Masks, bits: &[u64]) -> u64 {
        let mut h = vec![0u64; m.hit_words()];
        m.eval(bits, &mut h);
        let mut by_rule = 0;
        for (pos, &rule) in m.rule_at().iter().enumerate() {
            if h[pos / 64] >> (pos % 64) & 1 == 1 {
                assert_ne!(rule, NO_RULE, "padding position {pos} is hit");
                by_rule |= 1 << rule;
            }
        }
        by_rule
    }

    #[test]
    fn every_shape_agrees_with_the_formula() {
        // Atoms 0, 1 in word 0; 64, 65 in word 1; 128 in word 2.
        let m = masks(vec![
            vec![vec![(0, false)]],                                       // 0: a
            vec![vec![(0, false), (64, true)]],                           // 1: a and not c
            vec![vec![(0, false)], vec![(65, false)]],                    // 2: a or d
            vec![vec![(0, false), (64, false), (128, false)]],            // 3: a and c and e
            vec![vec![(1, false)], vec![(64, false)], vec![(128, true)]], // 4: b or c or not e
            vec![vec![(0, false), (0, true)]],                            // 5: a and not a
            vec![vec![]],                                                 // 6: true
            vec![],                                                       // 7: false
        ]);
        for combo in 0u32..32 {
            let atom = |i: u32| combo >> i & 1 == 1;
            let (a, b, c, d, e) = (atom(0), atom(1), atom(2), atom(3), atom(4));
            let bits = [
                u64::from(a) | u64::from(b) << 1,
                u64::from(c) | u64::from(d) << 1,
                u64::from(e),
            ];
            let want = [
                a,
                a && !c,
                a || d,
                a && c && e,
                b || c || !e,
                false,
                true,
                false,
            ];
            let got = hits(&m, &bits);
            for (rule, want) in want.iter().enumerate() {
                assert_eq!(
                    got >> rule & 1 == 1,
                    *want,
                    "rule {rule}, atoms {combo:05b}"
                );
            }
        }
    }

    /// Many rules of every shape over six words, so that runs, padding lanes and sections
    /// longer than one hit word all occur: the four-lane path agrees with one lane at a
    /// time, and both with the formula.
    #[test]
    fn four_lanes_agree_with_one_lane_and_the_formula() {
        let mut r = fastrand::Rng::with_seed(3);
        let atoms = 6 * 64;
        let mut rules: Vec<Vec<Vec<(u32, bool)>>> = Vec::new();
        for _ in 0..700 {
            let conjunctions = match r.u8(0..10) {
                0..=3 => 1,
                4..=7 => 2,
                8 => 0,
                _ => r.usize(3..5),
            };
            rules.push(
                (0..conjunctions)
                    .map(|_| {
                        (0..r.usize(0..4))
                            .map(|_| (r.u32(0..atoms), r.bool()))
                            .collect()
                    })
                    .collect(),
            );
        }
        let mut m = MaskRules::default();
        for (i, c) in rules.iter().enumerate() {
            m.add(
                i as u32,
                c.iter().cloned().filter_map(conjunction).collect(),
            );
        }
        let m = m.finish(&[700, 701]);
        assert_eq!(m.rule_at()[m.branch_position(1) as usize], 701);
        for _ in 0..300 {
            let bits: Vec<u64> = (0..6).map(|_| r.u64(..) & r.u64(..)).collect();
            let mut portable = vec![0u64; m.hit_words()];
            // SAFETY: `Portable` needs no CPU feature.
            unsafe { m.eval_with::<Portable>(&bits, &mut portable) };
            let mut fast = vec![!0u64; m.hit_words()];
            m.eval(&bits, &mut fast);
            assert_eq!(fast, portable);
            for (pos, &rule) in m.rule_at().iter().enumerate() {
                let hit = portable[pos / 64] >> (pos % 64) & 1 == 1;
                if rule == NO_RULE || rule >= 700 {
                    assert!(!hit, "padding or branch position {pos} is hit");
                    continue;
                }
                let atom = |id: u32| bits[(id / 64) as usize] >> (id % 64) & 1 == 1;
                let want = rules[rule as usize]
                    .iter()
                    .any(|c| c.iter().all(|&(id, negated)| atom(id) != negated));
                assert_eq!(hit, want, "rule {rule} at {pos}");
            }
        }
    }
}
