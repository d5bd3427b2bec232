//! Scopes: the (user, agent, session) triple that owns memories and pages.
//!
//! A scope is an exact triple: `(user=a)` and `(user=a, session=s)` are two different,
//! fully isolated scopes. Its key encoding is self-delimiting, so no scope's encoding is a
//! prefix of another's, and a prefix scan over one scope can never reach into another.

use crate::error::{Result, StoreError};

/// Longest accepted scope part, in bytes of UTF-8.
pub const MAX_SCOPE_PART_BYTES: usize = 256;

/// Who a memory belongs to. At least one part must be set.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    user: Option<String>,
    agent: Option<String>,
    session: Option<String>,
}

impl Scope {
    /// Builds and validates a scope: at least one part set, each part non-empty, at most
    /// [`MAX_SCOPE_PART_BYTES`] long and free of NUL.
    pub fn new(user: Option<&str>, agent: Option<&str>, session: Option<&str>) -> Result<Self> {
        let scope = Self {
            user: user.map(str::to_owned),
            agent: agent.map(str::to_owned),
            session: session.map(str::to_owned),
        };
        scope.validate()?;
        Ok(scope)
    }

    /// A scope of one user only.
    pub fn user(user: &str) -> Result<Self> {
        Self::new(Some(user), None, None)
    }

    /// The user part, if set.
    pub fn user_id(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The agent part, if set.
    pub fn agent_id(&self) -> Option<&str> {
        self.agent.as_deref()
    }

    /// The session part, if set.
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_deref()
    }

    fn parts(&self) -> [(&'static str, Option<&str>); 3] {
        [
            ("user", self.user.as_deref()),
            ("agent", self.agent.as_deref()),
            ("session", self.session.as_deref()),
        ]
    }

    fn validate(&self) -> Result<()> {
        if self.parts().iter().all(|(_, p)| p.is_none()) {
            return Err(StoreError::InvalidScope(
                "at least one of user, agent, session is required".into(),
            ));
        }
        for (name, part) in self.parts() {
            let Some(part) = part else { continue };
            if part.is_empty() {
                return Err(StoreError::InvalidScope(format!("{name} is empty")));
            }
            if part.len() > MAX_SCOPE_PART_BYTES {
                return Err(StoreError::InvalidScope(format!(
                    "{name} is {} bytes long, at most {MAX_SCOPE_PART_BYTES} allowed",
                    part.len()
                )));
            }
            if part.contains('\0') {
                return Err(StoreError::InvalidScope(format!("{name} contains NUL")));
            }
        }
        Ok(())
    }

    /// The scope's key prefix: for each part, `0x00` if absent, else `0x01`, a big-endian
    /// `u16` length and the bytes. Self-delimiting, hence prefix-free across scopes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        for (_, part) in self.parts() {
            match part {
                None => out.push(0),
                Some(p) => {
                    out.push(1);
                    let len = u16::try_from(p.len())
                        .expect("scope part at most MAX_SCOPE_PART_BYTES (validated)");
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(p.as_bytes());
                }
            }
        }
        out
    }

    /// Decodes a scope from the front of `key`, returning it and the rest of the key.
    pub(crate) fn decode_prefix(key: &[u8]) -> Result<(Self, &[u8])> {
        let mut rest = key;
        let mut parts: [Option<String>; 3] = [None, None, None];
        for part in &mut parts {
            let (&tag, tail) = rest
                .split_first()
                .ok_or_else(|| StoreError::corrupt("scope key is truncated"))?;
            rest = tail;
            match tag {
                0 => {}
                1 => {
                    if rest.len() < 2 {
                        return Err(StoreError::corrupt("scope key is truncated"));
                    }
                    let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                    let bytes = rest
                        .get(2..2 + len)
                        .ok_or_else(|| StoreError::corrupt("scope key is truncated"))?;
                    *part = Some(
                        String::from_utf8(bytes.to_vec())
                            .map_err(|_| StoreError::corrupt("scope key part is not UTF-8"))?,
                    );
                    rest = &rest[2 + len..];
                }
                t => return Err(StoreError::corrupt(format!("scope key has part tag {t}"))),
            }
        }
        let [user, agent, session] = parts;
        let scope = Self {
            user,
            agent,
            session,
        };
        scope
            .validate()
            .map_err(|e| StoreError::corrupt(format!("stored scope key is invalid: {e}")))?;
        Ok((scope, rest))
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (name, part) in self.parts() {
            if let Some(p) = part {
                if !first {
                    f.write_str(",")?;
                }
                write!(f, "{name}={p:?}")?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(u: Option<&str>, a: Option<&str>, se: Option<&str>) -> Scope {
        Scope::new(u, a, se).expect("valid test scope")
    }

    #[test]
    fn validation() {
        assert!(matches!(
            Scope::new(None, None, None),
            Err(StoreError::InvalidScope(_))
        ));
        assert!(matches!(Scope::user(""), Err(StoreError::InvalidScope(_))));
        assert!(matches!(
            Scope::user("a\0b"),
            Err(StoreError::InvalidScope(_))
        ));
        assert!(matches!(
            Scope::user(&"x".repeat(MAX_SCOPE_PART_BYTES + 1)),
            Err(StoreError::InvalidScope(_))
        ));
        assert!(Scope::user(&"x".repeat(MAX_SCOPE_PART_BYTES)).is_ok());
        assert!(Scope::new(None, Some("agent"), None).is_ok());
    }

    #[test]
    fn encoding_round_trips_and_is_prefix_free() -> Result<()> {
        let scopes = [
            s(Some("a"), None, None),
            s(Some("a"), None, Some("s")),
            s(Some("a"), Some("b"), None),
            s(Some("ab"), None, None),
            s(None, Some("a"), None),
            s(None, None, Some("a")),
            s(Some("a\u{1}"), None, None),
            s(Some("日本"), Some("x"), Some("y")),
        ];
        for a in &scopes {
            let enc = a.encode();
            let (back, rest) = Scope::decode_prefix(&enc)?;
            assert_eq!(&back, a);
            assert!(rest.is_empty());
            for b in &scopes {
                if a != b {
                    assert!(!b.encode().starts_with(&enc), "{a} is a prefix of {b}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn decoding_damaged_keys_fails_cleanly() {
        let enc = s(Some("user"), Some("agent"), None).encode();
        for cut in 0..enc.len() {
            assert!(matches!(
                Scope::decode_prefix(&enc[..cut]),
                Err(StoreError::Corrupt(_))
            ));
        }
        assert!(matches!(
            Scope::decode_prefix(&[7, 0, 0]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            Scope::decode_prefix(&[0, 0, 0]),
            Err(StoreError::Corrupt(_))
        ));
    }
}
