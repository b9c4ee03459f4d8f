//! The order training sequences are seen in. The training tokens are cut into
//! non-overlapping chunks of `seq_len + 1` tokens (consecutive chunks share one token: the
//! last target of one is the first input of the next); each epoch visits every chunk once, in
//! an order drawn from the seed and the epoch number. Micro-batch `k` of step `s` is a pure
//! function of (seed, s, k), so a resumed run sees exactly the batches an uninterrupted one
//! would, with no state to save.

use crate::train::rng::SplitMix64;

/// The training sequences, batched.
pub struct Batches {
    tokens: Vec<u32>,
    seq_len: usize,
    batch_size: usize,
    accumulate: usize,
    seed: u64,
    /// The epoch whose order is cached, and that order.
    order: Option<(u64, Vec<usize>)>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the training text has {tokens} tokens: fewer than one sequence of seq_len + 1 = {} tokens", seq_len + 1
)]
pub struct TooFewTokens {
    pub tokens: usize,
    pub seq_len: usize,
}

impl Batches {
    pub fn new(
        tokens: Vec<u32>,
        seq_len: usize,
        batch_size: usize,
        accumulate: usize,
        seed: u64,
    ) -> Result<Self, TooFewTokens> {
        if seq_len == 0 || tokens.len() < seq_len + 1 {
            return Err(TooFewTokens {
                tokens: tokens.len(),
                seq_len,
            });
        }
        Ok(Self {
            tokens,
            seq_len,
            batch_size,
            accumulate,
            seed,
            order: None,
        })
    }

    /// Chunks per epoch.
    pub fn chunks(&self) -> usize {
        (self.tokens.len() - 1) / self.seq_len
    }

    /// Tokens one optimizer step trains on (targets, not counting the extra first input).
    pub fn tokens_per_step(&self) -> usize {
        self.batch_size * self.accumulate * self.seq_len
    }

    /// Micro-batch `k` of step `step`: `batch_size` rows of `seq_len + 1` tokens, row-major.
    pub fn micro_batch(&mut self, step: usize, k: usize) -> Vec<u32> {
        let first = ((step * self.accumulate + k) * self.batch_size) as u64;
        let mut out = Vec::with_capacity(self.batch_size * (self.seq_len + 1));
        for i in first..first + self.batch_size as u64 {
            let c = self.chunk(i);
            out.extend_from_slice(&self.tokens[c * self.seq_len..(c + 1) * self.seq_len + 1]);
        }
        out
    }

    /// The chunk the `i`-th sequence of the run is.
    fn chunk(&mut self, i: u64) -> usize {
        let n = self.chunks() as u64;
        let (epoch, pos) = (i / n, (i % n) as usize);
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut g = SplitMix64::derived(self.seed, &format!("data epoch {epoch}"));
            self.order = Some((epoch, g.permutation(n as usize)));
        }
        self.order.as_ref().map_or(0, |(_, p)| p[pos])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_once_per_epoch_in_a_seeded_order() {
        let tokens: Vec<u32> = (0..101).collect();
        let mut b = Batches::new(tokens.clone(), 10, 2, 1, 5).unwrap();
        assert_eq!(b.chunks(), 10);
        let mut firsts = Vec::new();
        for step in 0..5 {
            let mb = b.micro_batch(step, 0);
            assert_eq!(mb.len(), 2 * 11);
            for row in mb.chunks(11) {
                assert_eq!(row[0] % 10, 0);
                assert!(row.windows(2).all(|w| w[1] == w[0] + 1));
                firsts.push(row[0]);
            }
        }
        let mut sorted = firsts.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).map(|c| c * 10).collect::<Vec<_>>());
        assert_ne!(firsts, sorted, "shuffled");
        // A fresh sampler (a resumed run) gives the same batches; another seed does not.
        let mut again = Batches::new(tokens.clone(), 10, 2, 1, 5).unwrap();
        assert_eq!(again.micro_batch(3, 0), b.micro_batch(3, 0));
        assert_eq!(again.micro_batch(7, 0), b.micro_batch(7, 0));
        let mut other = Batches::new(tokens, 10, 2, 1, 6).unwrap();
        assert_ne!(
            (0..5).map(|s| other.micro_batch(s, 0)).collect::<Vec<_>>(),
            (0..5).map(|s| b.micro_batch(s, 0)).collect::<Vec<_>>()
        );
        assert!(Batches::new(vec![1; 10], 10, 1, 1, 0).is_err());
    }
}
