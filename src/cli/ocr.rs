//! `optimem ocr IMAGE`: DeepSeek-OCR on one image, text printed as it is generated.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use optimem::model::generate::Control;
use optimem::model::{Image8, Mode, OcrModel};

/// Picks the device the binary was built for: CUDA (bf16) when compiled with `--features cuda` and a GPU answers, else CPU (f32).
pub fn device() -> Result<(Device, DType)> {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = Device::new_cuda(0) {
            optimem::model::cuda::tune(&d).context("tuning the CUDA device")?;
            return Ok((d, DType::BF16));
        }
    }
    Ok((Device::Cpu, DType::F32))
}

pub fn ocr(
    image: &Path,
    model_dir: &Path,
    mode: Mode,
    prompt: &str,
    max_new_tokens: usize,
) -> Result<()> {
    let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let img = Image8::decode(&bytes).with_context(|| format!("decoding {}", image.display()))?;
    let (device, dtype) = device()?;
    let model = OcrModel::load(model_dir, &device, dtype)
        .with_context(|| format!("loading the model in {}", model_dir.display()))?;
    let opts = model.ocr_options(max_new_tokens);
    let mut out = std::io::stdout().lock();
    let mut failed = None;
    let (_, generation) = model.ocr(&img, mode, prompt, &opts, |piece| {
        match out.write_all(piece.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => Control::Continue,
            // A closed stdout (e.g. `| head`) ends generation instead of wasting compute.
            Err(e) => {
                failed = Some(e);
                Control::Stop
            }
        }
    })?;
    if let Some(e) = failed.filter(|e| e.kind() != std::io::ErrorKind::BrokenPipe) {
        return Err(e).context("writing the output");
    }
    writeln!(out).ok();
    tracing::info!(tokens = generation.tokens.len(), stop = ?generation.stop, "ocr done");
    Ok(())
}
