//! Resolution tiers: the DeepSeek-OCR modes a page can be rasterized at (spec §3.1).

use std::fmt;
use std::str::FromStr;

/// A DeepSeek-OCR resolution mode. Pages are square, so Tiny/Small/Base/Large need neither resize nor padding.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// 512 px, 64 vision tokens.
    Tiny,
    /// 640 px, 100 vision tokens.
    Small,
    /// 1024 px, 256 vision tokens.
    Base,
    /// 1280 px, 400 vision tokens.
    Large,
    /// Dense pages: rasterized at 1280 px; the encoder's preprocessing cuts 640-px tiles (2×2 for a square page) plus a
    /// 1024-px global view, 4·100 + 256 vision tokens.
    Gundam,
}

impl Tier {
    pub const ALL: [Tier; 5] = [
        Tier::Tiny,
        Tier::Small,
        Tier::Base,
        Tier::Large,
        Tier::Gundam,
    ];

    /// Side of the square raster, in pixels.
    pub fn pixels(self) -> u32 {
        match self {
            Tier::Tiny => 512,
            Tier::Small => 640,
            Tier::Base => 1024,
            Tier::Large | Tier::Gundam => 1280,
        }
    }

    /// Vision tokens as the paper counts them (spec §3.1); the decoder receives [`Tier::embeddings`].
    pub fn vision_tokens(self) -> u32 {
        match self {
            Tier::Tiny => 64,
            Tier::Small => 100,
            Tier::Base => 256,
            Tier::Large => 400,
            Tier::Gundam => 4 * 100 + 256,
        }
    }

    /// Embeddings actually fed to the decoder: grid rows get a newline each, plus one view separator (spec §3.4).
    pub fn embeddings(self) -> u32 {
        match self {
            Tier::Tiny => 73,
            Tier::Small => 111,
            Tier::Base => 273,
            Tier::Large => 421,
            // Global 16·17 + 1, local mosaic 20 rows × (20 + 1).
            Tier::Gundam => 273 + 20 * 21,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tier::Tiny => "tiny",
            Tier::Small => "small",
            Tier::Base => "base",
            Tier::Large => "large",
            Tier::Gundam => "gundam",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tier {
    type Err = crate::RenderError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| crate::RenderError::UnknownTier(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_follow_the_spec_formula() {
        // q·(q+1) + 1 with q = S/64 (spec §3.4).
        for t in [Tier::Tiny, Tier::Small, Tier::Base, Tier::Large] {
            let q = t.pixels() / 64;
            assert_eq!(t.embeddings(), q * (q + 1) + 1);
            assert_eq!(t.vision_tokens(), q * q);
        }
        assert_eq!("SMALL".parse::<Tier>().ok(), Some(Tier::Small));
        assert!("huge".parse::<Tier>().is_err());
    }
}
