//! The client verbs (`optimem remember | recall | stats | forget | age`): thin gRPC calls to a running
//! `optimem serve`. A failed call prints the server's status code and message and exits non-zero.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use optimem::service::pb::memory_client::MemoryClient;
use optimem::service::pb::{self, selector::By};
use tonic::Request;
use tonic::transport::Channel;

/// Where the server is and how to authenticate.
#[derive(clap::Args)]
pub struct Conn {
    /// Server address (host:port or an http:// URL).
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// File holding the bearer token, for a server started with --auth-token-file.
    #[arg(long, env = "OPTIMEM_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
}

/// Whose memory; at least one part is required where a scope is (the server says which part is wrong).
#[derive(clap::Args)]
pub struct ScopeArgs {
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    agent: Option<String>,
    #[arg(long)]
    session: Option<String>,
}

impl ScopeArgs {
    fn scope(&self) -> Option<pb::Scope> {
        let s = pb::Scope {
            user: self.user.clone().unwrap_or_default(),
            agent: self.agent.clone().unwrap_or_default(),
            session: self.session.clone().unwrap_or_default(),
        };
        (s != pb::Scope::default()).then_some(s)
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Mode {
    Optical,
    Exact,
    Images,
    Embeddings,
}

#[derive(clap::Subcommand)]
pub enum ClientCommand {
    /// Remember chat messages read from stdin (OpenAI-style JSON lines or a JSON array), or stdin as one plain-text
    /// message with --text.
    Remember {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Stdin is plain text: one message.
        #[arg(long)]
        text: bool,
        /// The role of the --text message.
        #[arg(long, default_value = "user")]
        role: String,
    },
    /// Recall a scope's pages in time order.
    Recall {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        scope: ScopeArgs,
        /// The newest N pages (ignored when --memory is given).
        #[arg(long, default_value_t = 3)]
        last: u32,
        /// The pages holding these memory ids.
        #[arg(long = "memory", value_name = "ID")]
        memories: Vec<String>,
        #[arg(long, value_enum, default_value = "optical")]
        mode: Mode,
        /// OPTICAL: print the text as it is decoded (RecallStream).
        #[arg(long)]
        stream: bool,
        /// IMAGES / EMBEDDINGS: directory for page-SEQ.png or page-SEQ.f32 files.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Most paper vision tokens in the answer (0: no cap).
        #[arg(long, default_value_t = 0)]
        max_vision_tokens: u64,
    },
    /// Storage figures of a scope, or of the whole store without scope flags.
    Stats {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Forget a whole scope, or the given memories and every page holding a piece of them.
    Forget {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long = "memory", value_name = "ID")]
        memories: Vec<String>,
    },
    /// Move old pages down a tier now (one scope, or every scope without scope flags).
    Age {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

struct Client {
    inner: MemoryClient<Channel>,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Client {
    async fn connect(conn: &Conn) -> Result<Self> {
        let url = if conn.addr.contains("://") {
            conn.addr.clone()
        } else {
            format!("http://{}", conn.addr)
        };
        let token = match &conn.auth_token_file {
            Some(f) => {
                let t = std::fs::read_to_string(f)
                    .with_context(|| format!("reading the token file {}", f.display()))?;
                Some(
                    format!("Bearer {}", t.trim())
                        .parse()
                        .context("the token must be printable ASCII")?,
                )
            }
            None => None,
        };
        let inner = MemoryClient::connect(url.clone())
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self { inner, token })
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Some(t) = &self.token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        req
    }
}

/// A failed call as the error the binary prints: the gRPC code and the server's reason.
fn failed(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

pub fn run(cmd: ClientCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(call(cmd))
}

async fn call(cmd: ClientCommand) -> Result<()> {
    match cmd {
        ClientCommand::Remember {
            conn,
            scope,
            text,
            role,
        } => {
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .context("reading stdin")?;
            let input = optimem::input::utf8(input)?;
            let messages = if text {
                vec![pb::Message {
                    role,
                    content: input,
                    ..Default::default()
                }]
            } else {
                optimem::input::parse_chat(&input)?
                    .into_iter()
                    .map(|t| pb::Message {
                        role: t.role,
                        content: t.content,
                        ..Default::default()
                    })
                    .collect()
            };
            let mut c = Client::connect(&conn).await?;
            let req = c.req(pb::RememberRequest {
                scope: scope.scope(),
                messages,
            });
            let r = c.inner.remember(req).await.map_err(failed)?.into_inner();
            for id in &r.memory_ids {
                println!("{id}");
            }
            for p in &r.pages {
                eprintln!(
                    "page {} #{} {:?}: {} vision tokens for {} text tokens{}",
                    p.page_id,
                    p.sequence,
                    p.tier(),
                    p.vision_tokens,
                    p.text_tokens,
                    if p.replaced { " (filled)" } else { "" }
                );
            }
            eprintln!("compression ratio {:.2}", r.compression_ratio);
        }
        ClientCommand::Recall {
            conn,
            scope,
            last,
            memories,
            mode,
            stream,
            out,
            max_vision_tokens,
        } => {
            let by = if memories.is_empty() {
                By::LastPages(last)
            } else {
                By::MemoryIds(pb::MemoryIds { ids: memories })
            };
            let mode = match mode {
                Mode::Optical => pb::RecallMode::Optical,
                Mode::Exact => pb::RecallMode::Exact,
                Mode::Images => pb::RecallMode::Images,
                Mode::Embeddings => pb::RecallMode::Embeddings,
            };
            let msg = pb::RecallRequest {
                scope: scope.scope(),
                selector: Some(pb::Selector { by: Some(by) }),
                mode: mode.into(),
                budget: Some(pb::Budget {
                    max_pages: 0,
                    max_vision_tokens,
                }),
            };
            let mut c = Client::connect(&conn).await?;
            if stream {
                if mode != pb::RecallMode::Optical {
                    bail!("--stream decodes text: use it with --mode optical");
                }
                return recall_stream(&mut c, msg).await;
            }
            let r = c
                .inner
                .recall(c.req(msg))
                .await
                .map_err(failed)?
                .into_inner();
            print_pages(&r.pages, mode, out.as_deref())?;
        }
        ClientCommand::Stats { conn, scope } => {
            let mut c = Client::connect(&conn).await?;
            let req = c.req(pb::StatsRequest {
                scope: scope.scope(),
            });
            let s = c.inner.stats(req).await.map_err(failed)?.into_inner();
            println!("{s:#?}");
        }
        ClientCommand::Forget {
            conn,
            scope,
            memories,
        } => {
            let mut c = Client::connect(&conn).await?;
            let req = c.req(pb::ForgetRequest {
                scope: scope.scope(),
                memory_ids: memories,
            });
            let r = c.inner.forget(req).await.map_err(failed)?.into_inner();
            println!(
                "forgot {} memories and {} pages ({} other memories lost pieces)",
                r.memory_ids.len(),
                r.page_ids.len(),
                r.partially_lost.len()
            );
        }
        ClientCommand::Age { conn, scope } => {
            let mut c = Client::connect(&conn).await?;
            let req = c.req(pb::AgeRequest {
                scope: scope.scope(),
            });
            let r = c.inner.age(req).await.map_err(failed)?.into_inner();
            for a in &r.aged {
                println!("{}: {:?} -> {:?}", a.page_id, a.from_tier(), a.to_tier());
            }
            println!("aged {} pages, skipped {}", r.aged.len(), r.skipped);
        }
    }
    Ok(())
}

async fn recall_stream(c: &mut Client, msg: pb::RecallRequest) -> Result<()> {
    let mut stream = c
        .inner
        .recall_stream(c.req(msg))
        .await
        .map_err(failed)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.message().await.map_err(failed)? {
        if let Some(p) = &chunk.page {
            writeln!(out, "--- page #{} ({:?}) ---", p.sequence, p.tier())?;
        }
        write!(out, "{}", chunk.text)?;
        if chunk.done {
            writeln!(out)?;
        }
        out.flush()?;
    }
    Ok(())
}

fn print_pages(
    pages: &[pb::RecalledPage],
    mode: pb::RecallMode,
    out: Option<&std::path::Path>,
) -> Result<()> {
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for p in pages {
        let info = p.page.clone().unwrap_or_default();
        let header = format!(
            "--- page #{} ({:?}, {} vision tokens) ---",
            info.sequence,
            info.tier(),
            info.vision_tokens
        );
        match (mode, out) {
            (pb::RecallMode::Images, Some(dir)) => {
                let f = dir.join(format!("page-{:04}.png", info.sequence));
                std::fs::write(&f, &p.png).with_context(|| format!("writing {}", f.display()))?;
                println!("{}", f.display());
            }
            (pb::RecallMode::Embeddings, Some(dir)) => {
                let f = dir.join(format!("page-{:04}.f32", info.sequence));
                std::fs::write(&f, &p.embeddings)
                    .with_context(|| format!("writing {}", f.display()))?;
                println!("{} {:?}", f.display(), p.shape);
            }
            (pb::RecallMode::Images, None) => {
                println!("{header}\n{} PNG bytes (use --out DIR)", p.png.len())
            }
            (pb::RecallMode::Embeddings, None) => {
                println!(
                    "{header}\nshape {:?}, {} bytes (use --out DIR)",
                    p.shape,
                    p.embeddings.len()
                );
            }
            _ => println!("{header}\n{}", p.text),
        }
    }
    Ok(())
}
