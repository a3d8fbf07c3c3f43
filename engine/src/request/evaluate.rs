//! Evaluate (kind 0x01) and evaluate-batch (kind 0x02): events in, decisions out, in request
//! order. A run of pipelined evaluate frames read together is decided as one batch, like an
//! evaluate-batch, so each model scores them in one call and each other shard is asked once
//! (see [`crate::aggregator`]).
//!
//! Heap allocation per request: none once the buffers have warmed up on a single shard or
//! for events whose state is all here; cross-shard work allocates its mesh messages (one per
//! peer per batch).

use rkyv::rancor;
use verdict_net::frame::{FrameAt, RecvBuffer, Scan};
use verdict_net::validate::validate_event;
use verdict_net::{
    ArchivedEvaluateBatch, ArchivedEvent, DecisionBatchView, DecisionView, ErrorCode, Kind,
    SliceView,
};

use super::{Responder, explain_invalid};
use crate::aggregator::{self, Answer, Batch, Forward};
use crate::decide::{Names, Placed, recycle};
use crate::mesh::Origin;
use crate::shard::Shard;

/// A connection's evaluation buffers, kept between requests.
#[derive(Default)]
pub struct Evaluator {
    pub(super) batch: Batch,
    /// The names and views of the decisions being encoded (borrowed per response).
    pub(super) names: Names<'static>,
    placed: Vec<(Placed, u32)>,
    views: Vec<DecisionView<'static>>,
    /// The frames of a run of evaluates, their events and where their bytes are.
    run: Vec<FrameAt>,
    run_events: Vec<&'static ArchivedEvent>,
    origins: Vec<Origin<'static>>,
}

impl Evaluator {
    /// Answers the run of valid evaluate frames that starts with `first` (at most `max`
    /// frames, each answered in order, each counted as a response), deciding them as one
    /// batch. Returns the frames and bytes answered; an error (for `first` only, whose
    /// response the caller writes) if `first` itself is not a valid event. A later frame
    /// that is not a valid evaluate ends the run and is answered on its own.
    pub async fn run(
        &mut self,
        shard: &Shard,
        recv: &RecvBuffer,
        first: &FrameAt,
        max: usize,
        out: &mut Responder,
        read_at: u64,
    ) -> Result<(u64, usize), ErrorCode> {
        let len_max = shard.limits.frame_len_max_bytes;
        let mut frames = std::mem::take(&mut self.run);
        frames.clear();
        let mut events: Vec<&ArchivedEvent> = recycle(std::mem::take(&mut self.run_events));
        let mut origins: Vec<Origin<'_>> = recycle(std::mem::take(&mut self.origins));
        let (mut at, mut bytes) = (*first, 0);
        loop {
            let payload = recv.payload(&at);
            let Ok(event) = rkyv::access::<ArchivedEvent, rancor::Failure>(payload) else {
                break;
            };
            if validate_event(event).is_err() {
                break;
            }
            frames.push(at);
            events.push(event);
            origins.push(Origin::Frame(payload));
            bytes += at.frame_len;
            if frames.len() >= max {
                break;
            }
            match recv.at(bytes, len_max) {
                Scan::Frame(next) if next.header.kind == Kind::Evaluate.request_byte() => at = next,
                _ => break,
            }
        }
        let result = if events.is_empty() {
            Err(explain_event(recv.payload(first), out))
        } else {
            self.decide(shard, &events, &origins).await;
            let server_ns = shard.clock.delta_as_nanos(read_at, shard.clock.raw());
            for (k, (at, event)) in frames.iter().zip(&events).enumerate() {
                self.respond(shard, k, event, at.header.id, server_ns, out);
            }
            self.batch.release();
            Ok((events.len() as u64, bytes))
        };
        self.run = frames;
        self.run_events = recycle(events);
        self.origins = recycle(origins);
        result
    }

