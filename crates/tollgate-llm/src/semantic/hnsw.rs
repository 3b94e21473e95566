//! A hierarchical navigable small world graph (Malkov & Yashunin) over unit vectors, scored by
//! cosine similarity (the dot product of normalised vectors).
//!
//! Nodes are only ever added; a removed entry is the caller's business (it filters what it no
//! longer serves and rebuilds the graph when too much of it is dead).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// The nodes a search has seen: one bit each (cheaper than hashing at these sizes).
struct Visited(Vec<u64>);

impl Visited {
    fn new(nodes: usize) -> Visited {
        Visited(vec![0; nodes.div_ceil(64)])
    }

    /// Marks a node; true when it was not marked before.
    fn insert(&mut self, node: u32) -> bool {
        let (word, bit) = (node as usize / 64, 1u64 << (node % 64));
        match self.0.get_mut(word) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                true
            }
            _ => false,
        }
    }
}

/// Neighbours kept per node above the ground layer (twice that on layer 0).
const M: usize = 16;
/// Indexes up to this size are searched by scanning every vector: exact, and about as fast as
/// the graph at this size.
pub const EXACT_UP_TO: usize = 2048;

/// A node's slots in the flat layer-0 array: the count and `2 * M` neighbours.
const GROUND_STRIDE: usize = 2 * M + 1;
/// Candidates considered while inserting.
const EF_CONSTRUCTION: usize = 48;

pub struct Hnsw {
    dim: usize,
    /// Every node's vector, one after another.
    vectors: Vec<f32>,
    /// Per node, per layer (0 = ground) its neighbours.
    links: Vec<Vec<Vec<u32>>>,
    /// Layer 0's links, in one flat array: per node a count, then `2 * M` slots (one
    /// allocation, so a search does not chase a pointer per node it expands).
    ground: Vec<u32>,
    /// Per node, how many layer-0 lists hold it: a list is never pruned of a node's last way in.
    incoming: Vec<u32>,
    entry: Option<u32>,
    top: usize,
    level_scale: f64,
    rng: fastrand::Rng,
}

/// A scored node, ordered by similarity.
#[derive(Clone, Copy, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// The dot product, in eight lanes the compiler can vectorise.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Scales a vector to unit length (a zero vector stays zero).
pub fn normalise(v: &mut [f32]) {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        for x in v {
            *x /= n;
        }
    }
}

