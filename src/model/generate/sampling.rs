//! Choosing the next token: greedy argmax or seeded nucleus sampling, with banned ids excluded.

use candle_core::Tensor;

use crate::model::ModelError;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// Argmax (temperature 0), what every official path uses.
    Greedy,
    /// Softmax at `temperature`, keep the smallest set of tokens whose probability reaches `top_p`,
    /// draw from it with a generator seeded by `seed` (the same seed gives the same text).
    TopP {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

/// Picks the next id from `[vocab]` f32 logits with `banned` ids at -inf.
pub(crate) fn choose(
    logits: &Tensor,
    banned: &[u32],
    sampling: &Sampling,
    rng: &mut SplitMix64,
) -> Result<u32, ModelError> {
    if banned.is_empty() && *sampling == Sampling::Greedy {
        return Ok(logits.argmax(0)?.to_scalar::<u32>()?);
    }
    let mut v = logits.to_vec1::<f32>()?;
    for &id in banned {
        if let Some(x) = v.get_mut(id as usize) {
            *x = f32::NEG_INFINITY;
        }
    }
    match sampling {
        Sampling::Greedy => Ok(argmax_first(&v)),
        Sampling::TopP {
            temperature, top_p, ..
        } => {
            if *temperature <= 0.0 {
                return Ok(argmax_first(&v));
            }
            Ok(sample_top_p(&v, *temperature, *top_p, rng.next_f64()))
        }
    }
}

/// Index of the first maximum (torch's argmax tie rule).
fn argmax_first(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Nucleus sampling with a uniform draw `u` in [0, 1).
fn sample_top_p(logits: &[f32], temperature: f64, top_p: f64, u: f64) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, ((l as f64 - max) / temperature).exp()))
        .filter(|(_, p)| *p > 0.0)
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut kept = 0.0;
    let mut n_keep = probs.len();
    for (i, p) in probs.iter().enumerate() {
        kept += p.1 / total;
        if kept >= top_p {
            n_keep = i + 1;
            break;
        }
    }
    let probs = &probs[..n_keep.max(1)];
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut target = u * mass;
    for &(i, p) in probs {
        if target < p {
            return i as u32;
        }
        target -= p;
    }
    probs.last().map_or(0, |p| p.0 as u32)
}

/// SplitMix64: a tiny seeded generator, enough for reproducible sampling.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_the_nucleus_and_is_reproducible() {
        // Probabilities ∝ e^l: with top_p 0.5 only the best token (p ≈ 0.84) survives.
        let logits = [0.0f32, 3.0, 1.0, f32::NEG_INFINITY];
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(sample_top_p(&logits, 1.0, 0.5, u), 1);
        }
        // With top_p 1 a draw near 1 reaches the least likely finite token; banned ids never.
        assert_eq!(sample_top_p(&logits, 1.0, 1.0, 0.9999), 0);
        let mut a = SplitMix64(7);
        let mut b = SplitMix64(7);
        assert_eq!(
            (0..4).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..4).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        assert!((0..1000).all(|_| (0.0..1.0).contains(&a.next_f64())));
    }

    #[test]
    fn greedy_choice_skips_banned_ids() -> Result<(), ModelError> {
        let logits = Tensor::new(&[0.5f32, 2.0, 1.5], &candle_core::Device::Cpu)?;
        let mut rng = SplitMix64(0);
        assert_eq!(choose(&logits, &[], &Sampling::Greedy, &mut rng)?, 1);
        assert_eq!(choose(&logits, &[1], &Sampling::Greedy, &mut rng)?, 2);
        Ok(())
    }
}
