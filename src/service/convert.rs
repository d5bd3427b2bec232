//! Between the wire and the memory layer: proto messages → validated memory requests, memory results → proto
//! messages, and [`status`], the one place a [`MemoryError`] becomes a gRPC [`Status`].
//!
//! A missing required field (scope, selector) is `INVALID_ARGUMENT` naming the field, never a panic: proto3 message
//! fields are optional on the wire.

use optimem_renderer::Tier;
use optimem_store::{ForgetReport, MemoryId, PageMeta, Scope, Tier as StoreTier};
use tonic::Status;

use super::pb;
use crate::memory::{
    Aged, Budget, ErrorCode, Limits, MemoryError, MemoryStats, Message, PageWritten, RecallItem,
    RecallMode, Recalled, Remembered, Selector,
};

/// The gRPC status for a memory error: its [`ErrorCode`] and its message as the reason. Internal failures are logged
/// here, since the client sees only the message.
pub fn status(e: MemoryError) -> Status {
    let msg = e.to_string();
    match e.code() {
        ErrorCode::InvalidArgument => Status::invalid_argument(msg),
        ErrorCode::NotFound => Status::not_found(msg),
        ErrorCode::ResourceExhausted => Status::resource_exhausted(msg),
        ErrorCode::FailedPrecondition => Status::failed_precondition(msg),
        ErrorCode::Aborted => Status::aborted(msg),
        ErrorCode::Cancelled => Status::cancelled(msg),
        ErrorCode::Internal => {
            tracing::error!(error = %msg, "request failed");
            Status::internal(msg)
        }
    }
}

/// A request over one of the server's configured limits: `RESOURCE_EXHAUSTED` with the limit named.
pub fn over_limit(what: impl std::fmt::Display) -> Status {
    Status::resource_exhausted(format!("over the server's limit: {what}"))
}

