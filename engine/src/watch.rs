//! Times every poll of a shard's tasks. A poll is one run of a task between two yields, so
//! the longest is the shard's stall measure (ScyllaDB's "reactor stall": while it runs,
//! nothing else on the core is served); polls over `runtime.stall_threshold_us` are counted.
//! Costs two clock reads (rdtsc) per poll.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use crate::shard::Shard;

/// A task whose polls are timed into its shard's stats.
pub struct Watched<F> {
    task: Pin<Box<F>>,
    shard: Rc<Shard>,
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let clock = &this.shard.clock;
        let start = clock.raw();
        let out = this.task.as_mut().poll(cx);
        let ns = clock.delta_as_nanos(start, clock.raw());
        this.shard.stats.borrow_mut().record_poll_ns(ns);
        out
    }
}

/// Spawns `task` on this shard's executor with its polls timed.
pub fn spawn<F: Future + 'static>(shard: &Rc<Shard>, task: F) {
    glommio::spawn_local(Watched {
        task: Box::pin(task),
        shard: shard.clone(),
    })
    .detach();
}
