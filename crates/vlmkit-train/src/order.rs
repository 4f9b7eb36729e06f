//! The order a stage reads its data in.

use vlmkit_core::rng::Rng;

/// The order a stage reads its source in: epoch `e` is a permutation drawn from a
/// stream keyed by the seed, the stage and `e`. Stateless: position `p` maps to the
/// same example whether or not the run was interrupted before it.
#[derive(Debug, Clone)]
pub struct Order {
    len: u64,
    seed: u64,
    stage: String,
    epoch: Option<u64>,
    perm: Vec<u64>,
}

impl Order {
    pub fn new(len: u64, seed: u64, stage: &str) -> Self {
        Self {
            len,
            seed,
            stage: stage.to_string(),
            epoch: None,
            perm: Vec::new(),
        }
    }

    /// The example index at stage-relative position `position`.
    pub fn index(&mut self, position: u64) -> u64 {
        let epoch = position / self.len;
        if self.epoch != Some(epoch) {
            let mut rng = Rng::stream(self.seed, &format!("data/{}/epoch/{epoch}", self.stage));
            self.perm = (0..self.len).collect();
            rng.shuffle_by_remainder(&mut self.perm);
            self.epoch = Some(epoch);
        }
        self.perm[(position % self.len) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_permutation_per_epoch_and_reproducible() {
        let mut a = Order::new(10, 3, "s");
        let first: Vec<u64> = (0..10).map(|p| a.index(p)).collect();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let second: Vec<u64> = (10..20).map(|p| a.index(p)).collect();
        assert_ne!(first, second);
        let mut b = Order::new(10, 3, "s");
        assert_eq!(b.index(13), second[3]);
        assert_eq!(b.index(2), first[2]);
    }
}
