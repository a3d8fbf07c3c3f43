//! The admin endpoints: what each path answers, and who may ask.
//!
//! | method | path | token | answer |
//! |---|---|---|---|
//! | GET, HEAD | `/metrics` | if `admin.token_for_reads` | Prometheus text |
//! | GET, HEAD | `/stats` | if `admin.token_for_reads` | JSON (`verdict stats --json`'s shape) |
//! | GET, HEAD | `/healthz`, `/readyz` | if `admin.token_for_reads` | 200 or 503 with the reason |
//! | POST | `/v1/reload` | always; 403 when no token is configured | JSON reload reply |

use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use verdict_net::ReloadReply;

use crate::http::{Request, Response};
use crate::metrics::Plane;
use crate::reload::{Reloads, SubmitError, WaitError};
use crate::stats::reply_json;

use super::Token;

/// The endpoints and what they read.
pub struct Routes {
    pub plane: std::sync::Arc<Mutex<Plane>>,
    pub reloads: Reloads,
    pub token: Option<Token>,
    pub token_for_reads: bool,
    /// How long `/v1/reload` waits for the reload thread (`limits.reload_timeout_ms`).
    pub reload_timeout: Duration,
}

const READS: [&str; 4] = ["/metrics", "/stats", "/healthz", "/readyz"];
const RELOAD: &str = "/v1/reload";

/// A `POST /v1/reload` body (or none: reload the rules being served).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadBody {
    /// Relative to `rules.dir`; "" or absent: the rules being served.
    #[serde(default)]
    rules_path: String,
}

impl Routes {
    pub fn answer(&self, request: &Request) -> Response {
        let path = request.path.as_str();
        let method = request.method.as_str();
        if READS.contains(&path) {
            if !matches!(method, "GET" | "HEAD") {
                return method_not_allowed("GET, HEAD");
            }
            if self.token_for_reads
                && let Some(denied) = self.authenticate(request)
            {
                return denied;
            }
            return self.read(path);
        }
        if path == RELOAD {
            if method != "POST" {
                return method_not_allowed("POST");
            }
            if let Some(denied) = self.authenticate(request) {
                return denied;
            }
            return self.reload(request);
        }
        Response::text(
            404,
            "not found; endpoints: GET /metrics /stats /healthz /readyz, POST /v1/reload\n",
        )
    }

    /// `None` when the request carries the token; else the answer that refuses it.
    fn authenticate(&self, request: &Request) -> Option<Response> {
        let Some(token) = &self.token else {
            return Some(Response::text(
                403,
                "forbidden: this endpoint needs the control API's token, and none is configured.\n\
                 To enable it, put a long random token in a file only the engine's user can read \
                 (`openssl rand -hex 32 > /etc/verdict/admin.token; chmod 600 /etc/verdict/admin.token`), \
                 set `token_file` under [admin] in shards.toml, restart, and send \
                 `Authorization: Bearer TOKEN`.\n",
            ));
        };
        if token.admits(request.header("authorization")) {
            return None;
        }
        Some(
            Response::text(
                401,
                "unauthorized: send `Authorization: Bearer TOKEN` with the token of admin.token_file\n",
            )
            .with_header("WWW-Authenticate", "Bearer realm=\"verdict\""),
        )
    }

    fn read(&self, path: &str) -> Response {
        let plane = self
            .plane
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match path {
            "/metrics" => Response {
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                ..Response::text(200, plane.prometheus(&plane.kernel()))
            },
            "/stats" => {
                let (reply, ages) = plane.latest_reply(&plane.kernel());
                let mut json = reply_json(&reply);
                json["snapshot_age_ms"] = ages
                    .iter()
                    .map(|(shard, ms)| json!({ "shard": shard, "age_ms": ms }))
                    .collect();
                Response::json(200, &json)
            }
            "/healthz" => match plane.health() {
                Ok(()) => Response::text(200, "ok\n"),
                Err(why) => Response::text(503, format!("unhealthy: {why}\n")),
            },
            _ => match plane.readiness() {
                Ok(()) => Response::text(200, "ready\n"),
                Err(why) => Response::text(503, format!("not ready: {why}\n")),
            },
        }
    }

    fn reload(&self, request: &Request) -> Response {
        let body: ReloadBody = if request.body.iter().all(u8::is_ascii_whitespace) {
            ReloadBody {
                rules_path: String::new(),
            }
        } else {
            match serde_json::from_slice(&request.body) {
                Ok(body) => body,
                Err(e) => {
                    return error_json(
                        400,
                        format!("the body must be JSON {{\"rules_path\": \"RELATIVE/PATH\"}}: {e}"),
                    );
                }
            }
        };
        match self
            .reloads
            .run_blocking(body.rules_path, self.reload_timeout)
        {
            Ok(reply) => reload_json(&reply),
            Err(WaitError::Submit(SubmitError::Busy)) => error_json(
                503,
                "reloads are queued already; retry when they are done".into(),
            ),
            Err(WaitError::Submit(SubmitError::Stopped)) => {
                error_json(503, "the engine is shutting down".into())
            }
            Err(WaitError::TimedOut) => error_json(
                504,
                format!(
                    "no answer within {} ms (limits.reload_timeout_ms); the current epoch stays unless it publishes later",
                    self.reload_timeout.as_millis()
                ),
            ),
        }
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    Response::text(405, format!("method not allowed: {allow}\n")).with_header("Allow", allow)
}

fn error_json(status: u16, message: String) -> Response {
    Response::json(status, &json!({ "ok": false, "errors": [message] }))
}

/// A reload's answer: 200 when published, 422 when the rule set (or the path) was refused.
fn reload_json(reply: &ReloadReply) -> Response {
    let body = json!({
        "ok": reply.ok,
        "epoch": reply.epoch,
        "rules_path": reply.rules_path,
        "rules": reply.rules,
        "digest": reply.digest,
        "compile_us": reply.compile_us,
        "swap_us": reply.swap_us,
        "models": reply.models,
        "errors": reply.errors,
    });
    Response::json(if reply.ok { 200 } else { 422 }, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::TEXT;

    #[test]
    fn unknown_paths_and_methods_are_named() {
        let (reloads, _queue) = crate::reload::test_reloads();
        let routes = Routes {
            plane: std::sync::Arc::new(Mutex::new(Plane::new(
                vec![0],
                None,
                Duration::from_secs(1),
            ))),
            reloads,
            token: None,
            token_for_reads: false,
            reload_timeout: Duration::from_millis(10),
        };
        let request = |method: &str, path: &str| Request {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        assert_eq!(routes.answer(&request("GET", "/nope")).status, 404);
        let r = routes.answer(&request("POST", "/metrics"));
        assert_eq!((r.status, r.headers[0].1.as_str()), (405, "GET, HEAD"));
        assert_eq!(routes.answer(&request("GET", "/v1/reload")).status, 405);
        // No token configured: the control API is off, and says how to turn it on.
        let r = routes.answer(&request("POST", "/v1/reload"));
        assert_eq!(r.status, 403);
        assert!(r.body.contains("token_file"), "{}", r.body);
        assert_eq!(r.content_type, TEXT);
        // Reads need nothing by default.
        assert_eq!(routes.answer(&request("GET", "/metrics")).status, 200);
    }
}
