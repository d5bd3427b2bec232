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
    }
}