    /// Decides a client's events under the shard's current epoch, each by its owner
    /// (another shard or node, as needed), into `self.batch`.
    async fn decide(&mut self, shard: &Shard, events: &[&ArchivedEvent], origins: &[Origin<'_>]) {
        let published = shard.rules.borrow().clone();
        aggregator::decide_all(
            shard,
            published,
            events,
            origins,
            Forward::Nodes,
            &mut self.batch,
        )
        .await;
    }

    /// Appends event `k`'s answer: its decision, or why it has none.
    fn respond(
        &mut self,
        shard: &Shard,
        k: usize,
        event: &ArchivedEvent,
        id: u64,
        server_ns: u64,
        out: &mut Responder,
    ) {
        let mut names: Names<'_> = std::mem::take(&mut self.names).recycle();
        let Some((placed, decider)) = place(&self.batch, k, shard.index, &mut names) else {
            match self.batch.answers[k] {
                Answer::Refused(r) => out.error_str(shard, id, r.code, r.why),
                Answer::RefusedThere(at) => {
                    let (code, why) = &self.batch.refusals[at as usize];
                    out.error_str(shard, id, *code, why);
                }
                _ => {}
            }
            self.names = names.recycle();
            return;
        };
        let view = names.view(&placed, event, decider, server_ns);
        match out.push(Kind::Evaluate.response_byte(), id, &view, "decision") {
            Ok(()) => shard.stats.borrow_mut().responses += 1,
            Err(code) => out.error(shard, id, code),
        }
        names.clear();
        self.names = names.recycle();
    }

    /// Answers an evaluate-batch: every event decided by its account's owner, the decisions
    /// in the request's order in one response; or one error if any event could not be
    /// decided (the others were decided and recorded).
    pub async fn batch(
        &mut self,
        shard: &Shard,
        payload: &[u8],
        id: u64,
        out: &mut Responder,
        read_at: u64,
    ) -> Result<(), ErrorCode> {
        let max = shard.limits.batch_events_max as usize;
        let batch = checked_batch(payload, max, out)?;
        let n = batch.events.len();
        let mut events: Vec<&ArchivedEvent> = recycle(std::mem::take(&mut self.run_events));
        let mut origins: Vec<Origin<'_>> = recycle(std::mem::take(&mut self.origins));
        events.extend(batch.events.iter());
        origins.extend((0..n as u32).map(|i| Origin::Batch(payload, i)));
        self.decide(shard, &events, &origins).await;
        let result = self.reply_batch(shard, &events, id, out, read_at);
        self.batch.release();
        self.run_events = recycle(events);
        self.origins = recycle(origins);
        result?;
        let mut s = shard.stats.borrow_mut();
        s.record_batch_events(n as u64);
        Ok(())
    }

    fn reply_batch(
        &mut self,
        shard: &Shard,
        events: &[&ArchivedEvent],
        id: u64,
        out: &mut Responder,
        read_at: u64,
    ) -> Result<(), ErrorCode> {
        if let Some((i, code, why)) =
            self.batch
                .answers
                .iter()
                .enumerate()
                .find_map(|(i, a)| match a {
                    Answer::Refused(r) => Some((i, r.code, r.why)),
                    Answer::RefusedThere(at) => {
                        let (code, why) = &self.batch.refusals[*at as usize];
                        Some((i, *code, why.as_str()))
                    }
                    _ => None,
                })
        {
            out.say(format_args!("event {i}: {why}"));
            return Err(code);
        }
        let server_ns = shard.clock.delta_as_nanos(read_at, shard.clock.raw());
        let mut names: Names<'_> = std::mem::take(&mut self.names).recycle();
        self.placed.clear();
        for k in 0..events.len() {
            let placed =
                place(&self.batch, k, shard.index, &mut names).expect("no event was refused");
            self.placed.push(placed);
        }
        let mut views: Vec<DecisionView<'_>> = recycle(std::mem::take(&mut self.views));
        for ((placed, decider), event) in self.placed.iter().zip(events) {
            views.push(names.view(placed, event, *decider, server_ns));
        }
        let reply = DecisionBatchView {
            decisions: SliceView(&views),
        };
        let pushed = out.push(
            Kind::EvaluateBatch.response_byte(),
            id,
            &reply,
            "decision batch",
        );
        self.views = recycle(views);
        names.clear();
        self.names = names.recycle();
        pushed
    }
}

/// `payload` as an evaluate-batch of 1..=`max` valid events, or why not (the message in
/// `out`).
pub fn checked_batch<'p>(
    payload: &'p [u8],
    max: usize,
    out: &mut Responder,
) -> Result<&'p ArchivedEvaluateBatch, ErrorCode> {
    let Ok(batch) = rkyv::access::<ArchivedEvaluateBatch, rancor::Failure>(payload) else {
        return Err(explain_invalid::<ArchivedEvaluateBatch>(
            payload,
            out,
            "EvaluateBatch",
        ));
    };
    let n = batch.events.len();
    if n == 0 || n > max {
        out.message = batch_size_message(n, max);
        return Err(ErrorCode::BatchTooLarge);
    }
    for (i, event) in batch.events.iter().enumerate() {
        if let Err(e) = validate_event(event) {
            out.say(format_args!("event {i}: {e}"));
            return Err(ErrorCode::BadField);
        }
    }
    Ok(batch)
}

/// Why a batch of `n` events is refused under a limit of `max` (error 7; allocates).
pub fn batch_size_message(n: usize, max: usize) -> String {
    format!("evaluate-batch carries {n} events; the limit is 1..={max} (limits.batch_events_max)")
}

/// Puts event `k`'s names in `names`, wherever it was decided: where they are and the
/// shard that decided it; `None` if it was refused.
pub fn place<'b>(
    batch: &'b Batch,
    k: usize,
    here: u32,
    names: &mut Names<'b>,
) -> Option<(Placed, u32)> {
    Some(match batch.answers[k] {
        Answer::Here(v) => {
            let published = batch.published.as_ref().expect("decided here");
            let verdict = &batch.decided.verdicts[v as usize];
            (names.add(published, &batch.decided, verdict), here)
        }
        Answer::There { reply, verdict } => {
            let r = &batch.replies[reply as usize];
            let verdict = &r.decided.verdicts[verdict as usize];
            (names.add(&r.rules, &r.decided, verdict), r.shard)
        }
        Answer::Relayed(at) => {
            let d = &batch.relayed[at as usize];
            (names.add_decision(d), d.shard)
        }
        Answer::Refused(_) | Answer::RefusedThere(_) => return None,
    })
}

/// Why the evaluate payload does not hold a valid event (error path: allocates).
fn explain_event(payload: &[u8], out: &mut Responder) -> ErrorCode {
    match rkyv::access::<ArchivedEvent, rancor::Failure>(payload) {
        Err(_) => explain_invalid::<ArchivedEvent>(payload, out, "Event"),
        Ok(event) => {
            out.message.clear();
            if let Err(e) = validate_event(event) {
                out.say(format_args!("{e}"));
            }
            ErrorCode::BadField
        }
    }
}
