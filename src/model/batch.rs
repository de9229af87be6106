//! How a batch of sequences is packed into one activation tensor.

use crate::error::{Error, Result};

/// A batch of sequences packed token-major into one `[total_tokens, cols]` tensor: the tokens of
/// sequence 0, then those of sequence 1, and so on (cu_seqlens style, no padding).
///
/// Each sequence lives in a cache *slot*; `starts[i]` tokens of slot `slots[i]` are already in the
/// cache, so its new tokens sit at positions `starts[i]..starts[i] + lens[i]`. A prefill has
/// `starts` all zero; a decode step has `lens` all one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqBatch {
    /// Cache slot of each sequence; distinct.
    pub slots: Vec<usize>,
    /// New tokens of each sequence in this batch; each at least 1.
    pub lens: Vec<usize>,
    /// Tokens already in the cache for each sequence (the position of its first new token).
    pub starts: Vec<usize>,
}

impl SeqBatch {
    /// Builds a batch layout, checking that it is well formed.
    pub fn new(slots: Vec<usize>, lens: Vec<usize>, starts: Vec<usize>) -> Result<Self> {
        if slots.is_empty() {
            return Err(Error::invalid("empty batch: no sequence given"));
        }
        if slots.len() != lens.len() || slots.len() != starts.len() {
            return Err(Error::invalid(format!(
                "batch layout: {} slots, {} lengths, {} starts (must be equal)",
                slots.len(),
                lens.len(),
                starts.len()
            )));
        }
        if let Some(i) = lens.iter().position(|&l| l == 0) {
            return Err(Error::invalid(format!(
                "batch layout: sequence {i} (slot {}) has no new token",
                slots[i]
            )));
        }
        let mut seen = slots.clone();
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::invalid(format!(
                "batch layout: a slot appears twice in {slots:?}"
            )));
        }
        Ok(Self {
            slots,
            lens,
            starts,
        })
    }

    /// Number of sequences.
    pub fn num_seqs(&self) -> usize {
        self.slots.len()
    }

    /// Total number of new tokens (rows of the packed tensor).
    pub fn total_tokens(&self) -> usize {
        self.lens.iter().sum()
    }

    /// Row offsets of each sequence in the packed tensor, with the total at the end: `[0, l0, l0+l1, ...]`.
    pub fn cu_seqlens(&self) -> Vec<usize> {
        let mut cu = Vec::with_capacity(self.lens.len() + 1);
        cu.push(0);
        for &l in &self.lens {
            cu.push(cu.last().unwrap() + l);
        }
        cu
    }

    /// Absolute position of every packed token, for RoPE.
    pub fn positions(&self) -> Vec<usize> {
        let mut p = Vec::with_capacity(self.total_tokens());
        for (&s, &l) in self.starts.iter().zip(&self.lens) {
            p.extend(s..s + l);
        }
        p
    }

    /// Row of the last new token of each sequence (where its next-token logits come from).
    pub fn last_rows(&self) -> Vec<usize> {
        self.cu_seqlens()[1..].iter().map(|&e| e - 1).collect()
    }
}
