//! `optimem compress`: input → pages at the policy's tiers → `page-NNNN.png`, `manifest.json`, `report.json` and
//! `report.md`; with `--verify` every page is OCR'd at its tier and scored.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use optimem::compress::{self, CompressReport, DEFAULT_HIDDEN_SIZE, PageEntry};
use optimem::engine::{mode_for, page_image};
use optimem::metrics::{Score, TextTokenizer};
use optimem::model::OcrModel;
use optimem::model::generate::Control;
use optimem_renderer::{LayoutConfig, Renderer};
use serde::Serialize;

use super::render::{Source, read_input};

/// Arguments of `optimem compress`, validated by clap in main.rs.
pub struct CompressArgs {
    pub input: PathBuf,
    pub chat: bool,
    pub policy: String,
    pub out: PathBuf,
    pub model: PathBuf,
    pub verify: bool,
    pub max_new_tokens: usize,
    pub tokenizer: Option<PathBuf>,
    pub layout: LayoutConfig,
}

#[derive(Serialize)]
struct Manifest<'a> {
    policy: &'a str,
    layout: &'a LayoutConfig,
    pages: &'a [PageEntry],
}

/// The model's hidden size from its config.json, or the DeepSeek-OCR default when the directory has none.
fn hidden_size(model: &Path) -> (usize, String) {
    let cfg = model.join("config.json");
    let from_cfg = std::fs::read(&cfg)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            let lc = v.get("language_config").unwrap_or(&v);
            lc.get("hidden_size").and_then(serde_json::Value::as_u64)
        });
    match from_cfg.and_then(|h| usize::try_from(h).ok()) {
        Some(h) => (h, cfg.display().to_string()),
        None => (
            DEFAULT_HIDDEN_SIZE,
            "the DeepSeek-OCR default (no model config read)".to_owned(),
        ),
    }
}

pub fn compress(a: CompressArgs) -> Result<()> {
    let policy = compress::parse_policy(&a.policy)?;
    a.layout.validate()?;
    let source = Source::parse(read_input(&a.input)?, a.chat)?;
    let counter = TextTokenizer::resolve(a.tokenizer.as_deref(), Some(&a.model))?;
    let mut renderer = Renderer::new(a.layout.clone())?;
    let pages = renderer.paginate(source.document());
    let tiers = compress::tiers_for_pages(pages.len(), &policy);
    let messages = source.messages();
    let (hidden, hidden_from) = hidden_size(&a.model);
    let model = if a.verify {
        let (device, dtype) = super::ocr::device()?;
        Some(
            OcrModel::load(&a.model, &device, dtype)
                .with_context(|| format!("loading the model in {}", a.model.display()))?,
        )
    } else {
        None
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let bar = if pages.len() > 4 || a.verify {
        ProgressBar::new(pages.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} pages {elapsed_precise}")
            .unwrap_or(ProgressStyle::default_bar()),
    );
    let mut entries = Vec::with_capacity(pages.len());
    for (page, &tier) in pages.iter().zip(&tiers) {
        let img = renderer.rasterize(page, tier);
        let png = img.to_png()?;
        let file = format!("page-{:04}.png", page.index + 1);
        let path = a.out.join(&file);
        std::fs::write(&path, &png).with_context(|| format!("writing {}", path.display()))?;
        let (text, _) = page.visible_text(&messages);
        let verify = match &model {
            Some(m) => {
                let opts = m.ocr_options(a.max_new_tokens);
                let (pred, _) = m.ocr(
                    &page_image(&img)?,
                    mode_for(tier),
                    optimem::model::FREE_OCR_PROMPT,
                    &opts,
                    |_| Control::Continue,
                )?;
                Some(Score::new(&pred, &text))
            }
            None => None,
        };
        entries.push(PageEntry {
            index: page.index,
            file,
            tier,
            rank: pages.len() - 1 - page.index,
            pixels: tier.pixels(),
            vision_tokens: tier.vision_tokens(),
            embeddings: tier.embeddings(),
            spans: page.spans.clone(),
            text_bytes: text.len(),
            text_tokens: counter.count(&text)?,
            png_bytes: png.len(),
            token_bytes_f16: tier.embeddings() as usize * hidden * 2,
            verify,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut report = CompressReport::new(&entries, &a.policy, counter.name(), hidden, &hidden_from);
    if let Some(m) = &model {
        report.verify_model = Some(format!(
            "{} ({}), at most {} new tokens",
            a.model.display(),
            m.id,
            a.max_new_tokens
        ));
    }
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = a.out.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
    };
    let manifest = Manifest {
        policy: &a.policy,
        layout: &a.layout,
        pages: &entries,
    };
    write("manifest.json", &serde_json::to_vec_pretty(&manifest)?)?;
    write("report.json", &serde_json::to_vec_pretty(&report)?)?;
    let md = report.markdown(&entries);
    write("report.md", md.as_bytes())?;
    print!("{md}");
    Ok(())
}
