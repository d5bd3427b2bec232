//! `optimem bench render`: raster pages per second per core at each tier, side by side with Pillow drawing the same lines
//! with the same font at the same size in the same run. Reported as ranges over repeats (this machine is noisy).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use optimem::bench::range;
use optimem_renderer::density::SAMPLE_PROSE;
use optimem_renderer::{Document, LayoutConfig, Page, Renderer, Tier};

fn bench_pages(n: usize) -> Result<(Renderer, Vec<Page>)> {
    let mut r = Renderer::new(LayoutConfig::default())?;
    let mut text = String::new();
    let mut pages = Vec::new();
    while pages.len() < n {
        text.push_str(SAMPLE_PROSE);
        pages = r.paginate(Document::Text(&text));
    }
    pages.truncate(n);
    Ok((r, pages))
}

/// Runs the benchmark and prints a markdown table; `pillow` adds the Pillow column (needs python3 and PyPI access once).
pub fn render(n_pages: usize, repeat: usize, pillow: bool) -> Result<()> {
    if n_pages == 0 || repeat == 0 {
        bail!("--pages and --repeat must be at least 1");
    }
    let (mut r, pages) = bench_pages(n_pages)?;
    let text = {
        let mut t = String::new();
        while t.len()
            < pages
                .last()
                .map_or(0, |p| p.spans.last().map_or(0, |s| s.end))
        {
            t.push_str(SAMPLE_PROSE);
        }
        t
    };
    let python = if pillow { Some(setup_pillow()?) } else { None };
    println!("| tier | px | optimem pages/s (1 core) | Pillow pages/s (1 core) | ratio |");
    println!("|---|---|---|---|---|");
    for tier in [Tier::Tiny, Tier::Small, Tier::Base, Tier::Large] {
        for p in &pages {
            r.rasterize(p, tier); // warm the glyph cache, as Pillow warms FreeType's
        }
        let ours: Vec<f64> = (0..repeat)
            .map(|_| {
                let t0 = Instant::now();
                for p in &pages {
                    std::hint::black_box(r.rasterize(p, tier));
                }
                pages.len() as f64 / t0.elapsed().as_secs_f64()
            })
            .collect();
        let (lo, hi) = range(&ours);
        match &python {
            Some(py) => {
                let theirs = pillow_run(py, &pages, &text, tier, repeat)?;
                let (plo, phi) = range(&theirs);
                println!(
                    "| {tier} | {} | {lo:.0}–{hi:.0} | {plo:.0}–{phi:.0} | {:.1}–{:.1}× |",
                    tier.pixels(),
                    lo / phi,
                    hi / plo
                );
            }
            None => println!("| {tier} | {} | {lo:.0}–{hi:.0} | – | – |", tier.pixels()),
        }
    }
    Ok(())
}

fn setup_pillow() -> Result<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("tools/bench/setup.sh"))
        .output()
        .context("running tools/bench/setup.sh")?;
    if !out.status.success() {
        bail!(
            "tools/bench/setup.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Writes the laid-out lines (text, left x, baseline y in pixels) and runs the Pillow script on them.
fn pillow_run(
    python: &str,
    pages: &[Page],
    text: &str,
    tier: Tier,
    repeat: usize,
) -> Result<Vec<f64>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = &pages[0].config;
    let scale = tier.pixels() as f32 / cfg.canvas;
    let spec_pages: Vec<Vec<serde_json::Value>> = pages
        .iter()
        .map(|p| {
            p.lines
                .iter()
                .map(|pl| {
                    let s = text[pl.line.range.clone()].trim_end_matches(['\n', '\r']);
                    serde_json::json!({"text": s, "x": cfg.margin * scale, "y": (pl.top + pl.line.baseline) * scale})
                })
                .collect()
        })
        .collect();
    let spec = serde_json::json!({
        "font": root.join("renderer/fonts/NotoSans-Regular.ttf"),
        "font_px": (cfg.font_size * scale).round() as u32,
        "pixels": tier.pixels(),
        "repeat": repeat,
        "pages": spec_pages,
    });
    let dir = tempfile_dir()?;
    let path = dir.join(format!("pillow-{tier}.json"));
    std::fs::write(&path, serde_json::to_vec(&spec)?)?;
    let out = Command::new(python)
        .arg(root.join("tools/bench/pillow_render.py"))
        .arg(&path)
        .output()?;
    if !out.status.success() {
        bail!(
            "Pillow benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("Pillow benchmark output")?;
    let runs = v["pages_per_s"]
        .as_array()
        .context("pages_per_s missing")?
        .iter()
        .filter_map(|x| x.as_f64())
        .collect();
    Ok(runs)
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("optimem-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
