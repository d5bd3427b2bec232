//! `optimem bench fox`: builds Fox-style pages, runs the model on them with a progress bar, and writes `fox.md`,
//! `fox.json`, `fox.png` and each page's text and predictions into the output directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use optimem::fox::{self, FoxConfig, FoxReport};
use optimem::metrics::TextTokenizer;
use optimem::model::OcrModel;
use optimem_renderer::{LayoutConfig, Tier};

/// Arguments of `optimem bench fox`, validated by clap in main.rs.
pub struct FoxArgs {
    pub model: PathBuf,
    pub text: Option<PathBuf>,
    pub modes: Vec<Tier>,
    pub pages_per_bucket: usize,
    pub buckets: Vec<(usize, usize)>,
    pub out: PathBuf,
    pub max_new_tokens: usize,
    pub tokenizer: Option<PathBuf>,
    pub max_font_size: f32,
}

pub fn fox(a: FoxArgs) -> Result<()> {
    if a.pages_per_bucket == 0 {
        bail!("--pages-per-bucket must be at least 1");
    }
    let mut modes = a.modes.clone();
    modes.dedup();
    if modes.is_empty() {
        bail!("--modes needs at least one mode");
    }
    // before the text, tokenizer and model are loaded: a bad cap is refused at once
    fox::check_max_font_size(a.max_font_size)?;
    let corpus = fox::Corpus::load(a.text.as_deref()).context("loading the text")?;
    let counter = TextTokenizer::resolve(a.tokenizer.as_deref(), Some(&a.model))?;
    let base = LayoutConfig::default();
    eprintln!(
        "cutting {} page(s) per bucket from {}",
        a.pages_per_bucket, corpus.description
    );
    let (pages, wrapped) = fox::build_pages(
        &corpus,
        &counter,
        &a.buckets,
        a.pages_per_bucket,
        &base,
        a.max_font_size,
    )?;
    let (device, dtype) = super::ocr::device()?;
    let model = OcrModel::load(&a.model, &device, dtype)
        .with_context(|| format!("loading the model in {}", a.model.display()))?;
    let cfg = FoxConfig {
        tiers: modes.clone(),
        pages_per_bucket: a.pages_per_bucket,
        max_new_tokens: a.max_new_tokens,
    };
    let bar = ProgressBar::new((pages.len() * modes.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} OCRs {elapsed_precise} (eta {eta})")
            .unwrap_or(ProgressStyle::default_bar()),
    );
    let rows = fox::run(&model, &cfg, &pages, &base, || bar.inc(1))?;
    bar.finish_and_clear();
    let report = FoxReport {
        model_dir: a.model.display().to_string(),
        model_id: model.id.clone(),
        counting_tokenizer: counter.name().to_owned(),
        decoding_tokenizer: format!(
            "the model's own ({})",
            a.model.join("tokenizer.json").display()
        ),
        text_source: corpus.description.clone(),
        text_reused: wrapped,
        pages_per_bucket: a.pages_per_bucket,
        max_font_size: a.max_font_size,
        max_new_tokens: a.max_new_tokens,
        device: format!("{device:?} {dtype:?}"),
        modes: modes.clone(),
        buckets: fox::report::aggregate(&rows, &modes),
        pages: rows,
    };
    write_outputs(&a.out, &report, &pages)?;
    print!("{}", report.markdown());
    eprintln!(
        "wrote fox.md, fox.json, fox.png and pages/ to {}",
        a.out.display()
    );
    Ok(())
}

fn write_outputs(out: &Path, report: &FoxReport, pages: &[fox::FoxPage]) -> Result<()> {
    let write = |name: &Path, bytes: &[u8]| -> Result<()> {
        std::fs::write(name, bytes).with_context(|| format!("writing {}", name.display()))
    };
    let dir = out.join("pages");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, (p, row)) in pages.iter().zip(&report.pages).enumerate() {
        write(
            &dir.join(format!("{:03}-truth.txt", i + 1)),
            p.text.as_bytes(),
        )?;
        for r in &row.results {
            write(
                &dir.join(format!("{:03}-{}.txt", i + 1, r.mode)),
                r.prediction.as_bytes(),
            )?;
        }
    }
    write(&out.join("fox.md"), report.markdown().as_bytes())?;
    write(&out.join("fox.json"), &serde_json::to_vec_pretty(report)?)?;
    write(&out.join("fox.png"), &fox::plot::plot_png(report)?)?;
    Ok(())
}
