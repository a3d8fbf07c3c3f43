//! Shard-aware clients: ask any port for the topology, open one connection per shard, and
//! send each event straight to the shard that owns its account (see [`crate::routing`]), so
//! no event takes the extra hop a shard makes to forward it. Answers come back in the
//! caller's order whichever shards decided them.
//!
//! A naive client (one connection to the shared port) gets the same decisions, one hop
//! slower for the events its shard does not own.
//!
//! Against a cluster, [`ShardedClient::connect_cluster`] does the same across nodes: it asks
//! any node for the cluster topology (kind 0x07) and opens one connection per shard of
//! every node, so each event goes straight to the node and shard that owns it.

use std::net::ToSocketAddrs;
use std::sync::Arc;

use futures_lite::{AsyncRead, AsyncWrite};

use crate::client::{AsyncClient, Client, ClientError, Response};
use crate::frame::Kind;
use crate::routing::{PartitionTable, partition_of};
use crate::schema::{
    ClusterTopology, Decision, DecisionBatch, EvaluateBatch, Event, TopologyReply,
};

/// Requests a shard-aware client keeps in flight per shard in `evaluate_many` before it
/// reads answers (bounded, so neither side's socket buffers can fill while both write).
pub const IN_FLIGHT_PER_SHARD_MAX: usize = 128;

/// The address of shard `shard`'s own port, on the host the topology came from (`host`: the
/// host part of the address the client first connected to).
pub fn shard_addr(topology: &TopologyReply, host: &str, shard: usize) -> String {
    let port = topology.shard_ports[shard];
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host part of `addr` (`host:port`, `[v6]:port`).
pub fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    }
}

fn table_of(topology: &TopologyReply) -> Result<PartitionTable, ClientError> {
    topology
        .partition_table()
        .map_err(|e| ClientError::Decode(format!("the topology's partition table: {e}")))
}

/// A blocking shard-aware client: one [`Client`] per shard (of every node, against a
/// cluster).
pub struct ShardedClient {
    topology: TopologyReply,
    /// The cluster's topology, when connected with [`ShardedClient::connect_cluster`].
    cluster: Option<ClusterTopology>,
    /// Per partition, the index in `clients` of its owner.
    route: Vec<u32>,
    clients: Vec<Client>,
}

