//! Remember: chat messages → pages in chat layout → vision tokens → one atomic store write.
//!
//! With [`EncodeMode::Background`] (write-behind, the server's default) the pages are written without their tokens —
//! raster, spans, source, tier, text-token count and the tier's paper vision-token count — and the reply does not wait
//! for the engine: the pages join the backlog of the [`Encoder`](super::Encoder). With [`EncodeMode::Sync`] each page
//! is encoded before the write. Either way the write is one atomic, flushed `write_pages`.
//!
//! Appending to a scope fills its last page first: that page's memories and the new messages are laid out again, the
//! first resulting page replaces the stored last page (`ReplaceLast`, same id, checked generation) and the rest are
//! appended, all in one `write_pages` call. The last page is re-laid out only when it holds whole memories and its
//! source text is kept (a memory continued from the page before, or a store that keeps no sources, cannot be
//! re-rendered faithfully); otherwise the new messages start a new page.

use std::collections::BTreeMap;

use optimem_renderer::{Document, Page as LaidOut, Tier, Turn};
use optimem_store::memory::{MAX_FIELD_BYTES, MAX_METADATA_ENTRIES};
use optimem_store::{
    MemoryId, NewMemory, NewPage, PageId, PageParts, PageSelector, ReplaceLast, Scope, Span,
    WritePages,
};

use super::encoder::EncodeFor;
use super::policy::{from_store, to_store};
use super::{EncodeMode, Memory, MemoryError, Result, now_ms};

/// A message to remember.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// When it was said (ms since the Unix epoch); now when absent.
    pub time_ms: Option<u64>,
    pub metadata: BTreeMap<String, String>,
}

/// One page a Remember wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct PageWritten {
    pub id: PageId,
    pub seq: u64,
    pub tier: Tier,
    /// The paper's vision-token count (64 / 100 / 256 / 400).
    pub vision_tokens: u32,
    /// Embeddings actually stored and fed to the decoder (newlines and view separator included); 0 while pending.
    pub embeddings: u64,
    pub text_tokens: u32,
    /// True when the page was written write-behind: its tokens are still to be encoded.
    pub pending: bool,
    /// True for the scope's former last page, filled with new messages.
    pub replaced: bool,
}

/// What a Remember did.
#[derive(Clone, Debug, PartialEq)]
pub struct Remembered {
    /// One per message, in order.
    pub memory_ids: Vec<MemoryId>,
    pub pages: Vec<PageWritten>,
    /// Text tokens / vision tokens over the pages written; `None` if none were.
    pub compression_ratio: Option<f64>,
}

/// A message on its way to a page: the turn to lay out and the memory it is.
struct Entry {
    memory: MemoryId,
    turn: Turn,
}

/// Concurrent appends to one scope race on the last page; the loser re-reads and tries again this many times.
const CONFLICT_ATTEMPTS: usize = 3;