impl Hnsw {
    pub fn new(dim: usize) -> Hnsw {
        Hnsw {
            dim,
            vectors: Vec::new(),
            links: Vec::new(),
            ground: Vec::new(),
            incoming: Vec::new(),
            entry: None,
            top: 0,
            level_scale: 1.0 / (M as f64).ln(),
            rng: fastrand::Rng::with_seed(0x5eed),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// A node's vector.
    pub fn vector_of(&self, node: u32) -> Option<&[f32]> {
        let at = node as usize * self.dim;
        self.vectors.get(at..at + self.dim)
    }

    fn vector(&self, node: u32) -> &[f32] {
        let at = node as usize * self.dim;
        &self.vectors[at..at + self.dim]
    }

    /// A node's neighbours on a layer.
    fn neighbours(&self, node: u32, layer: usize) -> &[u32] {
        if layer == 0 {
            let at = node as usize * GROUND_STRIDE;
            let n = self.ground.get(at).copied().unwrap_or(0) as usize;
            self.ground.get(at + 1..at + 1 + n).unwrap_or(&[])
        } else {
            self.links
                .get(node as usize)
                .and_then(|l| l.get(layer - 1))
                .map_or(&[], Vec::as_slice)
        }
    }

    fn set_neighbours(&mut self, node: u32, layer: usize, to: impl IntoIterator<Item = u32>) {
        if layer == 0 {
            let at = node as usize * GROUND_STRIDE;
            for i in 0..self.ground[at] as usize {
                let old = self.ground[at + 1 + i] as usize;
                self.incoming[old] = self.incoming[old].saturating_sub(1);
            }
            let mut n = 0;
            for (slot, v) in (at + 1..at + GROUND_STRIDE).zip(to) {
                self.ground[slot] = v;
                self.incoming[v as usize] += 1;
                n += 1;
            }
            self.ground[at] = n;
        } else if let Some(l) = self
            .links
            .get_mut(node as usize)
            .and_then(|l| l.get_mut(layer - 1))
        {
            *l = to.into_iter().collect();
        }
    }

    /// Every node scored: the `k` best, best first.
    fn scan(&self, q: &[f32], k: usize) -> Vec<(u32, f32)> {
        let mut best: BinaryHeap<std::cmp::Reverse<Scored>> = BinaryHeap::with_capacity(k + 1);
        for (node, v) in self.vectors.chunks_exact(self.dim.max(1)).enumerate() {
            let s = Scored(dot(q, v), node as u32);
            if best.len() < k {
                best.push(std::cmp::Reverse(s));
            } else if best.peek().is_some_and(|w| s > w.0) {
                best.pop();
                best.push(std::cmp::Reverse(s));
            }
        }
        let mut out: Vec<(u32, f32)> = best.into_iter().map(|r| (r.0 .1, r.0 .0)).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// The similarity of a query and a node.
    fn score(&self, q: &[f32], node: u32) -> f32 {
        dot(q, self.vector(node))
    }

    /// The similarity of two nodes.
    fn between(&self, a: u32, b: u32) -> f32 {
        dot(self.vector(a), self.vector(b))
    }

    /// Adds a unit vector of this index's dimension; returns its node number.
    pub fn insert(&mut self, v: &[f32]) -> u32 {
        debug_assert_eq!(v.len(), self.dim);
        let node = self.links.len() as u32;
        let level = ((-(1.0 - self.rng.f64()).ln()) * self.level_scale).floor() as usize;
        let level = level.min(16);
        self.vectors.extend_from_slice(v);
        self.links.push(vec![Vec::new(); level]);
        self.ground.resize(self.ground.len() + GROUND_STRIDE, 0);
        self.incoming.push(0);
        let Some(mut ep) = self.entry else {
            self.entry = Some(node);
            self.top = level;
            return node;
        };
        let q = v;
        let mut ep_score = self.score(q, ep);
        for layer in (level + 1..=self.top).rev() {
            (ep, ep_score) = self.greedy(q, ep, ep_score, layer);
        }
        let mut entry_points = vec![Scored(ep_score, ep)];
        for layer in (0..=level.min(self.top)).rev() {
            let found = self.search_layer(q, &entry_points, EF_CONSTRUCTION, layer);
            let max = if layer == 0 { 2 * M } else { M };
            let chosen = self.select(&found, max);
            self.set_neighbours(node, layer, chosen.iter().map(|s| s.1));
            for s in &chosen {
                self.link(s.1, node, layer, max);
            }
            entry_points = found;
        }
        if level > self.top {
            self.top = level;
            self.entry = Some(node);
        }
        node
    }

    /// Adds `to` to `from`'s neighbours on a layer; a full list is pruned back to `max` with
    /// the same heuristic new nodes use (keeping only the closest would let dense clusters
    /// link among themselves alone and cut the graph into islands).
    fn link(&mut self, from: u32, to: u32, layer: usize, max: usize) {
        let neighbours = self.neighbours(from, layer);
        if neighbours.len() < max {
            let mut grown = neighbours.to_vec();
            grown.push(to);
            self.set_neighbours(from, layer, grown);
            return;
        }
        let mut scored: Vec<Scored> = neighbours
            .iter()
            .chain(std::iter::once(&to))
            .map(|&n| Scored(self.between(from, n), n))
            .collect();
        scored.sort_by(|a, b| b.cmp(a));
        let mut kept = self.select(&scored, max);
        if layer == 0 {
            // A node this list would drop that no other list holds would become unreachable:
            // it takes the place of the least similar kept node that other lists also hold.
            let held = |n: u32| neighbours.contains(&n);
            let others = |n: u32| self.incoming[n as usize].saturating_sub(u32::from(held(n)));
            for d in &scored {
                if kept.iter().any(|k| k.1 == d.1) || others(d.1) > 0 {
                    continue;
                }
                if let Some(at) = kept.iter().rposition(|k| others(k.1) > 0) {
                    kept[at] = *d;
                }
            }
        }
        self.set_neighbours(from, layer, kept.iter().map(|s| s.1));
    }

    /// The neighbour-selection heuristic: a candidate is kept when it is closer to the base
    /// than to any neighbour already kept (which spreads links across directions); the
    /// remaining slots are filled with the closest of the rest. `candidates` is best first.
    fn select(&self, candidates: &[Scored], max: usize) -> Vec<Scored> {
        let mut kept: Vec<Scored> = Vec::with_capacity(max);
        let mut skipped = Vec::new();
        for &c in candidates {
            if kept.len() >= max {
                break;
            }
            if kept.iter().all(|k| self.between(c.1, k.1) < c.0) {
                kept.push(c);
            } else {
                skipped.push(c);
            }
        }
        for c in skipped {
            if kept.len() >= max {
                break;
            }
            kept.push(c);
        }
        kept
    }

    /// Walks a layer towards the query while a neighbour is closer.
    fn greedy(&self, q: &[f32], mut ep: u32, mut score: f32, layer: usize) -> (u32, f32) {
        loop {
            let mut moved = false;
            for &n in self.neighbours(ep, layer) {
                let s = self.score(q, n);
                if s > score {
                    (ep, score, moved) = (n, s, true);
                }
            }
            if !moved {
                return (ep, score);
            }
        }
    }

    /// The `ef` nodes of a layer nearest the query found from the entry points, best first.
    fn search_layer(&self, q: &[f32], entry: &[Scored], ef: usize, layer: usize) -> Vec<Scored> {
        let mut visited = Visited::new(self.links.len());
        for s in entry {
            visited.insert(s.1);
        }
        // Candidates to expand, best first; results kept, worst on top.
        let mut candidates: BinaryHeap<Scored> = entry.iter().copied().collect();
        let mut results: BinaryHeap<std::cmp::Reverse<Scored>> =
            entry.iter().map(|&s| std::cmp::Reverse(s)).collect();
        while results.len() > ef {
            results.pop();
        }
        while let Some(c) = candidates.pop() {
            let worst = results.peek().map_or(f32::NEG_INFINITY, |r| r.0 .0);
            if c.0 < worst && results.len() >= ef {
                break;
            }
            for &n in self.neighbours(c.1, layer) {
                if !visited.insert(n) {
                    continue;
                }
                let s = self.score(q, n);
                let worst = results.peek().map_or(f32::NEG_INFINITY, |r| r.0 .0);
                if results.len() < ef || s > worst {
                    candidates.push(Scored(s, n));
                    results.push(std::cmp::Reverse(Scored(s, n)));
                    if results.len() > ef {
                        results.pop();
                    }
                }
            }
        }
        let mut out: Vec<Scored> = results.into_iter().map(|r| r.0).collect();
        out.sort_by(|a, b| b.cmp(a));
        out
    }

    /// Up to `k` nodes most similar to a unit query, best first, as (node, similarity): exact
    /// for an index of at most [`EXACT_UP_TO`] nodes (a scan), approximate above.
    pub fn search(&self, q: &[f32], k: usize, ef: usize) -> Vec<(u32, f32)> {
        if q.len() != self.dim {
            return Vec::new();
        }
        if self.len() <= EXACT_UP_TO {
            return self.scan(q, k);
        }
        let Some(mut ep) = self.entry else {
            return Vec::new();
        };
        let mut score = self.score(q, ep);
        for layer in (1..=self.top).rev() {
            (ep, score) = self.greedy(q, ep, score, layer);
        }
        self.search_layer(q, &[Scored(score, ep)], ef.max(k), 0)
            .into_iter()
            .take(k)
            .map(|s| (s.1, s.0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_unit(rng: &mut fastrand::Rng, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.f32() * 2.0 - 1.0).collect();
        normalise(&mut v);
        v
    }

    #[test]
    fn finds_the_true_nearest_neighbour_nearly_always() {
        let dim = 32;
        let mut rng = fastrand::Rng::with_seed(7);
        let mut index = Hnsw::new(dim);
        let points: Vec<Vec<f32>> = (0..2500).map(|_| random_unit(&mut rng, dim)).collect();
        for p in &points {
            index.insert(p);
        }
        assert_eq!(index.len(), 2500);
        assert!(
            index.len() > EXACT_UP_TO,
            "the graph is searched, not scanned"
        );
        let mut found = 0;
        for _ in 0..200 {
            let q = random_unit(&mut rng, dim);
            let exact = points
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u32, dot(&q, p)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            let got = index.search(&q, 1, 64);
            if got.first().map(|g| g.0) == Some(exact.0) {
                found += 1;
            }
        }
        assert!(found >= 190, "recall@1 {found}/200");
        // A stored point is its own best match, at similarity 1.
        let got = index.search(&points[1234], 1, 64);
        assert_eq!(got[0].0, 1234);
        assert!((got[0].1 - 1.0).abs() < 1e-5);
    }

    /// Blends of a few of 24 directions, with a random unit vector every 500 nodes.
    fn clusters_with_lone_entries(n: usize) -> (Hnsw, Vec<(u32, Vec<f32>)>) {
        let dim = 64;
        let mut rng = fastrand::Rng::with_seed(11);
        let bases: Vec<Vec<f32>> = (0..24).map(|_| random_unit(&mut rng, dim)).collect();
        let mut index = Hnsw::new(dim);
        let mut lone = Vec::new();
        for i in 0..n {
            if i % 500 == 250 {
                let v = random_unit(&mut rng, dim);
                lone.push((index.insert(&v), v));
                continue;
            }
            let mut v = vec![0f32; dim];
            for w in [1.0f32, 0.6, 0.3] {
                let b = &bases[rng.usize(..bases.len())];
                for (x, y) in v.iter_mut().zip(b) {
                    *x += w * y;
                }
            }
            for x in v.iter_mut() {
                *x += (rng.f32() - 0.5) * 0.1;
            }
            normalise(&mut v);
            index.insert(&v);
        }
        (index, lone)
    }

    /// Dense clusters (blends of a few directions) with lone entries among them: in an index
    /// small enough to scan, a query near a lone entry always finds it (a graph can lose the
    /// links to an early lone entry as clusters grow around it).
    #[test]
    fn lone_entries_among_dense_clusters_are_found() {
        let (index, lone) = clusters_with_lone_entries(EXACT_UP_TO);
        let mut rng = fastrand::Rng::with_seed(3);
        let mut found = 0;
        for (node, v) in &lone {
            let mut q: Vec<f32> = v.iter().map(|x| x + (rng.f32() - 0.5) * 0.05).collect();
            normalise(&mut q);
            let got = index.search(&q, 8, 64);
            if got.first().map(|g| g.0) == Some(*node) {
                found += 1;
            }
        }
        assert_eq!(found, lone.len(), "lone entries found");
    }

    /// The same above the scan size, through the graph: no node loses its last way in, and
    /// the lone entries are found.
    #[test]
    fn lone_entries_stay_reachable_through_the_graph() {
        let (index, lone) = clusters_with_lone_entries(6000);
        assert!(index.len() > EXACT_UP_TO);
        assert!(
            index.incoming.iter().skip(1).all(|&n| n > 0),
            "every node but the first has a way in"
        );
        let found = lone
            .iter()
            .filter(|(node, v)| index.search(v, 8, 64).first().map(|g| g.0) == Some(*node))
            .count();
        // Approximate: reachable is not always reached (without the guard: 10 of 12).
        assert!(
            found * 10 >= lone.len() * 9,
            "lone entries found: {found} of {}",
            lone.len()
        );
    }

    #[test]
    fn empty_and_mismatched_queries_find_nothing() {
        let index = Hnsw::new(4);
        assert!(index.search(&[1.0, 0.0, 0.0, 0.0], 3, 10).is_empty());
        let mut index = Hnsw::new(4);
        index.insert(&[1.0, 0.0, 0.0, 0.0]);
        assert!(index.search(&[1.0, 0.0], 3, 10).is_empty());
        assert_eq!(index.search(&[0.0, 1.0, 0.0, 0.0], 3, 10).len(), 1);
    }
}
