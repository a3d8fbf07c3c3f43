//! Rule conditions as masks over the atoms' bits, evaluated without branching on the event.
//!
//! A condition in disjunctive normal form is a few conjunctions; a conjunction is a few
//! [`Term`]s, each "these atoms of word `w` are set, those clear". Rules are grouped by
//! shape so that the loops have fixed trip counts and the branch predictor has nothing to
//! guess: one conjunction of up to two terms (most rules), two such conjunctions, and any
//! other shape. Each group writes a bit per rule into a hit set, which the caller walks in
//! rule order.

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

/// The mask-evaluated rules of one rule set.
#[derive(Default)]
pub(crate) struct Masks {
    /// One term: one word of atoms decides.
    single: Vec<(u32, Term)>,
    /// One conjunction of two terms.
    one: Vec<(u32, [Term; 2])>,
    /// Two conjunctions of up to two terms each.
    two: Vec<(u32, [[Term; 2]; 2])>,
    /// Any other shape: `(rule, conjunctions[from..to])`, each `terms[from..to]`.
    other: Vec<(u32, u32, u32)>,
    conjunctions: Vec<(u32, u32)>,
    terms: Vec<Term>,
}

impl Masks {
    /// Adds rule `rule` whose condition holds when any of `conjunctions` does (none: never).
    pub fn add(&mut self, rule: u32, conjunctions: Vec<Vec<Term>>) {
        let pair = |c: &[Term]| -> Option<[Term; 2]> {
            match *c {
                [] => Some([Term::default(); 2]),
                [a] => Some([a, Term::default()]),
                [a, b] => Some([a, b]),
                _ => None,
            }
        };
        match conjunctions.as_slice() {
            [] => self.single.push((rule, NEVER)),
            [c] if c.is_empty() => self.single.push((rule, Term::default())),
            [c] if c.len() == 1 => self.single.push((rule, c[0])),
            [c] if c.len() == 2 => self.one.push((rule, pair(c).expect("two"))),
            [a, b] if a.len() <= 2 && b.len() <= 2 => self.two.push((
                rule,
                [pair(a).expect("two at most"), pair(b).expect("two at most")],
            )),
            all => {
                let from = self.conjunctions.len() as u32;
                for c in all {
                    let start = self.terms.len() as u32;
                    self.terms.extend_from_slice(c);
                    self.conjunctions.push((start, self.terms.len() as u32));
                }
                self.other
                    .push((rule, from, self.conjunctions.len() as u32));
            }
        }
    }

    /// Sets each rule's bit in `hits` if its condition holds on the atoms' `bits`.
    #[inline]
    pub fn eval(&self, bits: &[u64], hits: &mut [u64]) {
        let mut single = BitWriter::new(hits);
        for (rule, t) in &self.single {
            single.set(*rule, term(bits, t));
        }
        drop(single);
        let mut one = BitWriter::new(hits);
        for (rule, [a, b]) in &self.one {
            one.set(*rule, term(bits, a) & term(bits, b));
        }
        drop(one);
        let mut two = BitWriter::new(hits);
        for (rule, [[a, b], [c, d]]) in &self.two {
            let holds = (term(bits, a) & term(bits, b)) | (term(bits, c) & term(bits, d));
            two.set(*rule, holds);
        }
        drop(two);
        let mut other = BitWriter::new(hits);
        for &(rule, from, to) in &self.other {
            let mut any = false;
            for &(start, end) in &self.conjunctions[from as usize..to as usize] {
                let mut all = true;
                for t in &self.terms[start as usize..end as usize] {
                    all &= term(bits, t);
                }
                any |= all;
            }
            other.set(rule, any);
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
        let mut m = Masks::default();
        for (i, conjunctions) in rules.into_iter().enumerate() {
            let terms = conjunctions.into_iter().filter_map(conjunction).collect();
            m.add(i as u32, terms);
        }
        m
    }

    fn hits(m: &Masks, bits: &[u64]) -> u64 {
        let mut h = [0u64; 1];
        m.eval(bits, &mut h);
        h[0]
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
}
