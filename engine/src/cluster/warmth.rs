//! Where a node stands with each partition's history (state that moves, [`super::replay`]):
//! which partitions it owns with complete windows (warm), which it has prepared while their
//! old owner still decides them ([`super::handoff`]), and the catch-up running on the cluster
//! thread to turn the others warm.

use std::time::{Duration, Instant};

use log::{info, warn};

use super::broker::{self, Nats};
use super::table::NodeInfo;
use super::{Shipping, replay, view};

/// A catch-up running on the cluster thread.
pub(super) type CatchUpTask = tokio::task::JoinHandle<Result<replay::CaughtUp, String>>;

/// What a catch-up is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Partitions their old owner still decides (a handoff): their history up to now, not
    /// served yet.
    Prepare,
    /// Partitions this node decides: served once replayed.
    Serve,
}

/// Where this node stands with each partition's history (state that moves, [`replay`]).
pub(super) struct Warmth {
    /// Per partition: this node owns it and its windows here are complete.
    pub(super) warm: Vec<bool>,
    /// Per partition: the map gives it to this node, its old owner hands it off, and its
    /// history is replayed here through this stream sequence.
    prepared: Vec<Option<u64>>,
    /// The catch-up running, the partitions it replays, and what for.
    pub(super) task: Option<(CatchUpTask, Vec<u32>, Phase)>,
    /// Since when the node has waited for others to ship, and for which map epoch.
    waiting: Option<(u64, Instant)>,
    /// Whether there is history to replay (this node ships the event stream); without it a
    /// partition is served from empty windows at once.
    replays: bool,
}

impl Warmth {
    pub(super) fn new(partitions: u32, replays: bool) -> Warmth {
        Warmth {
            warm: vec![false; partitions as usize],
            prepared: vec![None; partitions as usize],
            task: None,
            waiting: None,
            replays,
        }
    }

    /// Forgets partitions `view` no longer gives this node.
    pub(super) fn follow(&mut self, view: &view::ClusterView) {
        for p in 0..self.warm.len() {
            if !view.owns(p as u32) {
                self.warm[p] = false;
            }
            if !view.granted(p as u32) {
                self.prepared[p] = None;
            }
        }
    }

    /// The partitions prepared and not yet served (this node's record's `prepared`).
    pub(super) fn prepared(&self) -> Vec<u32> {
        (0..self.warm.len() as u32)
            .filter(|&p| self.prepared[p as usize].is_some() && !self.warm[p as usize])
            .collect()
    }

    /// Takes a finished catch-up's result: what it did, if partitions turned warm or were
    /// prepared (say so once the view that serves them is published).
    pub(super) fn finished(
        &mut self,
        view: Option<&view::ClusterView>,
    ) -> Option<(replay::CaughtUp, Phase)> {
        if !self.task.as_ref().is_some_and(|(t, ..)| t.is_finished()) {
            return None;
        }
        let (task, partitions, phase) = self.task.take().expect("checked");
        let result = futures_util::FutureExt::now_or_never(task);
        if !matches!(result, Some(Ok(Ok(_)))) {
            // Some of its events may be applied already: the retry starts over, forgetting
            // first, rather than from where the preparation stopped.
            for &p in &partitions {
                self.prepared[p as usize] = None;
            }
        }
        match result {
            Some(Ok(Ok(done))) => {
                for &p in &partitions {
                    let p = p as usize;
                    match phase {
                        // Given away meanwhile: it stays cold.
                        Phase::Serve if view.is_some_and(|v| v.owns(p as u32)) => {
                            self.warm[p] = true;
                            self.prepared[p] = None;
                        }
                        Phase::Prepare
                            if view.is_some_and(|v| v.granted(p as u32)) && !self.warm[p] =>
                        {
                            self.prepared[p] = Some(done.through);
                        }
                        _ => {}
                    }
                }
                Some((done, phase))
            }
            Some(Ok(Err(e))) => {
                warn!("cluster: catching up: {e}; retrying");
                None
            }
            _ => {
                warn!("cluster: the catch-up task ended abnormally; retrying");
                None
            }
        }
    }