impl Memory {
    /// Remembers `messages` in `scope`; see the module doc.
    #[tracing::instrument(name = "remember", skip_all, fields(scope = %scope, messages = messages.len()))]
    pub fn remember(&self, scope: &Scope, messages: &[Message]) -> Result<Remembered> {
        self.validate(messages)?;
        // Rendering costs a few hundred milliseconds of CPU that a refusal would throw away: check first.
        match self.cfg.encode {
            EncodeMode::Sync if self.engine.saturated() => return Err(self.engine.busy().into()),
            EncodeMode::Background if self.backlog.len() >= self.cfg.max_pending => {
                return Err(MemoryError::Backlogged {
                    pending: self.backlog.len(),
                    cap: self.cfg.max_pending,
                });
            }
            _ => {}
        }
        let now = now_ms();
        let memories: Vec<NewMemory> = messages
            .iter()
            .map(|m| NewMemory {
                id: MemoryId::new(),
                role: m.role.clone(),
                time_ms: m.time_ms.unwrap_or(now),
                metadata: m.metadata.clone(),
                text_bytes: m.content.len() as u64,
            })
            .collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.remember_once(scope, messages, &memories) {
                Err(MemoryError::Conflict(_)) if attempt < CONFLICT_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    fn validate(&self, messages: &[Message]) -> Result<()> {
        let lim = &self.cfg.limits;
        if messages.is_empty() {
            return Err(MemoryError::invalid("no messages to remember"));
        }
        if messages.len() > lim.max_messages {
            return Err(MemoryError::invalid(format!(
                "{} messages, at most {} per request",
                messages.len(),
                lim.max_messages
            )));
        }
        let mut total = 0usize;
        for (i, m) in messages.iter().enumerate() {
            let bad = |what: String| MemoryError::invalid(format!("message {i}: {what}"));
            if m.role.trim().is_empty() {
                return Err(bad("role is empty".into()));
            }
            if m.role.len() > MAX_FIELD_BYTES {
                return Err(bad(format!("role over {MAX_FIELD_BYTES} bytes")));
            }
            if m.content.trim().is_empty() {
                return Err(bad("content is empty".into()));
            }
            if m.content.len() > lim.max_message_bytes {
                return Err(bad(format!(
                    "content is {} bytes, at most {} allowed",
                    m.content.len(),
                    lim.max_message_bytes
                )));
            }
            if m.metadata.len() > MAX_METADATA_ENTRIES
                || m.metadata
                    .iter()
                    .any(|(k, v)| k.len() > MAX_FIELD_BYTES || v.len() > MAX_FIELD_BYTES)
            {
                return Err(bad(format!(
                    "metadata over {MAX_METADATA_ENTRIES} entries or {MAX_FIELD_BYTES} bytes per field"
                )));
            }
            total += m.content.len();
        }
        if total > lim.max_total_bytes {
            return Err(MemoryError::invalid(format!(
                "{total} content bytes, at most {} per request",
                lim.max_total_bytes
            )));
        }
        Ok(())
    }

    /// The scope's last page as entries to lay out again, and the page to replace; `None` when it cannot be filled.
    fn fillable_last_page(&self, scope: &Scope) -> Result<Option<(Vec<Entry>, ReplaceLast)>> {
        let parts = PageParts {
            source: true,
            ..PageParts::NONE
        };
        let Some(page) = self
            .store
            .get_pages(scope, &PageSelector::LastN(1), parts)?
            .pop()
        else {
            return Ok(None);
        };
        let Some(source) = page.source.as_deref() else {
            return Ok(None);
        };
        let ids = page.meta.memories();
        if ids.len() != page.meta.spans.len() {
            return Ok(None);
        }
        let stored = self.store.get_memories(scope, &ids)?;
        let mut entries = Vec::with_capacity(ids.len());
        for (span, mem) in page.meta.spans.iter().zip(&stored) {
            let whole = span.memory == mem.id
                && span.text.start == 0
                && span.text.end == mem.text_bytes
                && mem.pages == [page.meta.id];
            let piece = source.get(span.page.start as usize..span.page.end as usize);
            match piece {
                Some(text) if whole && text.len() as u64 == mem.text_bytes => entries.push(Entry {
                    memory: mem.id,
                    turn: turn(&mem.role, text),
                }),
                _ => return Ok(None),
            }
        }
        Ok(Some((
            entries,
            ReplaceLast {
                id: page.meta.id,
                generation: page.meta.generation,
            },
        )))
    }

    fn remember_once(
        &self,
        scope: &Scope,
        messages: &[Message],
        memories: &[NewMemory],
    ) -> Result<Remembered> {
        let (mut entries, mut replace) = match self.fillable_last_page(scope)? {
            Some((e, r)) => (e, Some(r)),
            None => (Vec::new(), None),
        };
        let carried = entries.len();
        entries.extend(messages.iter().zip(memories).map(|(m, nm)| Entry {
            memory: nm.id,
            turn: turn(&m.role, &m.content),
        }));
        let turns: Vec<Turn> = entries.iter().map(|e| e.turn.clone()).collect();
        let contents: Vec<&str> = turns.iter().map(|t| t.content.as_str()).collect();

        let render_span = tracing::info_span!("render", messages = entries.len()).entered();
        let mut renderer = self.renderers.get()?;
        let mut laid_out = renderer.paginate(Document::Chat(&turns));
        // A first page holding only the carried memories is the stored last page again: keep that one.
        if replace.is_some()
            && laid_out
                .first()
                .is_some_and(|p| p.lines.iter().all(|l| l.line.message < carried))
        {
            laid_out.remove(0);
            replace = None;
        }
        let n = laid_out.len();
        let mut rendered = Vec::with_capacity(n);
        for (j, page) in laid_out.iter().enumerate() {
            let (source, spans) = page_spans(page, &contents, &entries);
            if spans.is_empty() {
                continue;
            }
            let tier = self.cfg.policy.tier_for_rank(n - 1 - j);
            let raster = renderer.rasterize(page, tier);
            rendered.push((tier, raster, source, spans));
        }
        drop(renderer);
        drop(render_span);

        let mut pages = Vec::with_capacity(rendered.len());
        for (tier, raster, source, spans) in rendered {
            let (tokens, vision_tokens) = match self.cfg.encode {
                EncodeMode::Sync => {
                    let (t, v) = self.encode_tokens(&raster, tier, EncodeFor::Caller)?;
                    (Some(t), v)
                }
                EncodeMode::Background => (None, tier.vision_tokens()),
            };
            let text_tokens = {
                let _span = tracing::info_span!("count_tokens").entered();
                self.engine.count_tokens(&source)? as u32
            };
            pages.push(NewPage {
                tier: to_store(tier),
                text_tokens,
                vision_tokens,
                spans,
                raster_png: raster.to_png()?,
                tokens,
                source,
            });
        }
        let receipt = self.store.write_pages(
            scope,
            WritePages {
                memories: memories.to_vec(),
                replace_last: replace,
                pages,
            },
        )?;
        for m in receipt.pages.iter().filter(|m| m.is_pending()) {
            self.backlog.push(scope, m.id, m.generation);
        }
        let written: Vec<PageWritten> = receipt
            .pages
            .iter()
            .enumerate()
            .map(|(i, m)| PageWritten {
                id: m.id,
                seq: m.seq,
                tier: from_store(m.tier),
                vision_tokens: m.vision_tokens,
                embeddings: m.token_rows(),
                text_tokens: m.text_tokens,
                pending: m.is_pending(),
                replaced: i == 0 && replace.is_some(),
            })
            .collect();
        let text: u64 = written.iter().map(|p| u64::from(p.text_tokens)).sum();
        let vision: u64 = written.iter().map(|p| u64::from(p.vision_tokens)).sum();
        Ok(Remembered {
            memory_ids: memories.iter().map(|m| m.id).collect(),
            pages: written,
            compression_ratio: (vision > 0).then(|| text as f64 / vision as f64),
        })
    }
}

fn turn(role: &str, content: &str) -> Turn {
    Turn {
        role: role.to_owned(),
        content: content.to_owned(),
        name: None,
        time: None,
    }
}

/// The page's source text (what it shows, labels included) and where each memory's piece lies in it and in the
/// memory's text. Lines of one message are consecutive and their ranges tile the message, so a piece is one range.
fn page_spans(page: &LaidOut, contents: &[&str], entries: &[Entry]) -> (String, Vec<Span>) {
    let (source, starts) = page.visible_text(contents);
    let mut spans: Vec<Span> = Vec::new();
    let mut current: Option<usize> = None;
    for (pl, start) in page.lines.iter().zip(starts) {
        let line = &pl.line;
        let label = line.label.as_deref().map_or(0, str::len);
        let page_start = (start + label) as u32;
        let page_end = page_start + line.range.len() as u32;
        let memory = entries[line.message].memory;
        match spans.last_mut() {
            Some(s) if current == Some(line.message) => {
                s.text.end = line.range.end as u64;
                s.page.end = page_end;
            }
            _ => {
                spans.push(Span {
                    memory,
                    text: line.range.start as u64..line.range.end as u64,
                    page: page_start..page_end,
                });
                current = Some(line.message);
            }
        }
    }
    spans.retain(|s| !s.text.is_empty());
    (source, spans)
}
