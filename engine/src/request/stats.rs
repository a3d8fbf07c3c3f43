//! Kind 0x04, stats: this shard's snapshot and every other shard's (over the mesh), merged by
//! the control thread, which adds the kernel columns it owns (eBPF).

use std::time::Duration;

use verdict_net::{ErrorCode, Kind};

use super::Responder;
use crate::mesh::MeshError;
use crate::shard::{Shard, ShardEvent};

pub async fn answer(shard: &Shard, id: u64, out: &mut Responder) -> Result<(), ErrorCode> {
    let timeout = Duration::from_millis(shard.limits.mesh_reply_timeout_ms);
    let mut snapshots = vec![shard.snapshot()];
    if let Some(mesh) = &shard.mesh {
        match mesh.gather_stats(timeout).await {
            Ok(others) => snapshots.extend(others),
            Err(e) => {
                let (code, why) = match e {
                    MeshError::Overloaded => {
                        (ErrorCode::Overloaded, "a shard's mesh queue is full")
                    }
                    MeshError::Timeout => {
                        (ErrorCode::Unavailable, "a shard did not answer in time")
                    }
                };
                out.say(format_args!("stats: {why}"));
                return Err(code);
            }
        }
    }
    let (reply, answer) = flume::bounded(1);
    if shard
        .control
        .send(ShardEvent::Stats { snapshots, reply })
        .is_err()
    {
        out.say(format_args!("stats: the control thread has stopped"));
        return Err(ErrorCode::Unavailable);
    }
    let Some(reply) = super::answer_within(answer, timeout).await else {
        out.say(format_args!(
            "stats: the control thread did not answer in time"
        ));
        return Err(ErrorCode::Unavailable);
    };
    out.push(Kind::Stats.response_byte(), id, &reply, "stats reply")
}