    /// Starts catching up on the partitions `view` routes to this node that are not warm,
    /// once every other live node has shipped what it decided under older maps and no node
    /// is still releasing any of them (or `wait_max` has passed: then what they have not
    /// shipped is not replayed): from where their preparation stopped, if prepared. Else
    /// prepares the partitions the map gives this node that their old owner hands off.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        &mut self,
        me: &str,
        view: &view::ClusterView,
        live: &[NodeInfo],
        broker: &Nats,
        shipping: &Shipping,
        timeout: Duration,
        wait_max: Duration,
    ) {
        if self.task.is_some() || view.closed.is_some() {
            return;
        }
        // A node routing by a newer map may decide what this view gives here (a map that gave
        // a handed-off partition back to its old owner): nothing starts before this node
        // reads that map too.
        if live.iter().any(|n| n.routes_epoch > view.map_epoch) {
            return;
        }
        let cold: Vec<u32> = (0..self.warm.len() as u32)
            .filter(|&p| view.owns(p) && !self.warm[p as usize])
            .collect();
        let handed: Vec<u32> = (0..self.warm.len() as u32)
            .filter(|&p| {
                view.granted(p)
                    && !view.owns(p)
                    && !self.warm[p as usize]
                    && self.prepared[p as usize].is_none()
            })
            .collect();
        if !self.replays {
            for &p in &cold {
                self.warm[p as usize] = true;
            }
            for &p in &handed {
                self.prepared[p as usize] = Some(0);
            }
            return;
        }
        let window = Duration::from_millis(shipping.rules.load().rules.longest_window_ms());
        let plan = |cold: Vec<u32>, start: replay::Start| replay::Plan {
            streams: broker.streams(),
            feeds: shipping.feeds.clone(),
            view: view.clone(),
            cold,
            start,
            timeout,
        };
        if cold.is_empty() {
            self.waiting = None;
        }
        if cold.is_empty() || self.still_waiting(me, view, live, &cold, wait_max) {
            // Meanwhile, what the old owners still decide can be prepared.
            if !handed.is_empty() {
                let plan = plan(handed, replay::Start::Window(window));
                self.launch(me, plan, Phase::Prepare);
            }
            return;
        }
        // The prepared ones first, those prepared through the same place together: each
        // replays its tail from there.
        let prepared = |p: &u32| self.prepared[*p as usize];
        match cold.iter().filter_map(prepared).min() {
            Some(through) => {
                let group = cold
                    .into_iter()
                    .filter(|p| prepared(p) == Some(through))
                    .collect();
                self.launch(me, plan(group, replay::Start::After(through)), Phase::Serve);
            }
            None => self.launch(me, plan(cold, replay::Start::Window(window)), Phase::Serve),
        }
    }

    /// Whether serving `cold` must still wait: for a live node (in the map or not: one a
    /// drain has just emptied decided until it read the new map, and hands its partitions
    /// off meanwhile) that has not shipped what it decided under older maps, or for any node
    /// (this one too, given back what it was handing off) still shipping what it decided of
    /// a cold partition it let go. At most `wait_max`: then it logs and goes on.
    fn still_waiting(
        &mut self,
        me: &str,
        view: &view::ClusterView,
        live: &[NodeInfo],
        cold: &[u32],
        wait_max: Duration,
    ) -> bool {
        let mut cold_mask = vec![false; self.warm.len()];
        for &p in cold {
            cold_mask[p as usize] = true;
        }
        let is_cold = |p: u32| cold_mask.get(p as usize).copied().unwrap_or(false);
        let behind: Vec<&str> = live
            .iter()
            .filter(|n| {
                (n.node != me && n.shipped_epoch < view.map_epoch)
                    || n.releasing.iter().any(|&p| is_cold(p))
            })
            .map(|n| n.node.as_str())
            .collect();
        let since = match self.waiting {
            Some((epoch, at)) if epoch == view.map_epoch => at,
            _ => {
                let now = Instant::now();
                self.waiting = Some((view.map_epoch, now));
                now
            }
        };
        if !behind.is_empty() {
            if since.elapsed() < wait_max {
                return true;
            }
            warn!(
                "cluster: nodes {behind:?} have not shipped what they decided before map \
                 epoch {} within {} ms: replaying without it",
                view.map_epoch,
                wait_max.as_millis()
            );
        }
        self.waiting = None;
        false
    }

    fn launch(&mut self, me: &str, plan: replay::Plan<broker::NatsStreams>, phase: Phase) {
        info!(
            "cluster: node {me} {} {} partitions of map epoch {}",
            match phase {
                Phase::Serve => "catching up on",
                Phase::Prepare => "preparing (their old owners decide them meanwhile)",
            },
            plan.cold.len(),
            plan.view.map_epoch
        );
        let cold = plan.cold.clone();
        self.task = Some((tokio::spawn(replay::catch_up(plan)), cold, phase));
    }
}

/// Says a catch-up is done (once the view serving its partitions is published).
pub(super) fn caught_up(me: &str, done: &replay::CaughtUp, phase: Phase) {
    info!(
        "cluster: node {me} {} {} partitions: {} events replayed ({} messages, {} skipped) in \
         {} ms",
        match phase {
            Phase::Serve => "caught up on",
            Phase::Prepare => "prepared",
        },
        done.partitions,
        done.recorded,
        done.messages,
        done.skipped,
        done.took.as_millis()
    );
}
