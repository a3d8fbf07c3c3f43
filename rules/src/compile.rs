//! The compiler: a checked [`Program`] -> a [`RuleSet`], built once per epoch.
//!
//! Constants are folded first (`amount > 10 * 100` compares with 1000). Per event:
//! 1. the event is read into a register file ([`crate::branch::Layout`]);
//! 2. velocity is recorded: each key the rule set counts by is hashed and looked up once,
//!    whatever the number of functions;
//! 3. every distinct leaf test of the rules (an *atom*) is evaluated once, grouped by kind
//!    ([`crate::atoms`]), into a bitset;
//! 4. each rule's condition, in disjunctive normal form, is a few mask-and-compare steps
//!    over the bitset, with no branch on the event's data, four rules at a time
//!    ([`crate::masks`]); a condition that expands to more than a few conjunctions runs as
//!    a branch program over the atoms instead;
//! 5. the policy arms, which read the score, run as branch programs.
//!
//! No closure tree, no name lookup, no allocation per event.

use std::sync::atomic::{AtomicU64, Ordering};

use verdict_net::{Action, ArchivedEvent};

use crate::atoms::Atoms;
use crate::branch::{self, Builder, Ctx, Dnf, HashFn, Layout, NumFn, Op, SCORE};
use crate::event::Ty;
use crate::ir::*;
use crate::masks::{self, MaskRules, Masks};
use crate::velocity::{Sample, VelocityState};

/// A hit position's rule and what it does to the decision when it holds (a shadow rule:
/// nothing).
struct Slot {
    score: i64,
    rule: u32,
    /// The action's [`STRENGTH`] index: 0 for none, so the walk takes a maximum.
    strength: u8,
}

/// Actions by strength after "none": index `a as u8 + 1`, the order [`stronger`] uses.
const STRENGTH: [Option<Action>; 4] = [
    None,
    Some(Action::Allow),
    Some(Action::Review),
    Some(Action::Deny),
];

enum SampleFn {
    Count,
    Sum(NumFn),
    Distinct(HashFn),
}

struct CompiledVelocity {
    key: VelocityKey,
    /// Its place among the functions of the same key (where its value sits in what that
    /// key's owner returns, see [`RuleSet::record_key`]).
    rank: u32,
    sample: SampleFn,
}

/// One model feature: a number expression, or a condition (1 or 0).
enum FeatureFn {
    Num(NumFn),
    Cond(u32),
    /// `features[i]` of a model whose absent features are missing: NaN past the event's.
    Slot(usize),
}

/// A compiled, immutable rule set: what one epoch decides with. Shared by every core
/// (`Arc<RuleSet>`); evaluation takes the core's own velocity state and scratch space.
pub struct RuleSet {
    program: Program,
    ops: Vec<Op>,
    layout: Layout,
    atoms: Atoms,
    /// The rules whose conditions are masks over the atoms (nearly all).
    masks: Masks,
    /// The others: `(hit position, entry)` of a branch program over the atoms.
    branches: Vec<(u32, u32)>,
    /// The rule at each hit position ([`Masks::rule_at`]), with what it does when it holds.
    slots: Vec<Slot>,
    /// The shadow rules, a bit per rule.
    shadow: Vec<u64>,
    names: Vec<Box<str>>,
    velocity: Vec<CompiledVelocity>,
    /// Each used model's features, in its manifest's order.
    features: Vec<Vec<FeatureFn>>,
    /// Each arm's action and entry, and the `otherwise` action.
    policy: Option<(Vec<(Action, u32)>, Action)>,
    default_action: Action,
    uid: u64,
    /// Filled in when the set is published.
    pub epoch: u64,
    /// A digest of every source file (rules and lists), for stats and reports.
    pub digest: String,
    /// [`RuleSet::windows_digest`], computed once.
    windows: String,
    /// The files it was built from.
    pub files: Vec<String>,
}

/// One event's result. Reused between events: evaluation clears it and never grows it past
/// the rule set's size, so after the first event it allocates nothing.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub action: Option<Action>,
    pub score: i32,
    /// Indexes of the rules that fired, in report order (see [`RuleSet::rule_name`]).
    pub fired: Vec<u32>,
    pub shadow_fired: Vec<u32>,
    /// Each velocity function's value.
    pub velocity: Vec<f64>,
    /// The register file, the atoms' bits and the rules that hold (scratch).
    regs: Vec<f64>,
    bits: Vec<u64>,
    hits: Vec<u64>,
    by_rule: Vec<u64>,
}

