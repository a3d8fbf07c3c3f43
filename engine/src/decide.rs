//! From validated events to verdicts. No I/O; allocation-free once the caller's scratch
//! buffers have grown to the batch's and the rule set's size.
//!
//! A batch (the evaluate frames one read delivered, or every event of an evaluate-batch) goes
//! through three steps, so each
//! model is called once for all of its events: prepare every event (velocity recorded), score
//! them with every model the rules call ([`CoreModels::score`]), then decide each with its
//! scores. The names a decision reports (rules, models) are borrowed from the published
//! epoch, so the response copies them without a heap allocation.

use std::ops::Range;

use verdict_net::{Action, ArchivedEvent, DecisionView, ModelScoreView, SliceView, StrView};
use verdict_rules::{Outcome, VelocityState};

use crate::scoring::{CoreModels, Published};

/// The outcome for one event, before it is tied to the event's id and timing: the names of
/// the rules that fired are `names[fired]` and `names[shadow]`, its model scores
/// `scores[models]`, of the buffers `decide` filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub score: i32,
    pub epoch: u64,
    pub fired: Range<usize>,
    pub shadow: Range<usize>,
    pub models: Range<usize>,
}

/// Buffers reused from batch to batch.
#[derive(Default)]
pub struct Scratch {
    outcomes: Vec<Outcome>,
    scores: Vec<f64>,
    failed: Vec<bool>,
}

/// The buffers a batch's decisions borrow from.
#[derive(Default)]
pub struct Decided<'r> {
    pub names: Vec<StrView<'r>>,
    pub scores: Vec<ModelScoreView<'r>>,
    pub verdicts: Vec<Verdict>,
}

/// Decides `events` under `published`, recording them in this core's velocity `state` and
/// scoring them with its `models`, into `into` (cleared first).
pub fn decide<'r>(
    events: &[&ArchivedEvent],
    published: &'r Published,
    state: &mut VelocityState,
    models: &mut CoreModels,
    clock: &quanta::Clock,
    scratch: &mut Scratch,
    into: &mut Decided<'r>,
) {
    let rules = &published.rules;
    into.names.clear();
    into.scores.clear();
    into.verdicts.clear();
    while scratch.outcomes.len() < events.len() {
        scratch.outcomes.push(rules.outcome());
    }
    let outcomes = &mut scratch.outcomes[..events.len()];
    if events.len() > 1 {
        // Every event's entity lookups start loading before the first is recorded.
        for event in events {
            rules.prefetch(event, state);
        }
    }
    for (event, out) in events.iter().zip(outcomes.iter_mut()) {
        rules.prepare(event, state, out);
    }
    let m = published.used.len();
    if m > 0 {
        models.score(
            published,
            clock,
            events,
            outcomes,
            &mut scratch.scores,
            &mut scratch.failed,
        );
    }
    for (i, (event, out)) in events.iter().zip(outcomes.iter_mut()).enumerate() {
        let (scores, failed) = if m > 0 {
            (
                &scratch.scores[i * m..(i + 1) * m],
                &scratch.failed[i * m..(i + 1) * m],
            )
        } else {
            (&[][..], &[][..])
        };
        rules.decide(event, scores, out);
        let start = into.names.len();
        into.names
            .extend(out.fired.iter().map(|&r| StrView(rules.rule_name(r))));
        let middle = into.names.len();
        into.names.extend(
            out.shadow_fired
                .iter()
                .map(|&r| StrView(rules.rule_name(r))),
        );
        let first_score = into.scores.len();
        into.scores
            .extend(rules.models().iter().zip(scores.iter().zip(failed)).map(
                |(name, (&score, &error))| ModelScoreView {
                    name: StrView(name),
                    score,
                    error,
                },
            ));
        into.verdicts.push(Verdict {
            action: out.action(),
            score: out.score,
            epoch: rules.epoch,
            fired: start..middle,
            shadow: middle..into.names.len(),
            models: first_score..into.scores.len(),
        });
    }
}

impl Decided<'_> {
    /// Empties the buffers and keeps their allocations for another batch (whose names
    /// borrow from another epoch).
    pub fn recycle<'b>(self) -> Decided<'b> {
        let mut verdicts = self.verdicts;
        verdicts.clear();
        Decided {
            names: recycle(self.names),
            scores: recycle(self.scores),
            verdicts,
        }
    }
}

/// Empties `v` and keeps its allocation for elements of another lifetime (same layout, so
/// the in-place collect reuses the buffer and no element is ever converted).
pub fn recycle<A, B>(mut v: Vec<A>) -> Vec<B> {
    const { assert!(size_of::<A>() == size_of::<B>() && align_of::<A>() == align_of::<B>()) };
    v.clear();
    v.into_iter().map(|_| unreachable!("cleared")).collect()
}

impl Verdict {
    /// The decision to serialize for `event`; `decided` holds the buffers `decide` filled.
    pub fn view<'a>(
        &self,
        event: &'a ArchivedEvent,
        decided: &'a Decided<'a>,
        shard: u32,
        server_ns: u64,
    ) -> DecisionView<'a> {
        DecisionView {
            event_id: StrView(event.event_id.as_str()),
            action: self.action,
            score: self.score,
            rules: SliceView(&decided.names[self.fired.clone()]),
            shadow_rules: SliceView(&decided.names[self.shadow.clone()]),
            models: SliceView(&decided.scores[self.models.clone()]),
            epoch: self.epoch,
            shard,
            server_ns,
        }
    }
}
