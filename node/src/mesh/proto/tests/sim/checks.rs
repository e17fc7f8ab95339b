//! What tests ask of a simulation: accessors, failures to inject, and the
//! invariants a settled mesh must hold.

use std::net::SocketAddr;
use std::time::Instant;

use rand::Rng;

use super::super::super::*;
use super::{config, Frame, Sim};

impl Sim {
    pub(crate) fn addrs(&self, n: usize) -> Vec<SocketAddr> {
        self.nodes[n].addrs.clone()
    }
    pub(crate) fn id(&self, n: usize) -> NodeId {
        self.nodes[n].id
    }
    pub(crate) fn mesh(&self, n: usize) -> &Mesh {
        &self.nodes[n].mesh
    }
    pub(crate) fn mesh_mut(&mut self, n: usize) -> &mut Mesh {
        &mut self.nodes[n].mesh
    }
    pub(crate) fn counters(&self, n: usize) -> Counters {
        self.nodes[n].mesh.counters()
    }
    pub(crate) fn cfg(&self) -> MeshConfig {
        config()
    }
    pub(crate) fn random(&mut self, below: usize) -> usize {
        self.rng.random_range(0..below)
    }
    pub(crate) fn outputs_seen(&self, n: usize) -> usize {
        self.nodes[n].log.len()
    }
    pub(crate) fn outputs_since(&self, n: usize, k: usize) -> Vec<Output> {
        self.nodes[n].log[k..].iter().map(|(_, o)| o.clone()).collect()
    }
    pub(crate) fn connects_to(&self, n: usize, to: SocketAddr) -> Vec<Instant> {
        self.nodes[n].log.iter().filter(|(_, o)| matches!(o, Output::Connect { addr, .. } if *addr == to)).map(|(t, _)| *t).collect()
    }
    pub(crate) fn lost_at(&self, n: usize) -> Option<Instant> {
        self.nodes[n].log.iter().find(|(_, o)| matches!(o, Output::Lost { .. })).map(|(t, _)| *t)
    }

    /// `n` dies without a word: its connections go silent (the peers' idle
    /// timeouts close them) and its addresses stop answering.
    pub(crate) fn crash(&mut self, n: usize) {
        self.nodes[n].alive = false;
        self.close_pipes(n, false);
    }

    /// `n`'s endpoint closes with a goodbye (the end of leave).
    pub(crate) fn close_all(&mut self, n: usize) {
        self.close_pipes(n, true);
        let now = self.now;
        let conns: Vec<ConnId> = self.nodes[n].conns.iter().filter(|(_, c)| !c.reader_done && c.hello_done).map(|(k, _)| *k).collect();
        for conn in conns {
            self.stop_reading(n, conn);
            let end = ReaderEnd::Closed { goodbye: true, reason: "locally closed".into() };
            self.nodes[n].mesh.handle(Input::ReaderEnded { conn, end }, now);
        }
        self.settle();
    }

    fn close_pipes(&mut self, n: usize, goodbye: bool) {
        let conns: Vec<ConnId> = self.nodes[n].conns.keys().copied().collect();
        for conn in conns {
            let c = self.nodes[n].conns.get_mut(&conn).expect("listed");
            c.writer_done = false;
            let (p, side) = (c.pipe, c.side);
            self.pipes[p].frames[side].push_back(Frame::Closed { goodbye });
            self.nodes[n].conns.get_mut(&conn).expect("listed").writer_done = true;
        }
    }

    /// Every live node has every other as its neighbour, both ends of each
    /// pair on the same connection, and nothing pending.
    pub(crate) fn assert_full_mesh(&self) {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|n| self.nodes[*n].alive).collect();
        for &a in &live {
            let nb = self.nodes[a].mesh.neighbour_conns();
            assert_eq!(nb.len(), live.len() - 1, "seed {}: node {a} has {nb:?}", self.seed);
            for (peer, conn) in nb {
                let b = self.nodes.iter().position(|x| x.id == peer).expect("a sim node");
                let c = &self.nodes[a].conns[&conn];
                let (other, other_conn) = self.pipes[c.pipe].ends[1 - c.side];
                assert_eq!(other, b, "seed {}", self.seed);
                let theirs = self.nodes[b].mesh.neighbour_conns().into_iter().find(|(p, _)| *p == self.nodes[a].id);
                assert_eq!(theirs.map(|t| t.1), Some(other_conn), "seed {}: the two ends keep different connections", self.seed);
            }
            assert!(self.nodes[a].mesh.is_settled(), "seed {}: node {a} not settled", self.seed);
        }
    }

    /// Every event emitted arrived once, in order.
    pub(crate) fn assert_delivered_in_order(&self) {
        for from in &self.nodes {
            for (to_id, count) in &from.emitted {
                let to = self.nodes.iter().find(|n| n.id == *to_id).expect("a sim node");
                let got = to.delivered.get(&from.id).cloned().unwrap_or_default();
                let want: Vec<u64> = (0..*count).collect();
                assert_eq!(got, want, "seed {}: events lost or reordered", self.seed);
            }
        }
    }
}
