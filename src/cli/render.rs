//! `optimem render` (text or chat → page PNGs + manifest) and `optimem render-stream` (the training data feed).

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use optimem::input;
use optimem_renderer::{Document, LayoutConfig, Page, Renderer, Tier, Turn};
use serde::Serialize;

/// Reads a whole file, or stdin for `-`, as UTF-8.
pub fn read_input(path: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading stdin")?;
    } else {
        bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    }
    input::utf8(bytes).with_context(|| format!("reading {}", path.display()))
}

/// What the user asked to render: owned text or turns, so a [`Document`] can borrow it.
pub enum Source {
    Text(String),
    Chat(Vec<Turn>),
}

impl Source {
    pub fn parse(text: String, chat: bool) -> Result<Self> {
        Ok(if chat {
            Source::Chat(input::parse_chat(&text)?)
        } else {
            Source::Text(text)
        })
    }

    pub fn document(&self) -> Document<'_> {
        match self {
            Source::Text(t) => Document::Text(t),
            Source::Chat(turns) => Document::Chat(turns),
        }
    }

    /// The text of each message, indexed as [`optimem_renderer::Span::message`].
    pub fn messages(&self) -> Vec<&str> {
        match self {
            Source::Text(t) => vec![t.as_str()],
            Source::Chat(turns) => turns.iter().map(|t| t.content.as_str()).collect(),
        }
    }
}

#[derive(Serialize)]
struct ManifestPage {
    index: usize,
    file: String,
    spans: Vec<optimem_renderer::Span>,
    chars: usize,
}

#[derive(Serialize)]
struct Manifest {
    tier: Tier,
    pixels: u32,
    vision_tokens: u32,
    embeddings: u32,
    layout: LayoutConfig,
    pages: Vec<ManifestPage>,
}

/// `optimem render`: writes `page-NNNN.png` and `manifest.json` into `out`.
pub fn render(
    input: &Path,
    chat: bool,
    tier: Tier,
    layout: LayoutConfig,
    out: &Path,
) -> Result<usize> {
    let source = Source::parse(read_input(input)?, chat)?;
    let mut renderer = Renderer::new(layout.clone())?;
    let pages = renderer.paginate(source.document());
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let bar = if pages.len() > 4 {
        ProgressBar::new(pages.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} pages {per_sec}")
            .unwrap_or(ProgressStyle::default_bar()),
    );
    let messages = source.messages();
    let mut manifest = Vec::with_capacity(pages.len());
    for page in &pages {
        let img = renderer.rasterize(page, tier);
        let file = format!("page-{:04}.png", page.index + 1);
        let path: PathBuf = out.join(&file);
        std::fs::write(&path, img.to_png()?)
            .with_context(|| format!("writing {}", path.display()))?;
        let chars = page
            .spans
            .iter()
            .map(|s| messages[s.message][s.start..s.end].chars().count())
            .sum();
        manifest.push(ManifestPage {
            index: page.index,
            file,
            spans: page.spans.clone(),
            chars,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let m = Manifest {
        tier,
        pixels: tier.pixels(),
        vision_tokens: tier.vision_tokens(),
        embeddings: tier.embeddings(),
        layout,
        pages: manifest,
    };
    let path = out.join("manifest.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&m)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(pages.len())
}

#[derive(serde::Deserialize)]
struct StreamRequest {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    turns: Option<Vec<Turn>>,
    #[serde(default)]
    tier: Option<Tier>,
    #[serde(default)]
    font_size: Option<f32>,
    /// Blank space above the text on the first page, in logical units of the canvas (training pages whose text
    /// starts on any row of vision tokens).
    #[serde(default)]
    top: Option<f32>,
}

#[derive(Serialize)]
struct StreamHeader<'a> {
    width: u32,
    height: u32,
    tier: Tier,
    page: usize,
    pages: usize,
    spans: Vec<[usize; 3]>,
    visible_text: &'a str,
    glyphs: Vec<(usize, f32, f32)>,
}

/// `optimem render-stream`: one JSON request per stdin line → framed pages on stdout (see interfaces in training/README.md).
pub fn render_stream(tier: Tier, layout: LayoutConfig, all_pages: bool) -> Result<()> {
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut renderers: Vec<(u32, Renderer)> = Vec::new();
    for (i, line) in stdin.lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let req: StreamRequest =
            serde_json::from_str(&line).with_context(|| format!("stdin line {}", i + 1))?;
        let source = match (req.text, req.turns) {
            (Some(t), None) => Source::Text(t),
            (None, Some(turns)) => Source::Chat(turns),
            _ => bail!(
                "stdin line {}: give exactly one of \"text\" or \"turns\"",
                i + 1
            ),
        };
        let tier = req.tier.unwrap_or(tier);
        let font_size = req.font_size.unwrap_or(layout.font_size);
        // One renderer per font size seen, so glyph caches survive across requests.
        let key = font_size.to_bits();
        let idx = match renderers.iter().position(|(k, _)| *k == key) {
            Some(p) => p,
            None => {
                renderers.push((
                    key,
                    Renderer::new(LayoutConfig {
                        font_size,
                        ..layout.clone()
                    })?,
                ));
                renderers.len() - 1
            }
        };
        let renderer = &mut renderers[idx].1;
        let pages = renderer
            .paginate_below(source.document(), req.top.unwrap_or(0.0))
            .with_context(|| format!("stdin line {} (font size {font_size})", i + 1))?;
        let messages = source.messages();
        let wanted: &[Page] = if all_pages {
            &pages
        } else {
            &pages[..pages.len().min(1)]
        };
        if wanted.is_empty() {
            let header = StreamHeader {
                width: 0,
                height: 0,
                tier,
                page: 0,
                pages: 0,
                spans: vec![],
                visible_text: "",
                glyphs: vec![],
            };
            write_frame(&mut out, &header, &[])?;
        }
        for page in wanted {
            let img = renderer.rasterize(page, tier);
            let (visible, centres) = Renderer::glyph_centres(page, &messages, tier.pixels());
            let header = StreamHeader {
                width: img.width,
                height: img.height,
                tier,
                page: page.index,
                pages: pages.len(),
                spans: page
                    .spans
                    .iter()
                    .map(|s| [s.message, s.start, s.end])
                    .collect(),
                visible_text: &visible,
                glyphs: centres.iter().map(|g| (g.offset, g.x, g.y)).collect(),
            };
            write_frame(&mut out, &header, &img.pixels)?;
        }
        out.flush()?;
    }
    Ok(())
}

fn write_frame(out: &mut impl Write, header: &StreamHeader<'_>, pixels: &[u8]) -> Result<()> {
    let json = serde_json::to_vec(header)?;
    let len = u32::try_from(json.len()).context("header larger than 4 GiB")?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&json)?;
    out.write_all(pixels)?;
    Ok(())
}
