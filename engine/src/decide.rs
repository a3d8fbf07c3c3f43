//! From a validated event to a verdict. Pure: no I/O, no clock; allocation-free once the
//! caller's scratch buffers have grown to the rule set's size.
//!
//! The rule set decides (rules, velocity, policy); this module ties the outcome to the event
//! and to the names the decision reports, borrowed straight from the rule set so the
//! response copies them without a heap allocation.

use std::ops::Range;

use verdict_net::{Action, ArchivedEvent, DecisionView, SliceView, StrView};
use verdict_rules::{Outcome, RuleSet, VelocityState};

/// The outcome for one event, before it is tied to the event's id and timing. The names of
/// the rules that fired are `names[fired]` and `names[shadow]` of the buffer `decide` filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub score: i32,
    pub epoch: u64,
    pub fired: Range<usize>,
    pub shadow: Range<usize>,
}

/// Decides one event under `rules`, recording it in this core's velocity `state`, and
/// appends the names of the rules that fired (then the shadow rules) to `names`.
pub fn decide<'r>(
    event: &ArchivedEvent,
    rules: &'r RuleSet,
    state: &mut VelocityState,
    outcome: &mut Outcome,
    names: &mut Vec<StrView<'r>>,
) -> Verdict {
    rules.evaluate(event, state, &[], outcome);
    let start = names.len();
    names.extend(outcome.fired.iter().map(|&i| StrView(rules.rule_name(i))));
    let middle = names.len();
    names.extend(
        outcome
            .shadow_fired
            .iter()
            .map(|&i| StrView(rules.rule_name(i))),
    );
    Verdict {
        action: outcome.action(),
        score: outcome.score,
        epoch: rules.epoch,
        fired: start..middle,
        shadow: middle..names.len(),
    }
}

impl Verdict {
    /// The decision to serialize for `event`; `names` is the buffer `decide` filled.
    pub fn view<'a>(
        &self,
        event: &'a ArchivedEvent,
        names: &'a [StrView<'a>],
        shard: u32,
        server_ns: u64,
    ) -> DecisionView<'a> {
        DecisionView {
            event_id: StrView(event.event_id.as_str()),
            action: self.action,
            score: self.score,
            rules: SliceView(&names[self.fired.clone()]),
            shadow_rules: SliceView(&names[self.shadow.clone()]),
            models: SliceView(&[]),
            epoch: self.epoch,
            shard,
            server_ns,
        }
    }
}
