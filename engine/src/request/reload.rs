//! Kind 0x06, reload over the data port: refused (error 11) unless `[admin] wire_reload`
//! keeps it for a trusted network; the admin port's `POST /v1/reload` is the way in.

use std::time::Duration;

use rkyv::rancor;
use verdict_net::{ArchivedReloadRequest, ErrorCode, Kind};

use super::{Responder, explain_invalid};
use crate::reload::SubmitError;
use crate::shard::Shard;

/// Longest `rules_path` a reload request may carry.
const RULES_PATH_LEN_MAX_BYTES: usize = 4096;

/// Hands the reload to the reload thread and waits for its answer: this connection's later
/// requests wait too (they are answered in order), other connections do not.
pub async fn answer(
    shard: &Shard,
    payload: &[u8],
    id: u64,
    out: &mut Responder,
) -> Result<(), ErrorCode> {
    let Some(reloads) = &shard.reloads else {
        out.say(format_args!(
            "reload is not served on the data port: use POST /v1/reload on the admin port \
             (`verdict reload --admin ADDR --token-file FILE`), or set [admin] wire_reload = true \
             on a trusted network"
        ));
        return Err(ErrorCode::Forbidden);
    };
    let Ok(request) = rkyv::access::<ArchivedReloadRequest, rancor::Failure>(payload) else {
        return Err(explain_invalid::<ArchivedReloadRequest>(
            payload,
            out,
            "ReloadRequest",
        ));
    };
    let rules_path = request.rules_path.as_str();
    if rules_path.len() > RULES_PATH_LEN_MAX_BYTES {
        out.say(format_args!(
            "rules_path: longer than {RULES_PATH_LEN_MAX_BYTES} bytes"
        ));
        return Err(ErrorCode::BadField);
    }
    let answer = match reloads.submit(rules_path.to_string()) {
        Ok(answer) => answer,
        Err(SubmitError::Busy) => {
            out.say(format_args!(
                "reload: reloads are queued already; retry when they are done"
            ));
            return Err(ErrorCode::Overloaded);
        }
        Err(SubmitError::Stopped) => {
            out.say(format_args!("reload: the engine is shutting down"));
            return Err(ErrorCode::Unavailable);
        }
    };
    let timeout = Duration::from_millis(shard.limits.reload_timeout_ms);
    let Some(reply) = super::answer_within(answer, timeout).await else {
        out.say(format_args!(
            "reload: no answer within {} ms (limits.reload_timeout_ms); the current epoch stays unless it publishes later",
            shard.limits.reload_timeout_ms
        ));
        return Err(ErrorCode::Unavailable);
    };
    // A reload is a boundary between requests: later requests here see the new epoch.
    shard.refresh_rules();
    out.push(Kind::Reload.response_byte(), id, &reply, "reload reply")
}