impl ShardedClient {
    /// Asks `addr` (any of the engine's data ports) for the topology, then connects to
    /// every shard's port on the same host, over TLS when `tls` is given.
    pub fn connect(
        addr: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<ShardedClient, ClientError> {
        let topology = Client::connect_with(addr, tls.clone())?.topology()?;
        let host = host_of(addr);
        let clients = (0..topology.shard_ports.len())
            .map(|i| {
                let shard = shard_addr(&topology, host, i);
                // Resolve now so an unreachable shard names its address.
                shard.to_socket_addrs()?;
                Client::connect_with(&shard, tls.clone())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let table = table_of(&topology)?;
        Ok(ShardedClient {
            route: table.owners().iter().map(|&s| u32::from(s)).collect(),
            topology,
            cluster: None,
            clients,
        })
    }

    /// Asks `addr` (any data port of any node) for the cluster's topology, then connects to
    /// every shard of every node of the map, over TLS when `tls` is given. A node that is
    /// not live (its partitions about to move) fails the connect: retry after a heartbeat.
    pub fn connect_cluster(
        addr: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<ShardedClient, ClientError> {
        let mut first = Client::connect_with(addr, tls.clone())?;
        let topology = first.topology()?;
        let cluster = first.cluster_topology()?;
        let p = cluster.partitions as usize;
        if cluster.partition_nodes.len() != p || cluster.partition_shards.len() != p || p == 0 {
            return Err(ClientError::Decode(format!(
                "the cluster topology has {} partitions, {} owners and {} shards",
                p,
                cluster.partition_nodes.len(),
                cluster.partition_shards.len()
            )));
        }
        // Clients in (node, shard) order; `base[n]` is node n's first.
        let mut base = Vec::with_capacity(cluster.nodes.len());
        let mut clients = Vec::new();
        for node in &cluster.nodes {
            base.push(clients.len() as u32);
            if node.shard_ports.is_empty() {
                continue;
            }
            for port in &node.shard_ports {
                let shard = if node.address.contains(':') {
                    format!("[{}]:{port}", node.address)
                } else {
                    format!("{}:{port}", node.address)
                };
                clients.push(Client::connect_with(&shard, tls.clone())?);
            }
        }
        let mut route = Vec::with_capacity(p);
        for (&n, &s) in cluster
            .partition_nodes
            .iter()
            .zip(&cluster.partition_shards)
        {
            let node = cluster.nodes.get(n as usize).ok_or_else(|| {
                ClientError::Decode(format!("partition owned by node index {n}, past the nodes"))
            })?;
            if node.shard_ports.is_empty() {
                return Err(ClientError::Decode(format!(
                    "node {:?} owns partitions and is not live; retry after its partitions move",
                    node.name
                )));
            }
            if usize::from(s) >= node.shard_ports.len() {
                return Err(ClientError::Decode(format!(
                    "node {:?} has {} shards, not shard {s}",
                    node.name,
                    node.shard_ports.len()
                )));
            }
            route.push(base[n as usize] + u32::from(s));
        }
        Ok(ShardedClient {
            topology,
            cluster: Some(cluster),
            route,
            clients,
        })
    }

    pub fn topology(&self) -> &TopologyReply {
        &self.topology
    }

    /// The cluster's topology, when connected to a cluster.
    pub fn cluster(&self) -> Option<&ClusterTopology> {
        self.cluster.as_ref()
    }

    /// The connection (shard, or a node's shard against a cluster) that owns `event`'s
    /// account.
    pub fn owner(&self, event: &Event) -> usize {
        let p = partition_of(event.account_id.as_bytes(), self.route.len() as u32);
        self.route[p as usize] as usize
    }

    /// The connection to shard `shard` (against a cluster: connections are in node order,
    /// each node's shards in order).
    pub fn shard(&mut self, shard: usize) -> &mut Client {
        &mut self.clients[shard]
    }

    /// Queues an evaluate on the event's owner; returns the shard and the request id.
    pub fn send_event(&mut self, event: &Event) -> Result<(usize, u64), ClientError> {
        let shard = self.owner(event);
        let id = self.clients[shard].send(Kind::Evaluate, event)?;
        Ok((shard, id))
    }

    /// Writes everything queued, on every shard's connection.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.clients.iter_mut().try_for_each(Client::flush)
    }

    /// The next response from shard `shard` (each shard answers in its requests' order).
    pub fn recv(&mut self, shard: usize) -> Result<Response, ClientError> {
        self.clients[shard].recv()
    }

    pub fn evaluate(&mut self, event: &Event) -> Result<Decision, ClientError> {
        let shard = self.owner(event);
        self.clients[shard].evaluate(event)
    }

    /// Decides `events` pipelined, each on its owner; the results in `events`' order. A
    /// server error answers that event only; an I/O error ends the call.
    pub fn evaluate_many(
        &mut self,
        events: &[Event],
    ) -> Result<Vec<Result<Decision, ClientError>>, ClientError> {
        let mut out = Vec::with_capacity(events.len());
        let window = IN_FLIGHT_PER_SHARD_MAX * self.clients.len();
        for chunk in events.chunks(window) {
            let mut sent = Vec::with_capacity(chunk.len());
            for event in chunk {
                sent.push(self.send_event(event)?);
            }
            self.flush()?;
            for (shard, id) in sent {
                let response = self.recv(shard)?;
                out.push(response.expect(Kind::Evaluate, id).and_then(|r| r.decode()));
            }
        }
        Ok(out)
    }

    /// One evaluate-batch per owner shard, sent together; the decisions in `events`' order.
    pub fn evaluate_batch(&mut self, events: Vec<Event>) -> Result<Vec<Decision>, ClientError> {
        let owners: Vec<usize> = events.iter().map(|e| self.owner(e)).collect();
        let mut per_shard: Vec<Vec<Event>> = vec![Vec::new(); self.clients.len()];
        for (event, &shard) in events.into_iter().zip(&owners) {
            per_shard[shard].push(event);
        }
        let mut ids = vec![None; self.clients.len()];
        for (shard, events) in per_shard.into_iter().enumerate() {
            if !events.is_empty() {
                let batch = EvaluateBatch { events };
                ids[shard] = Some(self.clients[shard].send(Kind::EvaluateBatch, &batch)?);
            }
        }
        self.flush()?;
        let mut answers: Vec<std::vec::IntoIter<Decision>> = Vec::new();
        for (shard, id) in ids.into_iter().enumerate() {
            answers.push(match id {
                Some(id) => {
                    let reply: DecisionBatch = self.clients[shard]
                        .recv()?
                        .expect(Kind::EvaluateBatch, id)?
                        .decode()?;
                    reply.decisions.into_iter()
                }
                None => Vec::new().into_iter(),
            });
        }
        owners
            .iter()
            .map(|&shard| {
                answers[shard]
                    .next()
                    .ok_or_else(|| ClientError::Decode("a shard answered too few decisions".into()))
            })
            .collect()
    }
}

/// An async shard-aware client over any `futures-io` streams: connect one stream to each
/// shard's port ([`shard_addr`] for `topology.shard_ports`, in shard order) with the
/// runtime of your choice, then hand them over.
pub struct AsyncShardedClient<S> {
    table: PartitionTable,
    clients: Vec<AsyncClient<S>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncShardedClient<S> {
    pub fn new(topology: &TopologyReply, streams: Vec<S>) -> Result<Self, ClientError> {
        if streams.len() != topology.shard_ports.len() {
            return Err(ClientError::Decode(format!(
                "{} streams for {} shards",
                streams.len(),
                topology.shard_ports.len()
            )));
        }
        Ok(AsyncShardedClient {
            table: table_of(topology)?,
            clients: streams.into_iter().map(AsyncClient::new).collect(),
        })
    }

    /// The shard that owns `event`'s account.
    pub fn owner(&self, event: &Event) -> usize {
        self.table.owner_of_account(&event.account_id) as usize
    }

    pub fn shard(&mut self, shard: usize) -> &mut AsyncClient<S> {
        &mut self.clients[shard]
    }

    pub async fn evaluate(&mut self, event: &Event) -> Result<Decision, ClientError> {
        let shard = self.owner(event);
        self.clients[shard].evaluate(event).await
    }

    /// Decides `events` pipelined, each on its owner; the results in `events`' order.
    pub async fn evaluate_many(
        &mut self,
        events: &[Event],
    ) -> Result<Vec<Result<Decision, ClientError>>, ClientError> {
        let mut out = Vec::with_capacity(events.len());
        let window = IN_FLIGHT_PER_SHARD_MAX * self.clients.len();
        for chunk in events.chunks(window) {
            let mut sent = Vec::with_capacity(chunk.len());
            for event in chunk {
                let shard = self.owner(event);
                sent.push((shard, self.clients[shard].send(Kind::Evaluate, event)?));
            }
            for client in &mut self.clients {
                client.flush().await?;
            }
            for (shard, id) in sent {
                let response = self.clients[shard].recv().await?;
                out.push(response.expect(Kind::Evaluate, id).and_then(|r| r.decode()));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_addresses_keep_the_host_and_bracket_ipv6() {
        let topology = TopologyReply {
            shard_count: 2,
            shard: 0,
            routing: crate::routing::ROUTING_NAME.into(),
            address: "0.0.0.0".into(),
            port: 7400,
            shard_ports: vec![7410, 7411],
            cpus: vec![0, 1],
            partitions: 2,
            partition_shards: vec![0, 1],
        };
        assert_eq!(host_of("127.0.0.1:7400"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7400"), "::1");
        assert_eq!(host_of("localhost:7400"), "localhost");
        assert_eq!(shard_addr(&topology, "127.0.0.1", 1), "127.0.0.1:7411");
        assert_eq!(shard_addr(&topology, "::1", 0), "[::1]:7410");
    }
}
