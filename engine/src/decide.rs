//! From a validated event to a verdict. Pure: no I/O, no clock, no allocation.
//!
//! Until the rules issue lands there is no rule set: every event gets the configured
//! `[decision] default_action` with score 0 at rule epoch 0, no rules fired and no model
//! scores. This is exactly that and claims nothing more.

use verdict_net::{Action, ArchivedEvent, DecisionView, SliceView, StrView};

use crate::config::DecisionConfig;

/// The outcome for one event, before it is tied to the event's id and timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub score: i32,
    pub epoch: u64,
}

/// Decides one event.
pub fn decide(_event: &ArchivedEvent, config: &DecisionConfig) -> Verdict {
    Verdict {
        action: config.default_action,
        score: 0,
        epoch: 0,
    }
}

impl Verdict {
    /// The decision to serialize for `event`.
    pub fn view<'a>(
        &self,
        event: &'a ArchivedEvent,
        shard: u32,
        server_ns: u64,
    ) -> DecisionView<'a> {
        DecisionView {
            event_id: StrView(event.event_id.as_str()),
            action: self.action,
            score: self.score,
            rules: SliceView(&[]),
            shadow_rules: SliceView(&[]),
            models: SliceView(&[]),
            epoch: self.epoch,
            shard,
            server_ns,
        }
    }
}
