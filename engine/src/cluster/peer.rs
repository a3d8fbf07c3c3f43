//! Node to node on the data path, the sending side: a shard's connections to other nodes'
//! shards, and one call per batch and target shard (frame kind 0x10, see
//! `verdict_net::PeerRequest`). The receiving side is [`crate::request::peer`].
//!
//! Each shard keeps its own connections (nothing shared between cores): at most
//! `cluster.peer_connections_max` open to any one shard of another node, idle ones kept for
//! the next batch. A call that cannot get a connection is refused at once (error 8); one
//! that does not complete within `cluster.peer_reply_timeout_ms` loses its connection (the
//! reply may still come, on a socket no one reads again) and is error 9.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

use glommio::net::TcpStream;
use verdict_net::{
    AsyncClient, ClientError, ErrorCode, EvaluateBatch, Kind, PeerDecided, PeerRecord, PeerRecorded,
};

/// Why a call to another node failed (every event it carried gets this code).
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    pub code: ErrorCode,
    pub why: String,
}

impl CallError {
    /// A part of a call the other node answered with an error frame (or a reply that did
    /// not decode).
    fn of_part(addr: SocketAddr, e: ClientError) -> CallError {
        match e {
            ClientError::Server { code, message, .. } => CallError {
                code: ErrorCode::from_u16(code).unwrap_or(ErrorCode::Internal),
                why: format!("the node at {addr}: {message}"),
            },
            other => CallError {
                code: ErrorCode::Internal,
                why: format!("the node at {addr}: {other}"),
            },
        }
    }
}

/// What one call brought back, per part sent.
pub struct Called {
    pub decided: Option<Result<PeerDecided, CallError>>,
    pub recorded: Option<Result<PeerRecorded, CallError>>,
}

/// One shard's connections to other nodes' shards.
pub struct Links {
    idle: RefCell<Vec<(SocketAddr, AsyncClient<TcpStream>)>>,
    /// Connections open (idle or in a call) per address.
    open: RefCell<Vec<(SocketAddr, u32)>>,
    timeout: Duration,
    per_peer_max: u32,
}

impl Links {
    pub fn new(timeout: Duration, per_peer_max: u32) -> Links {
        Links {
            idle: RefCell::new(Vec::new()),
            open: RefCell::new(Vec::new()),
            timeout,
            per_peer_max: per_peer_max.max(1),
        }
    }

    fn count(&self, addr: SocketAddr, delta: i32) -> u32 {
        let mut open = self.open.borrow_mut();
        let at = match open.iter().position(|(a, _)| *a == addr) {
            Some(i) => i,
            None => {
                open.push((addr, 0));
                open.len() - 1
            }
        };
        let n = &mut open[at].1;
        *n = n.saturating_add_signed(delta);
        *n
    }

    /// Takes a connection to the shard at `addr` for one call: an idle one, or the right to
    /// open one; error 8 when `cluster.peer_connections_max` are busy. Taken before
    /// anything of a batch is sent, so a refusal here means nothing was recorded anywhere.
    pub fn acquire(&self, addr: SocketAddr) -> Result<Slot<'_>, CallError> {
        let idle = {
            let mut idle = self.idle.borrow_mut();
            idle.iter()
                .position(|(a, _)| *a == addr)
                .map(|i| idle.swap_remove(i).1)
        };
        if idle.is_none() {
            if self.count(addr, 0) >= self.per_peer_max {
                return Err(CallError {
                    code: ErrorCode::Overloaded,
                    why: format!(
                        "{} connections to {addr} are busy (cluster.peer_connections_max); retry",
                        self.per_peer_max
                    ),
                });
            }
            self.count(addr, 1);
        }
        Ok(Slot {
            links: self,
            addr,
            link: idle,
            armed: true,
        })
    }

    /// The longest a call waits (`cluster.peer_reply_timeout_ms`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// A connection taken for one call (counted open until it goes back idle or is dropped).
pub struct Slot<'a> {
    links: &'a Links,
    addr: SocketAddr,
    /// An idle connection, or `None`: connect.
    link: Option<AsyncClient<TcpStream>>,
    armed: bool,
}

