//! Optional bearer-token authentication: an interceptor in front of `optimem.v1.Memory` that wants
//! `authorization: Bearer <token>` on every call when the server has a token.
//!
//! The comparison is constant-time in the token's content (`subtle`), so response timing does not reveal how much of
//! a guess was right. The token is never logged: [`AuthToken`]'s `Debug` prints a placeholder.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A shared secret clients must present. Built from a file's content with surrounding whitespace trimmed.
#[derive(Clone)]
pub struct AuthToken(Arc<[u8]>);

impl AuthToken {
    /// A token from its text; `None` when it is blank (a blank token would be a door without a lock).
    pub fn new(token: &str) -> Option<Self> {
        let t = token.trim();
        (!t.is_empty()).then(|| Self(t.as_bytes().into()))
    }

    /// Whether `presented` is this token, in time independent of where they differ.
    fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.0.as_ref().ct_eq(presented))
    }
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

/// The interceptor: lets every call through without a token configured, else checks the `authorization` header.
#[derive(Clone, Debug)]
pub struct Auth {
    token: Option<AuthToken>,
}

impl Auth {
    pub fn new(token: Option<AuthToken>) -> Self {
        Self { token }
    }
}

impl Interceptor for Auth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(req);
        };
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        match presented {
            Some(p) if token.matches(p) => Ok(req),
            Some(_) => Err(Status::unauthenticated("wrong bearer token")),
            None => Err(Status::unauthenticated(
                "this server requires `authorization: Bearer <token>`",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(auth: &mut Auth, header: Option<&str>) -> Result<(), Status> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut().insert(
                "authorization",
                h.parse().map_err(|_| Status::internal("header"))?,
            );
        }
        auth.call(req).map(|_| ())
    }

    #[test]
    fn token_is_checked_and_never_printed() {
        let token = AuthToken::new(" s3cret\n").expect("non-blank");
        assert!(!format!("{token:?}").contains("s3cret"));
        let mut auth = Auth::new(Some(token));
        assert!(call(&mut auth, Some("Bearer s3cret")).is_ok());
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
        ] {
            let e = call(&mut auth, bad).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
        }
        assert!(call(&mut Auth::new(None), None).is_ok());
        assert!(AuthToken::new("  \n").is_none());
    }
}
