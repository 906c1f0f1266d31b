//! TEMPORARY stub, replaced by the real balancer module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm { RoundRobin, WeightedRoundRobin, Random, LeastConn, ConsistentHash }
#[derive(Debug, Clone, Copy)]
pub struct ServerSpec<'a> { pub id: &'a str, pub weight: u32 }
pub struct Balancer { n: usize, next: usize, algo: Algorithm }
impl Balancer {
    pub fn new(algo: Algorithm, servers: &[ServerSpec<'_>], worker: usize) -> Balancer { Balancer { n: servers.len(), next: worker, algo } }
    pub fn pick(&mut self, _key: u64, skip: impl Fn(usize) -> bool) -> Option<usize> {
        for _ in 0..self.n { let i = self.next % self.n; self.next += 1; if !skip(i) { return Some(i) } } None }
    pub fn connection_opened(&mut self, _idx: usize) {}
    pub fn connection_closed(&mut self, _idx: usize) {}
    pub fn len(&self) -> usize { self.n }
    pub fn is_empty(&self) -> bool { self.n == 0 }
    pub fn algorithm(&self) -> Algorithm { self.algo }
}
pub fn hash_key(bytes: &[u8]) -> u64 { crc32fast::hash(bytes) as u64 }
