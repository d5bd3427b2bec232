//! Renderers shared by concurrent Remembers.
//!
//! A [`Renderer`] holds mutable caches (shaped words, glyph masks), so one request uses it at a time. One renderer
//! behind a mutex made a burst of Remembers queue: 32 clients starting together waited up to 460 ms for a 10 ms
//! render each (`bench service`, session 6). The pool makes up to `size` renderers, the first at start-up (so a bad
//! layout is an error there) and the others on first need, and lends each to one request at a time.

use std::sync::{Condvar, Mutex, MutexGuard};

use optimem_renderer::density::SAMPLE_PROSE;
use optimem_renderer::{Document, LayoutConfig, Renderer, Tier, Turn};

use super::{MemoryError, Result};

pub(crate) struct RendererPool {
    config: LayoutConfig,
    size: usize,
    state: Mutex<State>,
    returned: Condvar,
}

struct State {
    idle: Vec<Renderer>,
    /// Renderers in existence: idle or lent.
    made: usize,
}

impl RendererPool {
    /// A pool of at most `size` renderers (at least one) with this layout.
    pub(crate) fn new(config: LayoutConfig, size: usize) -> Result<Self> {
        let first = make(&config)?;
        Ok(Self {
            config,
            size: size.max(1),
            state: Mutex::new(State {
                idle: vec![first],
                made: 1,
            }),
            returned: Condvar::new(),
        })
    }

    /// An idle renderer, a new one while fewer than `size` exist, or the first one given back.
    pub(crate) fn get(&self) -> Result<Lease<'_>> {
        let mut state = self.lock();
        loop {
            if let Some(r) = state.idle.pop() {
                return Ok(self.lease(r));
            }
            if state.made < self.size {
                state.made += 1;
                drop(state);
                // Made outside the lock: loading the fonts takes a few milliseconds.
                return match make(&self.config) {
                    Ok(r) => Ok(self.lease(r)),
                    Err(e) => {
                        self.lock().made -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            state = self
                .returned
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Makes every renderer the pool may hold and has each lay out a sample chat page and rasterize it at `tiers`, so
    /// that the first requests (a burst of clients starting together) do not pay for empty caches: glyph masks per
    /// size, shaped words. Waits for renderers lent at the time. Returns how many renderers are warm.
    pub(crate) fn warm(&self, tiers: &[Tier]) -> Result<usize> {
        let turns = [
            Turn {
                role: "user".into(),
                content: SAMPLE_PROSE.into(),
                ..Turn::default()
            },
            Turn {
                role: "assistant".into(),
                content: SAMPLE_PROSE.into(),
                ..Turn::default()
            },
        ];
        let mut lent = Vec::with_capacity(self.size);
        while lent.len() < self.size {
            let mut r = self.get()?;
            for page in r.paginate(Document::Chat(&turns)).iter().take(1) {
                for &tier in tiers {
                    r.rasterize(page, tier);
                }
            }
            lent.push(r);
        }
        Ok(lent.len())
    }

    fn lease(&self, renderer: Renderer) -> Lease<'_> {
        Lease {
            pool: self,
            renderer: Some(renderer),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a list and a count, each changed in one step: a panic elsewhere cannot leave it half-changed.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn make(config: &LayoutConfig) -> Result<Renderer> {
    Renderer::new(config.clone()).map_err(|e| MemoryError::invalid(format!("layout: {e}")))
}

/// A renderer lent to one request; given back when dropped.
pub(crate) struct Lease<'a> {
    pool: &'a RendererPool,
    renderer: Option<Renderer>,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Renderer;
    fn deref(&self) -> &Renderer {
        self.renderer
            .as_ref()
            .expect("a lease holds its renderer until dropped")
    }
}

impl std::ops::DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Renderer {
        self.renderer
            .as_mut()
            .expect("a lease holds its renderer until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(r) = self.renderer.take() else {
            return;
        };
        let mut state = self.pool.lock();
        if std::thread::panicking() {
            // Its caches may be half-updated: drop it, and let the next request make a fresh one.
            state.made -= 1;
        } else {
            state.idle.push(r);
        }
        drop(state);
        self.pool.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use optimem_renderer::{Document, Tier};
    use std::sync::Arc;

    #[test]
    fn lends_up_to_size_renderers_at_once_and_reuses_them() {
        let pool = Arc::new(RendererPool::new(LayoutConfig::default(), 2).expect("pool"));
        let a = pool.get().expect("renderer");
        let b = pool.get().expect("renderer");
        assert_eq!(pool.lock().made, 2);
        // A third request waits until one is given back.
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut r = pool.get().expect("renderer");
                let pages = r.paginate(Document::Text("waited"));
                tx.send(r.rasterize(&pages[0], Tier::Tiny).width)
                    .expect("send");
            })
        };
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err()
        );
        drop(a);
        assert_eq!(rx.recv().expect("waiter"), 512);
        waiter.join().expect("waiter");
        drop(b);
        let state = pool.lock();
        assert_eq!((state.made, state.idle.len()), (2, 2));
    }

    #[test]
    fn a_renderer_lent_to_a_panicking_request_is_replaced() {
        let pool = Arc::new(RendererPool::new(LayoutConfig::default(), 1).expect("pool"));
        let p = pool.clone();
        let crashed = std::thread::spawn(move || {
            let _r = p.get().expect("renderer");
            panic!("render failed");
        })
        .join();
        assert!(crashed.is_err());
        assert_eq!(pool.lock().made, 0);
        // The next request gets a fresh renderer instead of an error or a wait.
        let mut r = pool.get().expect("renderer");
        assert_eq!(r.paginate(Document::Text("fresh")).len(), 1);
    }

    #[test]
    fn warming_makes_every_renderer_and_gives_them_back() {
        let pool = RendererPool::new(LayoutConfig::default(), 3).expect("pool");
        assert_eq!(pool.warm(&[Tier::Small, Tier::Tiny]).expect("warm"), 3);
        let state = pool.lock();
        assert_eq!((state.made, state.idle.len()), (3, 3));
    }

    #[test]
    fn a_bad_layout_is_an_error_at_start() {
        let bad = LayoutConfig {
            font_size: 0.5,
            ..LayoutConfig::default()
        };
        assert!(matches!(
            RendererPool::new(bad, 2),
            Err(MemoryError::InvalidArgument(_))
        ));
    }
}