impl Outcome {
    pub fn action(&self) -> Action {
        self.action.unwrap_or(Action::Allow)
    }
}

/// What a rule set compiled to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub rules: usize,
    /// Distinct leaf tests, each evaluated once per event.
    pub atoms: usize,
    /// Rules run as branch programs (their conditions expand to too many conjunctions);
    /// the rest are masks over the atoms.
    pub branch_rules: usize,
    pub velocity_functions: usize,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rules ({} as masks, {} as branch programs) over {} distinct tests, {} velocity \
             functions",
            self.rules,
            self.rules - self.branch_rules,
            self.branch_rules,
            self.atoms,
            self.velocity_functions
        )
    }
}

/// `a` or `b`, whichever takes precedence (deny > review > allow).
pub fn stronger(a: Action, b: Action) -> Action {
    if (b as u8) > (a as u8) { b } else { a }
}

/// Pushes the index of each bit set in `word`, word `w` of a bitset, in ascending order.
#[inline]
fn push_bits(to: &mut Vec<u32>, w: usize, mut word: u64) {
    while word != 0 {
        to.push(w as u32 * 64 + word.trailing_zeros());
        word &= word - 1;
    }
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

impl RuleSet {
    /// Compiles a checked program. `default_action` decides when no policy exists and no
    /// rule with an action fired.
    pub fn compile(program: Program, default_action: Action) -> RuleSet {
        let mut b = Builder::new(&program);
        b.atomize = true;
        let mut dnfs: Vec<(u32, Dnf)> = Vec::new();
        let mut branches = Vec::new();
        for (i, r) in program.rules.iter().enumerate() {
            let when = fold(&r.when);
            match b.dnf_size(&when, false) {
                Some(_) => dnfs.push((i as u32, b.dnf(&when, false))),
                None => branches.push((i as u32, b.condition(&when))),
            }
        }
        b.atomize = false;
        let (atoms, remap) = std::mem::take(&mut b.atoms).finish();
        b.remap_atoms(&remap);
        let mut mask_rules = MaskRules::default();
        for (rule, dnf) in dnfs {
            let conjunctions = dnf
                .iter()
                .filter_map(|c| {
                    masks::conjunction(c.iter().map(|l| (remap[l.atom.0 as usize], l.negated)))
                })
                .collect();
            mask_rules.add(rule, conjunctions);
        }
        let branch_rules: Vec<u32> = branches.iter().map(|&(rule, _)| rule).collect();
        let masks = mask_rules.finish(&branch_rules);
        for (i, b) in branches.iter_mut().enumerate() {
            b.0 = masks.branch_position(i);
        }
        let slots = masks
            .rule_at()
            .iter()
            .map(|&rule| match program.rules.get(rule as usize) {
                Some(r) if !r.shadow => Slot {
                    rule,
                    score: r.score,
                    strength: r.action.map_or(0, |a| a as u8 + 1),
                },
                // Shadow rules, and padding (never hit).
                _ => Slot {
                    rule,
                    score: 0,
                    strength: 0,
                },
            })
            .collect();
        let mut shadow = vec![0u64; program.rules.len().div_ceil(64)];
        for (i, r) in program.rules.iter().enumerate() {
            shadow[i / 64] |= u64::from(r.shadow) << (i % 64);
        }
        let mut ranks = [0u32; 4];
        let velocity = program
            .velocity
            .iter()
            .map(|v| CompiledVelocity {
                key: v.key,
                rank: {
                    ranks[v.key as usize] += 1;
                    ranks[v.key as usize] - 1
                },
                sample: match (v.agg, &v.field) {
                    (Agg::Count, _) => SampleFn::Count,
                    (Agg::Sum, Some(f)) => SampleFn::Sum(b.num(&fold(f))),
                    (Agg::Distinct, Some(f)) => SampleFn::Distinct(b.hash(&fold(f))),
                    _ => unreachable!("sum and distinct always have a value"),
                },
            })
            .collect();
        let policy = program.policy.as_ref().map(|p| {
            let arms = p
                .arms
                .iter()
                .map(|(a, when)| (*a, b.condition(&fold(when))))
                .collect();
            (arms, p.otherwise.unwrap_or(default_action))
        });
        let features = program
            .model_features
            .iter()
            .zip(&program.model_absent_missing)
            .map(|(nodes, &absent_missing)| {
                nodes
                    .iter()
                    .map(|n| match (n.ty, &n.kind) {
                        (_, NodeKind::Feature(i)) if absent_missing => FeatureFn::Slot(*i as usize),
                        (Ty::Bool, _) => FeatureFn::Cond(b.condition(&fold(n))),
                        _ => FeatureFn::Num(b.num(&fold(n))),
                    })
                    .collect()
            })
            .collect();
        let names = program
            .rules
            .iter()
            .map(|r| r.name.as_str().into())
            .collect();
        let Builder { ops, layout, .. } = b;
        RuleSet {
            ops,
            layout,
            atoms,
            masks,
            branches,
            slots,
            shadow,
            names,
            velocity,
            features,
            policy,
            default_action,
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            epoch: 0,
            digest: String::new(),
            windows: windows_digest(&program),
            files: Vec::new(),
            program,
        }
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Unique per compiled set (velocity state is laid out per set).
    pub fn uid(&self) -> u64 {
        self.uid
    }

    pub fn rule_count(&self) -> usize {
        self.names.len()
    }

    /// What the compiler made of the rules, for `verdict check` and the benches.
    pub fn shape(&self) -> Shape {
        Shape {
            rules: self.names.len(),
            atoms: self.atoms.count(),
            branch_rules: self.branches.len(),
            velocity_functions: self.velocity.len(),
        }
    }

    /// The name of rule `index` (an entry of `Outcome::fired`).
    pub fn rule_name(&self, index: u32) -> &str {
        &self.names[index as usize]
    }

    pub fn default_action(&self) -> Action {
        self.default_action
    }

    /// A fresh outcome sized for this rule set.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            action: None,
            score: 0,
            fired: Vec::with_capacity(self.names.len()),
            shadow_fired: Vec::with_capacity(self.names.len()),
            velocity: Vec::with_capacity(self.velocity.len()),
            regs: Vec::new(),
            bits: Vec::new(),
            hits: Vec::new(),
            by_rule: Vec::new(),
        }
    }

    /// Decides one event: [`RuleSet::prepare`] then [`RuleSet::decide`]. `models` holds the
    /// event's score for each of [`RuleSet::models`].
    pub fn evaluate(
        &self,
        event: &ArchivedEvent,
        state: &mut VelocityState,
        models: &[f64],
        out: &mut Outcome,
    ) {
        self.prepare(event, state, out);
        self.decide(event, models, out);
    }

    /// The models the rules use, in the order their scores are passed to `decide`.
    pub fn models(&self) -> &[String] {
        &self.program.models
    }

    /// The score model `i` stands at when it fails for an event.
    pub fn model_fallback(&self, i: usize) -> f64 {
        self.program.model_fallbacks[i]
    }

    /// First half of a decision: reads the event into `out` and records it in the velocity
    /// state (prepared for this set). Model features can be read from `out` after it.
    pub fn prepare(&self, event: &ArchivedEvent, state: &mut VelocityState, out: &mut Outcome) {
        self.prepare_with(event, state, &[None; 4], out);
    }

    /// [`prepare`](Self::prepare) for a core that owns only some of the event's keys:
    /// `remote[key as usize]`, when set, holds the values of the key's functions (in
    /// function order) as the key's owner recorded them with [`record_key`](Self::record_key);
    /// the other keys are recorded in `state`.
    pub fn prepare_with(
        &self,
        event: &ArchivedEvent,
        state: &mut VelocityState,
        remote: &[Option<&[f64]>; 4],
        out: &mut Outcome,
    ) {
        if state.prepared_for() != self.uid {
            state.prepare(self.uid, &self.program.velocity);
        }
        self.layout.load(event, &mut out.regs);
        self.record_velocity(event, state, remote, &mut out.regs);
        out.velocity.clear();
        out.velocity
            .extend_from_slice(self.layout.velocity(&out.regs));
    }

    /// Model `model`'s features for the event `out` was prepared for, into `row` (one value
    /// per feature; a bool is 1 or 0).
    pub fn features(&self, event: &ArchivedEvent, model: usize, out: &Outcome, row: &mut [f32]) {
        let ctx = Ctx::new(event, &out.regs);
        for (f, x) in self.features[model].iter().zip(row.iter_mut()) {
            *x = match f {
                FeatureFn::Num(f) => f(&ctx) as f32,
                FeatureFn::Cond(entry) => f32::from(u8::from(branch::run(&self.ops, *entry, &ctx))),
                FeatureFn::Slot(i) => event
                    .features
                    .get(*i)
                    .map_or(f32::NAN, |v| v.to_native() as f32),
            };
        }
    }

    /// Second half: runs every rule, then the policy, with the event's model scores.
    pub fn decide(&self, event: &ArchivedEvent, models: &[f64], out: &mut Outcome) {
        self.layout.set_models(models, &mut out.regs);
        out.fired.clear();
        out.shadow_fired.clear();
        let ctx = Ctx::new(event, &out.regs);
        self.atoms.eval(&self.ops, &ctx, &mut out.bits);
        let ctx = Ctx {
            bits: &out.bits,
            ..ctx
        };
        out.hits.resize(self.masks.hit_words(), 0);
        self.masks.eval(&out.bits, &mut out.hits);
        for &(pos, entry) in &self.branches {
            let holds = branch::run(&self.ops, entry, &ctx);
            out.hits[(pos / 64) as usize] |= u64::from(holds) << (pos % 64);
        }
        let (mut score, mut strength) = (0i64, 0u8);
        // The rules that hold, by hit position: their effect, and their bit in rule order.
        out.by_rule.clear();
        out.by_rule.resize(self.shadow.len(), 0);
        for (w, &word) in out.hits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let slot = &self.slots[w * 64 + word.trailing_zeros() as usize];
                word &= word - 1;
                out.by_rule[(slot.rule / 64) as usize] |= 1 << (slot.rule % 64);
                score += slot.score;
                strength = strength.max(slot.strength);
            }
        }
        let action = STRENGTH[usize::from(strength)];
        for (w, (&held, &shadow)) in out.by_rule.iter().zip(&self.shadow).enumerate() {
            push_bits(&mut out.fired, w, held & !shadow);
            push_bits(&mut out.shadow_fired, w, held & shadow);
        }
        let score = score.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        let (ip, ip_v4) = (ctx.ip, ctx.ip_v4);
        let decided = match &self.policy {
            Some((arms, otherwise)) => {
                out.regs[SCORE as usize] = f64::from(score);
                let ctx = Ctx {
                    event,
                    regs: &out.regs,
                    ip,
                    ip_v4,
                    bits: &out.bits,
                };
                let by_policy = arms
                    .iter()
                    .find(|(_, entry)| branch::run(&self.ops, *entry, &ctx))
                    .map_or(*otherwise, |(a, _)| *a);
                action.map_or(by_policy, |a| stronger(a, by_policy))
            }
            None => action.unwrap_or(self.default_action),
        };
        out.action = Some(decided);
        out.score = score;
    }

    /// A digest of the velocity functions, in order (their canonical texts): two rule sets
    /// with the same one keep the same windows in the same layout, whatever else differs.
    /// Cluster nodes record each other's windows only under the same one.
    pub fn windows_digest(&self) -> &str {
        &self.windows
    }

    /// The longest window any velocity function counts over, in ms (0: none): how much
    /// history a cluster node replays into a partition it takes over.
    pub fn longest_window_ms(&self) -> u64 {
        self.program
            .velocity
            .iter()
            .map(|v| v.window_ms)
            .max()
            .unwrap_or(0)
    }

    /// How many velocity functions count by each key (`[key as usize]`): what
    /// [`record_key`](Self::record_key) returns for it.
    pub fn functions_by_key(&self) -> [usize; 4] {
        let mut n = [0; 4];
        for v in &self.velocity {
            n[v.key as usize] += 1;
        }
        n
    }

    /// For the deciding core: what `event` adds to each of this set's functions of `key`, in
    /// function order, appended to `out` (what the key's owner records with
    /// [`record_samples`](Self::record_samples)). `scratch` holds the event's registers
    /// ([`load`](Self::load)): sum and distinct values are expressions over the event's
    /// fields only (the checker keeps velocity and models out of them).
    pub fn key_samples(
        &self,
        event: &ArchivedEvent,
        key: VelocityKey,
        scratch: &Outcome,
        out: &mut Vec<Sample>,
    ) {
        let (ip, ip_v4) = Ctx::ip_of(event);
        let ctx = Ctx {
            event,
            regs: &scratch.regs,
            ip,
            ip_v4,
            bits: &[],
        };
        let hasher = crate::velocity::value_hasher();
        out.extend(
            self.velocity
                .iter()
                .filter(|v| v.key == key)
                .map(|v| match &v.sample {
                    SampleFn::Count => Sample::Count,
                    SampleFn::Sum(f) => Sample::Sum(f(&ctx)),
                    SampleFn::Distinct(f) => Sample::Distinct(f(&ctx, hasher)),
                }),
        );
    }

    /// Reads `event`'s fields into `scratch`'s registers (for [`key_samples`](Self::key_samples)).
    pub fn load(&self, event: &ArchivedEvent, scratch: &mut Outcome) {
        self.layout.load(event, &mut scratch.regs);
    }

    /// For the core that owns a value of `key` (its bytes, [`key_value`]): records one
    /// event's `samples` (from [`key_samples`](Self::key_samples)) at `ts_ms` in this set's
    /// functions of that key, and appends each one's window value, in function order, to
    /// `values` (what the deciding core passes to [`prepare_with`](Self::prepare_with)).
    pub fn record_samples(
        &self,
        key: VelocityKey,
        value: &[u8],
        ts_ms: u64,
        samples: &[Sample],
        state: &mut VelocityState,
        values: &mut Vec<f64>,
    ) {
        let hash = state.key_hash(value);
        self.record_in(key, hash.map(|h| (h, value)), ts_ms, samples, state, values);
    }

    /// [`record_samples`](Self::record_samples) of a key value whose entity hash
    /// ([`VelocityState::key_hash`] of this `state`) is already known: `None` for an empty
    /// value (not tracked, its values are 0).
    pub fn record_hashed(
        &self,
        key: VelocityKey,
        hash: Option<u64>,
        ts_ms: u64,
        samples: &[Sample],
        state: &mut VelocityState,
        values: &mut Vec<f64>,
    ) {
        self.record_in(
            key,
            hash.map(|h| (h, &[][..])),
            ts_ms,
            samples,
            state,
            values,
        );
    }

    /// Both: `entity` is the key's hash and value (its bytes: a new entity's partition tag;
    /// empty when unknown, tagged 0).
    fn record_in(
        &self,
        key: VelocityKey,
        entity: Option<(u64, &[u8])>,
        ts_ms: u64,
        samples: &[Sample],
        state: &mut VelocityState,
        values: &mut Vec<f64>,
    ) {
        if state.prepared_for() != self.uid {
            state.prepare(self.uid, &self.program.velocity);
        }
        let entity = entity.map(|(h, value)| {
            if value.is_empty() {
                state.entity(key, h, ts_ms)
            } else {
                state.entity_of(key, h, value, ts_ms)
            }
        });
        let functions = self
            .velocity
            .iter()
            .enumerate()
            .filter(|(_, v)| v.key == key);
        for ((i, _), &sample) in functions.zip(samples) {
            values.push(match entity {
                None => 0.0,
                Some(entity) => state.record_at(i, entity, ts_ms, sample),
            });
        }
    }

    /// Both halves at once, for one core standing in for a key's owner: records the event in
    /// this set's functions of `key` only and appends their values to `values`. `scratch` is
    /// an outcome of this set (its registers are used).
    pub fn record_key(
        &self,
        event: &ArchivedEvent,
        key: VelocityKey,
        state: &mut VelocityState,
        scratch: &mut Outcome,
        values: &mut Vec<f64>,
    ) {
        self.load(event, scratch);
        let mut samples = Vec::new();
        self.key_samples(event, key, scratch, &mut samples);
        let mut ip = [0u8; 16];
        let value = key_value(event, key, &mut ip).unwrap_or(&[]);
        let ts = event.timestamp_ms.to_native();
        self.record_samples(key, value, ts, &samples, state, values);
    }

    /// Records the event in every velocity function whose key has no `remote` values, and
    /// writes each function's value to its register.
    fn record_velocity(
        &self,
        event: &ArchivedEvent,
        state: &mut VelocityState,
        remote: &[Option<&[f64]>; 4],
        regs: &mut [f64],
    ) {
        let ts = event.timestamp_ms.to_native();
        // Each key is hashed and looked up once per event, however many functions use it.
        let mut entities: [Option<Option<u32>>; 4] = [None; 4];
        let (ip, ip_v4) = Ctx::ip_of(event);
        for (i, v) in self.velocity.iter().enumerate() {
            if let Some(values) = remote[v.key as usize] {
                regs[self.layout.velocity as usize + i] = values[v.rank as usize];
                continue;
            }
            let ctx = Ctx {
                event,
                regs,
                ip,
                ip_v4,
                bits: &[],
            };
            let entity = *entities[v.key as usize].get_or_insert_with(|| {
                let mut bytes = [0u8; 16];
                let value = key_value(event, v.key, &mut bytes)?;
                let hash = state.key_hash(value)?;
                Some(state.entity_of(v.key, hash, value, ts))
            });
            let value = match entity {
                None => 0.0,
                Some(entity) => {
                    let sample = sample_of(&v.sample, &ctx, state);
                    state.record_at(i, entity, ts, sample)
                }
            };
            regs[self.layout.velocity as usize + i] = value;
        }
    }

    /// For a batch: starts loading where [`prepare`](Self::prepare) will look `event`'s
    /// entities up ([`VelocityState::prefetch`]). Call it for every event of the batch, then
    /// prepare them; the lookups' cache misses then overlap. A hint: it changes no state.
    pub fn prefetch(&self, event: &ArchivedEvent, state: &VelocityState) {
        if state.prepared_for() != self.uid {
            return;
        }
        let ip = Ctx::ip_of(event);
        let mut seen = [false; 4];
        for v in &self.velocity {
            if !std::mem::replace(&mut seen[v.key as usize], true)
                && let Some(hash) = entity_hash(v.key, event, ip, state)
            {
                state.prefetch(v.key, hash);
            }
        }
    }
}