fn part(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// A required scope.
pub fn scope(s: Option<pb::Scope>) -> Result<Scope, Status> {
    let s = s.ok_or_else(|| Status::invalid_argument("scope is required"))?;
    Scope::new(part(&s.user), part(&s.agent), part(&s.session))
        .map_err(|e| status(MemoryError::from(e)))
}

/// An optional scope: unset means "the whole store".
pub fn opt_scope(s: Option<pb::Scope>) -> Result<Option<Scope>, Status> {
    s.map(|s| scope(Some(s))).transpose()
}

pub fn scope_to_pb(s: &Scope) -> pb::Scope {
    pb::Scope {
        user: s.user_id().unwrap_or_default().to_owned(),
        agent: s.agent_id().unwrap_or_default().to_owned(),
        session: s.session_id().unwrap_or_default().to_owned(),
    }
}

pub fn memory_ids(ids: &[String]) -> Result<Vec<MemoryId>, Status> {
    ids.iter()
        .map(|id| {
            id.parse::<MemoryId>()
                .map_err(|e| status(MemoryError::from(e)))
        })
        .collect()
}

/// Remember's messages, after the server's limits (which answer `RESOURCE_EXHAUSTED`; the memory layer's own checks
/// of the same limits stay as a library guard).
pub fn messages(ms: Vec<pb::Message>, lim: &Limits) -> Result<Vec<Message>, Status> {
    if ms.len() > lim.max_messages {
        return Err(over_limit(format!(
            "{} messages, at most {} per request",
            ms.len(),
            lim.max_messages
        )));
    }
    let mut total = 0usize;
    for (i, m) in ms.iter().enumerate() {
        if m.content.len() > lim.max_message_bytes {
            return Err(over_limit(format!(
                "message {i} is {} bytes, at most {} per message",
                m.content.len(),
                lim.max_message_bytes
            )));
        }
        total += m.content.len();
    }
    if total > lim.max_total_bytes {
        return Err(over_limit(format!(
            "{total} content bytes, at most {} per request",
            lim.max_total_bytes
        )));
    }
    Ok(ms
        .into_iter()
        .map(|m| Message {
            role: m.role,
            content: m.content,
            time_ms: (m.time_unix_ms != 0).then_some(m.time_unix_ms),
            metadata: m.metadata.into_iter().collect(),
        })
        .collect())
}

/// A required selector; `last_pages` over the pages-per-recall limit is `RESOURCE_EXHAUSTED`.
pub fn selector(s: Option<pb::Selector>, lim: &Limits) -> Result<Selector, Status> {
    use pb::selector::By;
    let by = s.and_then(|s| s.by).ok_or_else(|| {
        Status::invalid_argument("selector is required: memory_ids, last_pages or time_range")
    })?;
    Ok(match by {
        By::MemoryIds(ids) => Selector::Memories(memory_ids(&ids.ids)?),
        By::LastPages(n) if n as usize > lim.max_recall_pages => {
            return Err(over_limit(format!(
                "last_pages {n}, at most {} pages per recall",
                lim.max_recall_pages
            )));
        }
        By::LastPages(n) => Selector::LastPages(n as usize),
        By::TimeRange(r) => Selector::TimeRange(r.from_unix_ms..r.to_unix_ms),
    })
}

pub fn mode(m: i32) -> Result<RecallMode, Status> {
    match pb::RecallMode::try_from(m) {
        Ok(pb::RecallMode::Unspecified | pb::RecallMode::Optical) => Ok(RecallMode::Optical),
        Ok(pb::RecallMode::Exact) => Ok(RecallMode::Exact),
        Ok(pb::RecallMode::Images) => Ok(RecallMode::Images),
        Ok(pb::RecallMode::Embeddings) => Ok(RecallMode::Embeddings),
        Err(_) => Err(Status::invalid_argument(format!("unknown recall mode {m}"))),
    }
}

pub fn budget(b: Option<pb::Budget>) -> Budget {
    let b = b.unwrap_or_default();
    Budget {
        max_pages: (b.max_pages != 0).then_some(b.max_pages as usize),
        max_vision_tokens: (b.max_vision_tokens != 0).then_some(b.max_vision_tokens),
    }
}

pub fn tier(t: Tier) -> pb::Tier {
    match t {
        Tier::Tiny => pb::Tier::Tiny,
        Tier::Small => pb::Tier::Small,
        Tier::Base => pb::Tier::Base,
        Tier::Large => pb::Tier::Large,
        Tier::Gundam => pb::Tier::Gundam,
    }
}

pub fn store_tier(t: StoreTier) -> pb::Tier {
    match t {
        StoreTier::Tiny => pb::Tier::Tiny,
        StoreTier::Small => pb::Tier::Small,
        StoreTier::Base => pb::Tier::Base,
        StoreTier::Large => pb::Tier::Large,
        StoreTier::Gundam => pb::Tier::Gundam,
    }
}

pub fn page_info(m: &PageMeta) -> pb::PageInfo {
    pb::PageInfo {
        page_id: m.id.to_string(),
        sequence: m.seq,
        tier: store_tier(m.tier).into(),
        vision_tokens: m.vision_tokens,
        embeddings: m.token_rows(),
        text_tokens: m.text_tokens,
        tokens_pending: m.is_pending(),
        replaced: false,
        first_memory_unix_ms: m.first_memory_ms,
        last_memory_unix_ms: m.last_memory_ms,
    }
}

fn written(p: &PageWritten) -> pb::PageInfo {
    pb::PageInfo {
        page_id: p.id.to_string(),
        sequence: p.seq,
        tier: tier(p.tier).into(),
        vision_tokens: p.vision_tokens,
        embeddings: p.embeddings,
        text_tokens: p.text_tokens,
        tokens_pending: p.pending,
        replaced: p.replaced,
        first_memory_unix_ms: 0,
        last_memory_unix_ms: 0,
    }
}

pub fn remembered(r: Remembered) -> pb::RememberResponse {
    pb::RememberResponse {
        memory_ids: r.memory_ids.iter().map(ToString::to_string).collect(),
        pages: r.pages.iter().map(written).collect(),
        compression_ratio: r.compression_ratio.unwrap_or(0.0),
    }
}

pub fn recalled(item: RecallItem) -> pb::RecalledPage {
    let mut out = pb::RecalledPage {
        page: Some(page_info(&item.meta)),
        spans: item
            .meta
            .spans
            .iter()
            .map(|s| pb::PageSpan {
                memory_id: s.memory.to_string(),
                start: s.text.start,
                end: s.text.end,
                text: String::new(),
            })
            .collect(),
        ..Default::default()
    };
    match item.content {
        Recalled::Exact { text, pieces } => {
            out.text = text;
            out.spans = pieces
                .into_iter()
                .map(|p| pb::PageSpan {
                    memory_id: p.memory.to_string(),
                    start: p.range.start,
                    end: p.range.end,
                    text: p.text,
                })
                .collect();
        }
        Recalled::Optical { text, tokens, .. } => {
            out.text = text;
            out.generated_tokens = tokens as u32;
        }
        Recalled::Png(png) => out.png = png,
        Recalled::Embeddings { values, shape } => {
            out.embeddings = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            out.shape = shape;
        }
    }
    out
}

pub fn forgotten(r: ForgetReport) -> pb::ForgetResponse {
    pb::ForgetResponse {
        page_ids: r.pages.iter().map(ToString::to_string).collect(),
        memory_ids: r.memories.iter().map(ToString::to_string).collect(),
        partially_lost: r.partially_lost.iter().map(ToString::to_string).collect(),
    }
}

pub fn aged(a: &Aged) -> pb::AgedPage {
    pb::AgedPage {
        scope: Some(scope_to_pb(&a.scope)),
        page_id: a.page.to_string(),
        from_tier: tier(a.from).into(),
        to_tier: tier(a.to).into(),
        embeddings: a.embeddings,
    }
}

pub fn stats(s: MemoryStats) -> pb::StatsResponse {
    let st = s.store;
    pb::StatsResponse {
        scopes: st.scopes,
        pages: st.pages,
        tiers: StoreTier::ALL
            .iter()
            .map(|&t| pb::TierStats {
                tier: store_tier(t).into(),
                pages: st.pages_at(t),
                pending: st.pending_at(t),
            })
            .collect(),
        memories: st.memories,
        vision_tokens: st.vision_tokens,
        embeddings: st.token_rows,
        text_tokens: st.text_tokens,
        text_bytes: st.text_bytes,
        compression_ratio: s.compression_ratio.unwrap_or(0.0),
        stale_pages: st.stale_pages,
        pending_pages: st.pending_pages,
        bytes_tokens: st.bytes.tokens,
        bytes_rasters: st.bytes.rasters,
        bytes_source: st.bytes.sources,
        bytes_metadata: st.bytes.metadata,
        db_bytes_on_disk: st.db_bytes_on_disk,
    }
}
