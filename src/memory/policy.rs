//! The "near sharp, far blurry" tier policy (DESIGN.md §1): a page's recency rank within its scope (0 = newest) →
//! the tier it should be stored at. Also the conversions between the renderer's and the store's tier enums.

use optimem_renderer::Tier;
use optimem_store::Tier as StoreTier;

/// Ranks → tiers: the first `bands[0].0` pages (newest first) at `bands[0].1`, the next `bands[1].0` at
/// `bands[1].1`, ..., every older page at `rest`.
#[derive(Clone, Debug, PartialEq)]
pub struct TierPolicy {
    pub bands: Vec<(usize, Tier)>,
    pub rest: Tier,
}

impl Default for TierPolicy {
    /// Newest 2 pages Base, next 8 Small, the rest Tiny.
    fn default() -> Self {
        Self {
            bands: vec![(2, Tier::Base), (8, Tier::Small)],
            rest: Tier::Tiny,
        }
    }
}

impl TierPolicy {
    /// This policy for a model that reads only the tiers `reads` accepts: a tier it does not read becomes the sharpest
    /// tier below it that it reads (or, when none is below, the least sharp one it reads). A model that reads no tier
    /// leaves the policy as it is.
    pub fn fitted(&self, reads: impl Fn(Tier) -> bool) -> TierPolicy {
        let mut read: Vec<Tier> = Tier::ALL.into_iter().filter(|&t| reads(t)).collect();
        read.sort_by_key(|&t| sharpness(t));
        let fit = |t: Tier| {
            if read.is_empty() || read.contains(&t) {
                return t;
            }
            read.iter()
                .rev()
                .find(|&&r| sharpness(r) < sharpness(t))
                .or(read.first())
                .copied()
                .unwrap_or(t)
        };
        TierPolicy {
            bands: self.bands.iter().map(|&(n, t)| (n, fit(t))).collect(),
            rest: fit(self.rest),
        }
    }

    /// The tiers of this policy that `reads` rejects, once each, newest band first.
    pub fn unread(&self, reads: impl Fn(Tier) -> bool) -> Vec<Tier> {
        let mut out = Vec::new();
        for t in self.bands.iter().map(|b| b.1).chain([self.rest]) {
            if !reads(t) && !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    /// The tier for the page `rank` places from the newest of its scope.
    pub fn tier_for_rank(&self, rank: usize) -> Tier {
        let mut start = 0usize;
        for &(count, tier) in &self.bands {
            start = start.saturating_add(count);
            if rank < start {
                return tier;
            }
        }
        self.rest
    }
}

impl std::fmt::Display for TierPolicy {
    /// As `--policy` takes it: `base:2,small:8,tiny`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, t) in &self.bands {
            write!(f, "{t}:{n},")?;
        }
        write!(f, "{}", self.rest)
    }
}

/// The policy a server runs `engine`'s model with: `requested` as given (logging a warning for each tier the model
/// was not trained to read: its OPTICAL recalls of such pages come back empty or wrong, while IMAGES still serve
/// them), or, when nothing was requested, the default fitted to the tiers the model reads.
pub fn for_engine(requested: Option<TierPolicy>, engine: &crate::engine::Engine) -> TierPolicy {
    match requested {
        Some(p) => {
            for t in p.unread(|t| engine.reads(t)) {
                tracing::warn!(
                    tier = %t,
                    model = engine.model_id(),
                    "the tier policy stores pages at a tier this model was not trained to read"
                );
            }
            p
        }
        None => TierPolicy::default().fitted(|t| engine.reads(t)),
    }
}

/// Order of sharpness: ageing only moves a page to a strictly less sharp tier.
pub fn sharpness(tier: Tier) -> u8 {
    match tier {
        Tier::Tiny => 0,
        Tier::Small => 1,
        Tier::Base => 2,
        Tier::Large => 3,
        Tier::Gundam => 4,
    }
}

pub fn to_store(tier: Tier) -> StoreTier {
    match tier {
        Tier::Tiny => StoreTier::Tiny,
        Tier::Small => StoreTier::Small,
        Tier::Base => StoreTier::Base,
        Tier::Large => StoreTier::Large,
        Tier::Gundam => StoreTier::Gundam,
    }
}

pub fn from_store(tier: StoreTier) -> Tier {
    match tier {
        StoreTier::Tiny => Tier::Tiny,
        StoreTier::Small => Tier::Small,
        StoreTier::Base => Tier::Base,
        StoreTier::Large => Tier::Large,
        StoreTier::Gundam => Tier::Gundam,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_bands() {
        let p = TierPolicy::default();
        let tiers: Vec<Tier> = (0..12).map(|r| p.tier_for_rank(r)).collect();
        assert_eq!(&tiers[..2], &[Tier::Base; 2]);
        assert_eq!(&tiers[2..10], &[Tier::Small; 8]);
        assert_eq!(&tiers[10..], &[Tier::Tiny; 2]);
        for t in Tier::ALL {
            assert_eq!(from_store(to_store(t)), t);
        }
        assert_eq!(p.to_string(), "base:2,small:8,tiny");
    }

    #[test]
    fn fitting_moves_unread_tiers_down_to_the_sharpest_read_one() {
        let tiny_small = |t: Tier| matches!(t, Tier::Tiny | Tier::Small);
        let p = TierPolicy::default();
        assert_eq!(p.unread(tiny_small), [Tier::Base]);
        let fitted = p.fitted(tiny_small);
        assert_eq!(fitted.to_string(), "small:2,small:8,tiny");
        assert!(fitted.unread(tiny_small).is_empty());
        // Nothing read below: the least sharp read tier.
        let large = TierPolicy {
            bands: vec![(1, Tier::Tiny)],
            rest: Tier::Tiny,
        };
        assert_eq!(large.fitted(|t| t == Tier::Base).to_string(), "base:1,base");
        // A model that reads everything, or nothing, leaves the policy unchanged.
        assert_eq!(p.fitted(|_| true), p);
        assert_eq!(p.fitted(|_| false), p);
    }
}