/// What one event adds to a function's window.
#[inline]
fn sample_of(f: &SampleFn, ctx: &Ctx, state: &VelocityState) -> Sample {
    match f {
        SampleFn::Count => Sample::Count,
        SampleFn::Sum(f) => Sample::Sum(f(ctx)),
        SampleFn::Distinct(f) => Sample::Distinct(f(ctx, state.value_hasher())),
    }
}

/// The bytes `event`'s value of `key` is placed by (its partition is `fnv1a64` of them): the
/// UTF-8 bytes of the account, device or merchant id; an IP's address bytes in network
/// order (4 for IPv4, 16 for IPv6), written into `ip_bytes`. `None` when the event has no
/// such value (an empty id, the unspecified address): it is not tracked, so no one owns it.
pub fn key_value<'e>(
    event: &'e ArchivedEvent,
    key: VelocityKey,
    ip_bytes: &'e mut [u8; 16],
) -> Option<&'e [u8]> {
    let value = match key {
        VelocityKey::Account => event.account_id.as_bytes(),
        VelocityKey::Device => event.device_id.as_bytes(),
        VelocityKey::Merchant => event.merchant_id.as_bytes(),
        VelocityKey::Ip => {
            let (ip, ip_v4) = Ctx::ip_of(event);
            if ip == 0 {
                return None;
            }
            *ip_bytes = ip.to_be_bytes();
            if ip_v4 {
                &ip_bytes[12..]
            } else {
                &ip_bytes[..]
            }
        }
    };
    (!value.is_empty()).then_some(value)
}

