//! A Rust agent's use of optimem over gRPC: remember each turn, recall the last pages before the next LLM call.
//!
//! Start a server (`optimem serve`), then: `cargo run --example client -- [ADDR]` (default 127.0.0.1:50051; set
//! OPTIMEM_TOKEN when the server requires a bearer token).

use anyhow::{Context, Result};
use optimem::service::pb::memory_client::MemoryClient;
use optimem::service::pb::{self, selector::By};
use tonic::Request;

/// Adds the bearer token, when there is one, to a request.
fn authed<T>(msg: T, token: Option<&str>) -> Result<Request<T>> {
    let mut req = Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    Ok(req)
}

#[tokio::main]
async fn main() -> Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".into());
    let token = std::env::var("OPTIMEM_TOKEN").ok();
    let token = token.as_deref();
    let mut client = MemoryClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let scope = pb::Scope {
        user: "alice".into(),
        agent: "example".into(),
        session: "rust-client".into(),
    };

    // After each turn: remember it.
    let turns = [
        ("user", "Book a table for two at 7pm near the station."),
        (
            "assistant",
            "Done: Trattoria Roma, 19:00, two people, confirmation 4417.",
        ),
    ];
    let messages = turns
        .iter()
        .map(|(role, content)| pb::Message {
            role: (*role).into(),
            content: (*content).into(),
            ..Default::default()
        })
        .collect();
    let remembered = client
        .remember(authed(
            pb::RememberRequest {
                scope: Some(scope.clone()),
                messages,
            },
            token,
        )?)
        .await?
        .into_inner();
    println!(
        "remembered {} messages on {} page(s), compression {:.1}x",
        remembered.memory_ids.len(),
        remembered.pages.len(),
        remembered.compression_ratio
    );

    // Before the next LLM call: recall the last pages. EXACT gives the source text; OPTICAL decodes the stored vision
    // tokens (what a text-only LLM can read when sources are not kept); IMAGES would give PNGs for a vision LLM.
    for mode in [pb::RecallMode::Exact, pb::RecallMode::Optical] {
        let recalled = client
            .recall(authed(
                pb::RecallRequest {
                    scope: Some(scope.clone()),
                    selector: Some(pb::Selector {
                        by: Some(By::LastPages(3)),
                    }),
                    mode: mode.into(),
                    budget: None,
                },
                token,
            )?)
            .await?
            .into_inner();
        for page in &recalled.pages {
            let seq = page.page.as_ref().map_or(0, |p| p.sequence);
            println!("--- {mode:?} page #{seq} ---\n{}", page.text);
        }
    }

    let stats = client
        .stats(authed(pb::StatsRequest { scope: Some(scope) }, token)?)
        .await?
        .into_inner();
    println!(
        "scope: {} pages, {} vision tokens for {} text tokens",
        stats.pages, stats.vision_tokens, stats.text_tokens
    );
    Ok(())
}