impl Slot<'_> {
    /// Sends a batch's events to decide (kind 0x10) and keys to record (0x11), pipelined,
    /// and waits at most `timeout` for both answers. An idle connection the other node has
    /// closed meanwhile (it restarted) is replaced once by a fresh one, but only if no byte
    /// of an answer came back on it: then nothing was decided on it.
    pub async fn call(
        mut self,
        decide: Option<&EvaluateBatch>,
        record: Option<&PeerRecord>,
        timeout: Duration,
    ) -> Result<Called, CallError> {
        let addr = self.addr;
        let idle = self.link.take();
        let exchange = async move {
            let mut idle = idle;
            loop {
                let reused = idle.is_some();
                let mut link = match idle.take() {
                    Some(link) => link,
                    None => {
                        let stream = TcpStream::connect_timeout(addr, timeout)
                            .await
                            .map_err(|e| format!("connecting: {e}"))?;
                        let _ = stream.set_nodelay(true);
                        AsyncClient::new(stream)
                    }
                };
                let before = link.codec().received_bytes();
                match exchange(&mut link, decide, record).await {
                    Ok(reply) => return Ok((link, reply)),
                    Err(ClientError::Closed | ClientError::Io(_))
                        if reused && link.codec().received_bytes() == before =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        let result = glommio::timer::timeout(timeout, async move { Ok(exchange.await) }).await;
        match result {
            Ok(Ok((link, (decided, recorded)))) => {
                self.armed = false;
                self.links.idle.borrow_mut().push((addr, link));
                let part = |e| CallError::of_part(addr, e);
                Ok(Called {
                    decided: decided.map(|r| r.map_err(part)),
                    recorded: recorded.map(|r| r.map_err(part)),
                })
            }
            Ok(Err(why)) => Err(CallError {
                code: ErrorCode::Unavailable,
                why: format!("the node at {addr}: {why}"),
            }),
            Err(_) => Err(CallError {
                code: ErrorCode::Unavailable,
                why: format!(
                    "the node at {addr} did not answer within {} ms \
                     (cluster.peer_reply_timeout_ms)",
                    timeout.as_millis()
                ),
            }),
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.armed {
            match self.link.take() {
                // Never used: back to the idle list as it was.
                Some(link) => self.links.idle.borrow_mut().push((self.addr, link)),
                None => {
                    self.links.count(self.addr, -1);
                }
            }
        }
    }
}

/// Both parts' answers, each its own result (an error frame fails that part only).
type Parts = (
    Option<Result<PeerDecided, ClientError>>,
    Option<Result<PeerRecorded, ClientError>>,
);

/// One pipelined exchange on `link`: the parts given, one write, their answers in order.
async fn exchange(
    link: &mut AsyncClient<TcpStream>,
    decide: Option<&EvaluateBatch>,
    record: Option<&PeerRecord>,
) -> Result<Parts, ClientError> {
    let decide_id = decide.map(|b| link.send(Kind::PeerDecide, b)).transpose()?;
    let record_id = record.map(|r| link.send(Kind::PeerRecord, r)).transpose()?;
    link.flush().await?;
    let mut decided = None;
    if let Some(id) = decide_id {
        let r = link.recv().await?;
        decided = Some(r.expect(Kind::PeerDecide, id).and_then(|r| r.decode()));
    }
    let mut recorded = None;
    if let Some(id) = record_id {
        let r = link.recv().await?;
        recorded = Some(r.expect(Kind::PeerRecord, id).and_then(|r| r.decode()));
    }
    Ok((decided, recorded))
}

/// A shard's side of the cluster: the view it routes by, and its connections.
pub struct NodeSide {
    pub cell: super::view::ViewCell,
    view: RefCell<std::sync::Arc<super::view::ClusterView>>,
    pub links: Links,
}

impl NodeSide {
    pub fn new(cell: super::view::ViewCell, links: Links) -> NodeSide {
        NodeSide {
            view: RefCell::new(cell.load()),
            cell,
            links,
        }
    }

    /// The current view (taken from the cell when it moved: one atomic load otherwise).
    pub fn view(&self) -> std::sync::Arc<super::view::ClusterView> {
        if self.cell.epoch() != self.view.borrow().version {
            *self.view.borrow_mut() = self.cell.load();
        }
        self.view.borrow().clone()
    }
}
