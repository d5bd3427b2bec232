//! Identifiers and the tier code.
//!
//! Page and memory ids are UUID v7: the first 48 bits are the Unix time in milliseconds, so
//! their big-endian bytes sort in creation order, which keeps a scope's memories in time
//! order in the key space.

use uuid::Uuid;

use crate::error::{Result, StoreError};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUID v7).
            #[allow(clippy::new_without_default, reason = "a fresh id is not a default value")]
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The id as a UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// The 16 big-endian bytes used in keys.
            pub fn to_bytes(&self) -> [u8; 16] {
                *self.0.as_bytes()
            }

            pub(crate) fn from_bytes(b: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(b))
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl std::str::FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|e| StoreError::invalid(format!("{} {s:?}: {e}", stringify!($name))))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Identifies one page (stable across ageing and re-encoding).
    PageId
);
uuid_id!(
    /// Identifies one remembered message.
    MemoryId
);

/// The DeepSeek-OCR resolution mode a page is encoded at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// 512 px, 64 vision tokens.
    Tiny,
    /// 640 px, 100 vision tokens.
    Small,
    /// 1024 px, 256 vision tokens.
    Base,
    /// 1280 px, 400 vision tokens.
    Large,
    /// 640-px tiles plus a 1024-px global view, for dense pages.
    Gundam,
}

impl Tier {
    /// All tiers, in code order.
    pub const ALL: [Tier; 5] = [
        Tier::Tiny,
        Tier::Small,
        Tier::Base,
        Tier::Large,
        Tier::Gundam,
    ];

    /// The stable on-disk code.
    pub fn code(self) -> u8 {
        match self {
            Self::Tiny => 0,
            Self::Small => 1,
            Self::Base => 2,
            Self::Large => 3,
            Self::Gundam => 4,
        }
    }

    /// Inverse of [`Tier::code`].
    pub fn from_code(code: u8) -> Result<Self> {
        Self::ALL
            .get(code as usize)
            .copied()
            .ok_or_else(|| StoreError::corrupt(format!("unknown tier code {code}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_codes_round_trip() -> Result<()> {
        for t in Tier::ALL {
            assert_eq!(Tier::from_code(t.code())?, t);
        }
        assert!(Tier::from_code(5).is_err());
        Ok(())
    }

    #[test]
    fn ids_sort_in_creation_order() {
        let ids: Vec<PageId> = (0..200).map(|_| PageId::new()).collect();
        for w in ids.windows(2) {
            assert!(w[0].to_bytes() < w[1].to_bytes());
        }
        assert_eq!(ids[0].as_uuid().get_version_num(), 7);
    }
}