/// The entity hash of `event`'s `key` (`ip`: [`Ctx::ip_of`]); `None` when the event has no
/// such key (it is then not tracked).
#[inline]
fn entity_hash(
    key: VelocityKey,
    event: &ArchivedEvent,
    (ip, ip_v4): (u128, bool),
    state: &VelocityState,
) -> Option<u64> {
    match key {
        VelocityKey::Account => state.key_hash(event.account_id.as_bytes()),
        VelocityKey::Device => state.key_hash(event.device_id.as_bytes()),
        VelocityKey::Merchant => state.key_hash(event.merchant_id.as_bytes()),
        // The unspecified address (0.0.0.0, ::) is no key.
        VelocityKey::Ip if ip == 0 => None,
        VelocityKey::Ip => {
            let bytes = ip.to_be_bytes();
            state.key_hash(if ip_v4 { &bytes[12..] } else { &bytes })
        }
    }
}

// ---- constant folding ----

/// `n` with every constant subtree replaced by its value.
pub fn fold(n: &Node) -> Node {
    let with = |kind| Node {
        kind,
        ty: n.ty,
        span: n.span,
    };
    let b = |x: &Node| Box::new(fold(x));
    match &n.kind {
        NodeKind::Not(x) => match fold(x) {
            Node {
                kind: NodeKind::Bool(v),
                ..
            } => with(NodeKind::Bool(!v)),
            x => with(NodeKind::Not(Box::new(x))),
        },
        NodeKind::Neg(x) => match fold(x) {
            Node {
                kind: NodeKind::Num(v),
                ..
            } => with(NodeKind::Num(-v)),
            x => with(NodeKind::Neg(Box::new(x))),
        },
        NodeKind::And(l, r) => match (fold(l), fold(r)) {
            (
                Node {
                    kind: NodeKind::Bool(false),
                    ..
                },
                _,
            )
            | (
                _,
                Node {
                    kind: NodeKind::Bool(false),
                    ..
                },
            ) => with(NodeKind::Bool(false)),
            (
                Node {
                    kind: NodeKind::Bool(true),
                    ..
                },
                x,
            )
            | (
                x,
                Node {
                    kind: NodeKind::Bool(true),
                    ..
                },
            ) => x,
            (l, r) => with(NodeKind::And(Box::new(l), Box::new(r))),
        },
        NodeKind::Or(l, r) => match (fold(l), fold(r)) {
            (
                Node {
                    kind: NodeKind::Bool(true),
                    ..
                },
                _,
            )
            | (
                _,
                Node {
                    kind: NodeKind::Bool(true),
                    ..
                },
            ) => with(NodeKind::Bool(true)),
            (
                Node {
                    kind: NodeKind::Bool(false),
                    ..
                },
                x,
            )
            | (
                x,
                Node {
                    kind: NodeKind::Bool(false),
                    ..
                },
            ) => x,
            (l, r) => with(NodeKind::Or(Box::new(l), Box::new(r))),
        },
        NodeKind::Cmp { op, lhs, rhs } => {
            let (l, r) = (fold(lhs), fold(rhs));
            match (&l.kind, &r.kind) {
                (NodeKind::Num(a), NodeKind::Num(x)) => with(NodeKind::Bool(op.num(*a, *x))),
                (NodeKind::Str(a), NodeKind::Str(x)) => with(NodeKind::Bool(op.same(a, x))),
                (NodeKind::Bool(a), NodeKind::Bool(x)) => with(NodeKind::Bool(op.same(a, x))),
                (NodeKind::Ip(a), NodeKind::Ip(x)) => with(NodeKind::Bool(op.same(a, x))),
                _ => with(NodeKind::Cmp {
                    op: *op,
                    lhs: Box::new(l),
                    rhs: Box::new(r),
                }),
            }
        }
        NodeKind::Arith { op, lhs, rhs } => {
            let (l, r) = (fold(lhs), fold(rhs));
            match (&l.kind, &r.kind) {
                (NodeKind::Num(a), NodeKind::Num(x)) => with(NodeKind::Num(op.apply(*a, *x))),
                _ => with(NodeKind::Arith {
                    op: *op,
                    lhs: Box::new(l),
                    rhs: Box::new(r),
                }),
            }
        }
        NodeKind::StrOp { op, lhs, rhs } => {
            let (l, r) = (fold(lhs), fold(rhs));
            match (&l.kind, &r.kind) {
                (NodeKind::Str(a), NodeKind::Str(x)) => with(NodeKind::Bool(op.apply(a, x))),
                _ => with(NodeKind::StrOp {
                    op: *op,
                    lhs: Box::new(l),
                    rhs: Box::new(r),
                }),
            }
        }
        NodeKind::In { expr, set, negated } => {
            let e = fold(expr);
            let member = match (&e.kind, set) {
                (NodeKind::Str(s), SetRef::Literal(v)) => Some(v.contains_str(s)),
                (NodeKind::Num(x), SetRef::Literal(v)) => Some(v.contains_num(*x)),
                (NodeKind::Ip(ip), SetRef::Literal(v)) => Some(v.contains_ip(*ip)),
                _ => None,
            };
            match member {
                Some(m) => with(NodeKind::Bool(m != *negated)),
                None => with(NodeKind::In {
                    expr: b(&e),
                    set: set.clone(),
                    negated: *negated,
                }),
            }
        }
        _ => n.clone(),
    }
}

/// The digest of a program's velocity functions (their canonical texts, in order).
fn windows_digest(program: &Program) -> String {
    let mut all = Vec::new();
    for v in &program.velocity {
        all.extend_from_slice(v.id.as_bytes());
        all.push(0);
    }
    format!("{:016x}", verdict_net::routing::fnv1a64(&all))
}
