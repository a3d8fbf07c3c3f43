//! The engine's per-request work, piece by piece, each beside a reference in the same run:
//! - validate + decode an event frame (bytecheck) vs the unchecked access it guards;
//! - the full decision for one event under the shipped rule set (validate, decide with the
//!   rules, this core's velocity state and the shipped `fraud_lr` model in wasm, encode the
//!   response), event time moving forward 10 ms per event as in live traffic;
//! - encoding a decision response vs copying a fixed response of the same size (what the
//!   reference echo server does).
//!
//! `cargo bench -p verdict-bench --bench hot_path`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rkyv::util::AlignedVec;
use std::sync::Arc;
use verdict_bench::events::{EventGen, encode_events};

use verdict_engine::decide::{Decided, Names, Remote, Scratch, decide};
use verdict_engine::scoring::{CoreModels, Published, model_inputs};
use verdict_models::{Runtime, RuntimeConfig};
use verdict_net::ArchivedEvent;
use verdict_net::frame::{FrameEncoder, HEADER_LEN, Scan, scan};
use verdict_net::validate::validate_event;
use verdict_rules::{Options, VelocityState, load_default};

fn frames() -> Vec<Vec<u8>> {
    let mut g = EventGen::new(42);
    let events: Vec<_> = (0..256).map(|_| g.next_event()).collect();
    encode_events(&events)
}

fn aligned(frame: &[u8]) -> AlignedVec<16> {
    let mut v = AlignedVec::new();
    v.extend_from_slice(frame);
    v
}

fn payload(frame: &AlignedVec<16>) -> &[u8] {
    let Scan::Frame(at) = scan(frame, u32::MAX) else {
        panic!("a frame")
    };
    &frame[HEADER_LEN..HEADER_LEN + at.header.len as usize]
}

fn bench(c: &mut Criterion) {
    let mut frames: Vec<AlignedVec<16>> = frames().iter().map(|f| aligned(f)).collect();
    // Where each frame's `timestamp_ms` sits, so the full-decision bench can move time on.
    let stamps: Vec<usize> = frames
        .iter()
        .map(|f| {
            let e = rkyv::access::<ArchivedEvent, rkyv::rancor::Failure>(payload(f)).unwrap();
            &e.timestamp_ms as *const _ as usize - f.as_ptr() as usize
        })
        .collect();
    let mut now_ms: u64 = 1_700_000_000_000;
    let runtime = Runtime::new(RuntimeConfig::default()).expect("a wasm engine");
    let models = Arc::new(runtime.load_examples().expect("the shipped models load"));
    let options = Options {
        models: model_inputs(&models),
        ..Options::default()
    };
    let rules = load_default(&options).expect("the shipped rules compile");
    let published = Published::new(rules, models);
    let mut core_models = CoreModels::new(&published);
    let clock = quanta::Clock::new();
    let mut velocity = VelocityState::new(65_536);
    let mut scratch = Scratch::default();
    let mut decided = Decided::default();
    // Every key's windows are kept here (one shard).
    let here = Remote::default();
    let mut reused_names: Names<'static> = Names::default();

    let mut g = c.benchmark_group("decode");
    let mut i = 0;
    g.bench_function("validated access + field checks", |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            let p = payload(&frames[i]);
            let e = rkyv::access::<ArchivedEvent, rkyv::rancor::Failure>(black_box(p)).unwrap();
            validate_event(e).unwrap();
            black_box(e.amount_minor)
        })
    });
    g.bench_function("reference: unchecked access", |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            let p = payload(&frames[i]);
            // SAFETY: these bytes were produced by rkyv from a valid Event just above.
            let e = unsafe { rkyv::access_unchecked::<ArchivedEvent>(black_box(p)) };
            black_box(e.amount_minor)
        })
    });
    g.finish();

    let mut out = AlignedVec::<16>::with_capacity(1 << 20);
    let mut enc = FrameEncoder::new();
    let mut g = c.benchmark_group("decision");
    g.bench_function("full: validate + decide + encode", |b| {
        b.iter(|| {
            if out.len() > (1 << 19) {
                out.clear();
            }
            i = (i + 1) % frames.len();
            now_ms += 10;
            frames[i][stamps[i]..stamps[i] + 8].copy_from_slice(&now_ms.to_le_bytes());
            let p = payload(&frames[i]);
            let e = rkyv::access::<ArchivedEvent, rkyv::rancor::Failure>(p).unwrap();
            validate_event(e).unwrap();
            let events = &[e];
            let (v, m) = (&mut velocity, &mut core_models);
            decided.clear();
            decide(
                events,
                &published,
                v,
                &here,
                m,
                &clock,
                &mut scratch,
                &mut decided,
            );
            let mut names = std::mem::take(&mut reused_names).recycle();
            let verdict = &decided.verdicts[0];
            let placed = names.add(&published, &decided, verdict);
            let view = names.view(&placed, e, 0, 1234);
            enc.push(&mut out, 0x82, i as u64, &view).unwrap();
            names.clear();
            reused_names = names.recycle();
        })
    });
    g.finish();

    let first = payload(&frames[0]);
    let first = rkyv::access::<ArchivedEvent, rkyv::rancor::Failure>(first).unwrap();
    let events = &[first];
    let (v, m) = (&mut velocity, &mut core_models);
    decided.clear();
    decide(
        events,
        &published,
        v,
        &here,
        m,
        &clock,
        &mut scratch,
        &mut decided,
    );
    let verdict = decided.verdicts[0].clone();
    let mut names = Names::default();
    let placed = names.add(&published, &decided, &verdict);
    let sample = {
        let mut o = AlignedVec::<16>::new();
        FrameEncoder::new()
            .push(&mut o, 0x82, 1, &names.view(&placed, first, 0, 1))
            .unwrap();
        o.to_vec()
    };
    let mut g = c.benchmark_group("response");
    g.bench_function("encode a decision frame", |b| {
        let view = names.view(&placed, first, 0, 1);
        b.iter(|| {
            if out.len() > (1 << 19) {
                out.clear();
            }
            enc.push(&mut out, 0x82, 7, black_box(&view)).unwrap();
        })
    });
    g.bench_function("reference: copy a fixed frame of the same size", |b| {
        b.iter(|| {
            if out.len() > (1 << 19) {
                out.clear();
            }
            out.extend_from_slice(black_box(&sample));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
