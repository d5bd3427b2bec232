//! Precision against compression ratio as a PNG (plotters' bitmap backend, encoded with `png`): one series per mode we
//! ran, and the paper's Tiny and Small curves (Table 2) drawn in dashed grey for comparison.

use optimem_renderer::Tier;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::FoxError;
use super::report::{FoxReport, PAPER_TABLE};

const WIDTH: u32 = 900;
const HEIGHT: u32 = 560;
const FAMILY: &str = "optimem-sans";

/// Points of one curve: (compression ×, precision %).
type Series = Vec<(f64, f64)>;

fn plot_err(e: impl std::fmt::Display) -> FoxError {
    FoxError::Plot(e.to_string())
}

/// Registers the renderer's embedded Noto Sans with plotters once, so labels never depend on the machine's fonts.
fn register_font() -> Result<(), FoxError> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = DONE.get_or_init(|| {
        let fonts = optimem_renderer::fonts::Fonts::embedded();
        let face = fonts.system.db().faces().find(|f| {
            f.families
                .iter()
                .any(|(name, _)| name == optimem_renderer::fonts::BODY_FAMILY)
                && f.weight.0 == 400
        });
        face.and_then(|f| fonts.face(f.id)).is_some_and(|data| {
            plotters::style::register_font(FAMILY, FontStyle::Normal, data.data).is_ok()
        })
    });
    if *ok {
        Ok(())
    } else {
        Err(FoxError::Plot(
            "the embedded body font could not be loaded".into(),
        ))
    }
}

fn colour(tier: Tier) -> RGBColor {
    match tier {
        Tier::Tiny => RGBColor(200, 40, 40),
        Tier::Small => RGBColor(30, 90, 200),
        Tier::Base => RGBColor(20, 140, 60),
        Tier::Large => RGBColor(150, 60, 170),
        Tier::Gundam => RGBColor(220, 130, 0),
    }
}

/// Draws the report's precision-vs-compression plot and returns it as PNG bytes.
pub fn plot_png(report: &FoxReport) -> Result<Vec<u8>, FoxError> {
    register_font()?;
    let mut rgb = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let max_x = report
            .buckets
            .iter()
            .flat_map(|b| b.cells.iter().map(|c| c.compression))
            .chain(PAPER_TABLE.iter().map(|r| r.tiny_compression))
            .fold(0.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption("Fox-style: precision vs compression", (FAMILY, 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..max_x.max(1.0), 0.0..100.0f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("compression (text tokens / vision tokens)")
            .y_desc("precision (%)")
            .label_style((FAMILY, 14))
            .draw()
            .map_err(plot_err)?;
        let paper: [(&str, Tier, Series); 2] = [
            (
                "paper, 64 tokens",
                Tier::Tiny,
                PAPER_TABLE
                    .iter()
                    .map(|r| (r.tiny_compression, r.tiny_precision))
                    .collect(),
            ),
            (
                "paper, 100 tokens",
                Tier::Small,
                PAPER_TABLE
                    .iter()
                    .map(|r| (r.small_compression, r.small_precision))
                    .collect(),
            ),
        ];
        for (label, tier, pts) in paper {
            let c = colour(tier).mix(0.45);
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, c.stroke_width(2)))
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            chart
                .draw_series(
                    pts.into_iter()
                        .map(|p| TriangleMarker::new(p, 5, c.filled())),
                )
                .map_err(plot_err)?;
        }
        for &mode in &report.modes {
            let pts: Vec<(f64, f64)> = report
                .buckets
                .iter()
                .flat_map(|b| b.cells.iter().filter(|c| c.mode == mode))
                .map(|c| (c.compression, 100.0 * c.precision))
                .collect();
            let c = colour(mode);
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(plot_err)?
                .label(format!("ours, {mode} ({} tokens)", mode.vision_tokens()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, WIDTH, HEIGHT);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(plot_err)?;
        w.write_image_data(&rgb).map_err(plot_err)?;
        w.finish().map_err(plot_err)?;
    }
    Ok(png_bytes)
}
