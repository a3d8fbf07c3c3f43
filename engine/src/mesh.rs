//! Cross-shard messages over glommio's channel mesh: the only way one core asks another
//! anything. Today that is a stats query; each shard answers from its own `CoreStats`, so
//! reading stats adds no lock and no shared counter to the data path.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};

use crate::stats::Snapshot;

/// A message between shards.
pub enum MeshMsg {
    /// "Send me your stats"; `from` is the asking shard's mesh peer id.
    StatsQuery {
        token: u64,
        from: usize,
    },
    StatsAnswer {
        token: u64,
        snapshot: Box<Snapshot>,
    },
}

/// Why a cross-shard request did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshError {
    /// A peer's queue was full.
    Overloaded,
    /// A peer did not answer in time (or has stopped).
    Timeout,
}

/// This shard's end of the mesh.
pub struct MeshPort {
    senders: Senders<MeshMsg>,
    next_token: Cell<u64>,
    pending: RefCell<HashMap<u64, LocalSender<Snapshot>>>,
}

pub type Mesh = MeshBuilder<MeshMsg, Full>;

pub fn builder(shards: usize, queue_depth: usize) -> Mesh {
    MeshBuilder::full(shards, queue_depth)
}

impl MeshPort {
    /// Joins the mesh (every shard must) and starts one task per peer that answers queries
    /// with `local_snapshot()` and routes answers to whoever is waiting.
    pub async fn join(mesh: Mesh, local_snapshot: impl Fn() -> Snapshot + 'static) -> Rc<MeshPort> {
        let (senders, mut receivers): (Senders<MeshMsg>, Receivers<MeshMsg>) =
            mesh.join().await.expect("joining the shard mesh");
        let port = Rc::new(MeshPort {
            senders,
            next_token: Cell::new(1),
            pending: RefCell::new(HashMap::new()),
        });
        let local_snapshot = Rc::new(local_snapshot);
        for (_peer, rx) in receivers.streams() {
            let port = Rc::downgrade(&port);
            let local_snapshot = local_snapshot.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    let Some(port) = port.upgrade() else { break };
                    match msg {
                        MeshMsg::StatsQuery { token, from } => {
                            let snapshot = Box::new(local_snapshot());
                            // Never await here: this task is the only one draining the
                            // channel from `from`, whose own task may be blocked the same
                            // way, so a blocking send could deadlock the pair. An answer
                            // that does not fit (or whose asker is gone) is dropped; the
                            // asker then times out with "unavailable".
                            let answer = MeshMsg::StatsAnswer { token, snapshot };
                            let _ = port.senders.try_send_to(from, answer);
                        }
                        MeshMsg::StatsAnswer { token, snapshot } => {
                            if let Some(tx) = port.pending.borrow().get(&token) {
                                let _ = tx.try_send(*snapshot);
                            }
                        }
                    }
                }
            })
            .detach();
        }
        port
    }

    /// Every other shard's snapshot.
    pub async fn gather_stats(&self, timeout: Duration) -> Result<Vec<Snapshot>, MeshError> {
        let peers: Vec<usize> = (0..self.senders.nr_consumers())
            .filter(|&p| p != self.senders.peer_id())
            .collect();
        if peers.is_empty() {
            return Ok(Vec::new());
        }
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        let (tx, rx) = local_channel::new_bounded(peers.len());
        self.pending.borrow_mut().insert(token, tx);
        glommio::defer! {
            self.pending.borrow_mut().remove(&token);
        }
        for &peer in &peers {
            let msg = MeshMsg::StatsQuery {
                token,
                from: self.senders.peer_id(),
            };
            match self.senders.try_send_to(peer, msg) {
                Ok(()) => {}
                Err(glommio::GlommioError::WouldBlock(_)) => return Err(MeshError::Overloaded),
                // The peer has stopped (shutdown) or its channel is gone.
                Err(_) => return Err(MeshError::Timeout),
            }
        }
        let collect = async {
            let mut out = Vec::with_capacity(peers.len());
            while out.len() < peers.len() {
                match rx.recv().await {
                    Some(s) => out.push(s),
                    None => break,
                }
            }
            Ok(out)
        };
        match glommio::timer::timeout(timeout, collect).await {
            Ok(out) if out.len() == peers.len() => Ok(out),
            _ => Err(MeshError::Timeout),
        }
    }
}
