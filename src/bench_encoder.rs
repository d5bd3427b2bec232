//! `optimem bench encoder`: DeepEncoder throughput at the official sizes, and parity dumps.
//!
//! Speed does not depend on weight values, so by default the benchmark builds every vision tensor of the
//! official checkpoint (spec §6.2 shapes, from [`VisionConfig`]) from a normal distribution scaled by
//! 1/√fan_in and needs no model download. With a model directory ([`EncoderBenchOptions::model`]) it
//! loads the vision weights the way [`crate::model::OcrModel::load`] does, so the same weights can be run
//! by the PyTorch reference (`tools/reference/bench_full.py`) and the outputs compared.
//! It times preprocessing and encoding of a page (a synthetic A4 page, 1191×1684 = the PDF script's
//! 144 dpi, unless an image is given) and keeps the first page's outputs for a dump.
//! Peak resident memory (`VmHWM`) is read from /proc on Linux.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::bench::profile::{self, SpanProfile, SpanRow};
use crate::model::config::{load_safetensors_mmap, read_config_json};
use crate::model::error::{ModelError, Result};
use crate::model::preprocess::{self, Image8, Mode};
use crate::model::{DeepEncoder, VisionConfig};

/// What to run.
#[derive(Debug, Clone)]
pub struct EncoderBenchOptions {
    pub mode: Mode,
    /// Timed pages.
    pub iters: usize,
    /// Untimed pages before timing (CUDA kernel loading, allocator warm-up).
    pub warmup: usize,
    pub dtype: DType,
    pub device: Device,
    /// A model directory (config.json + *.safetensors, official layout) to load the vision weights from;
    /// None: official-size random weights.
    pub model: Option<PathBuf>,
    /// The page to encode; None: the synthetic A4 page.
    pub image: Option<Image8>,
    /// After the timed pages, encode one more under a [`SpanProfile`] and report where its time went.
    pub profile: bool,
}

impl EncoderBenchOptions {
    /// Random official-size weights, the synthetic page, no warm-up.
    pub fn new(mode: Mode, iters: usize, dtype: DType, device: Device) -> Self {
        Self {
            mode,
            iters,
            warmup: 0,
            dtype,
            device,
            model: None,
            image: None,
            profile: false,
        }
    }
}

/// What one benchmark run measured.
#[derive(Debug, Clone)]
pub struct EncoderBenchReport {
    pub mode: Mode,
    pub iters: usize,
    pub warmup: usize,
    /// "random" or the model directory the weights came from.
    pub weights: String,
    /// Vision parameters instantiated.
    pub params: usize,
    /// Embeddings per page (= `<image>` placeholders).
    pub tokens: usize,
    pub build_s: f64,
    /// Mean preprocessing time per page (decode excluded).
    pub preprocess_s: f64,
    /// Mean and fastest encoder time per page.
    pub encode_mean_s: f64,
    pub encode_min_s: f64,
    /// Peak resident memory of the process so far, if the OS reports it (host memory, not GPU memory).
    pub peak_rss_bytes: Option<u64>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub dtype: DType,
    /// One more page's time by model span (`--profile`), longest self time first.
    pub profile: Option<Vec<SpanRow>>,
}

impl EncoderBenchReport {
    pub fn pages_per_s(&self) -> f64 {
        1.0 / (self.preprocess_s + self.encode_mean_s)
    }

    /// The report as one JSON object (for scripts: `--json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench": "encoder",
            "mode": self.mode.name(),
            "weights": self.weights,
            "device": self.device,
            "dtype": self.dtype.as_str(),
            "params": self.params,
            "tokens": self.tokens,
            "iters": self.iters,
            "warmup": self.warmup,
            "build_s": self.build_s,
            "preprocess_s": self.preprocess_s,
            "encode_mean_s": self.encode_mean_s,
            "encode_min_s": self.encode_min_s,
            "pages_per_s": self.pages_per_s(),
            "peak_rss_bytes": self.peak_rss_bytes,
            "profile": self.profile,
        })
    }
}

impl fmt::Display for EncoderBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let weights = if self.weights == "random" {
            "random weights".to_string()
        } else {
            format!("weights from {}", self.weights)
        };
        write!(
            f,
            "encoder {} on {} ({}, {} params, {weights}): {} tokens/page; preprocess {:.3} s, encode mean {:.3} s \
             (min {:.3} s) over {} pages => {:.3} pages/s",
            self.mode,
            self.device,
            self.dtype.as_str(),
            self.params,
            self.tokens,
            self.preprocess_s,
            self.encode_mean_s,
            self.encode_min_s,
            self.iters,
            self.pages_per_s()
        )?;
        if let Some(b) = self.peak_rss_bytes {
            write!(f, "; peak RSS {:.2} GiB", b as f64 / (1u64 << 30) as f64)?;
        }
        if let Some(rows) = &self.profile {
            write!(
                f,
                "\none more page by model span:\n{}",
                profile::table(rows)
            )?;
        }
        Ok(())
    }
}

/// A run's report and the first page's outputs.
#[derive(Debug, Clone)]
pub struct EncoderBenchRun {
    pub report: EncoderBenchReport,
    /// The laid-out embedding sequence `[N, n_embed]` (what the decoder reads), in the model dtype.
    pub sequence: Tensor,
    /// The global view's projector output `[1, q², n_embed]`, before the layout.
    pub projector_out: Tensor,
    /// The preprocessed global view (RGB, square): the encoder's input before normalisation.
    pub global_view: Image8,
}

impl EncoderBenchRun {
    /// Writes `sequence` and `projector_out` (f32) and `global_view` (u8 `[S, S, 3]`) to a safetensors file.
    pub fn save_dump(&self, path: &Path) -> Result<()> {
        let v = &self.global_view;
        let view = Tensor::from_vec(
            v.data().to_vec(),
            (v.height(), v.width(), v.channels()),
            &Device::Cpu,
        )?;
        let tensors = HashMap::from([
            ("sequence".to_string(), to_cpu_f32(&self.sequence)?),
            (
                "projector_out".to_string(),
                to_cpu_f32(&self.projector_out)?,
            ),
            ("global_view".to_string(), view),
        ]);
        candle_core::safetensors::save(&tensors, path)?;
        Ok(())
    }
}

fn to_cpu_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
}

/// `cpu` or `cuda:N`, as the reference script names devices.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Every tensor [`DeepEncoder::new`] loads, with its official name and shape.
pub fn vision_tensor_shapes(cfg: &VisionConfig) -> Vec<(String, Vec<usize>)> {
    let (s, c, p) = (&cfg.sam, &cfg.clip, &cfg.projector);
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: &[usize]| v.push((name, shape.to_vec()));
    let sam = "model.sam_model";
    let (e, pg, ps) = (s.embed_dim, s.pos_grid(), s.patch_size);
    add(format!("{sam}.patch_embed.proj.weight"), &[e, 3, ps, ps]);
    add(format!("{sam}.patch_embed.proj.bias"), &[e]);
    add(format!("{sam}.pos_embed"), &[1, pg, pg, e]);
    for i in 0..s.depth {
        let b = format!("{sam}.blocks.{i}");
        let size = if s.global_attn_indexes.contains(&i) {
            pg
        } else {
            s.window_size
        };
        for n in ["norm1", "norm2"] {
            add(format!("{b}.{n}.weight"), &[e]);
            add(format!("{b}.{n}.bias"), &[e]);
        }
        add(format!("{b}.attn.qkv.weight"), &[3 * e, e]);
        add(format!("{b}.attn.qkv.bias"), &[3 * e]);
        add(format!("{b}.attn.proj.weight"), &[e, e]);
        add(format!("{b}.attn.proj.bias"), &[e]);
        add(format!("{b}.attn.rel_pos_h"), &[2 * size - 1, s.head_dim()]);
        add(format!("{b}.attn.rel_pos_w"), &[2 * size - 1, s.head_dim()]);
        add(format!("{b}.mlp.lin1.weight"), &[s.mlp_dim(), e]);
        add(format!("{b}.mlp.lin1.bias"), &[s.mlp_dim()]);
        add(format!("{b}.mlp.lin2.weight"), &[e, s.mlp_dim()]);
        add(format!("{b}.mlp.lin2.bias"), &[e]);
    }
    let o = s.out_chans;
    add(format!("{sam}.neck.0.weight"), &[o, e, 1, 1]);
    add(format!("{sam}.neck.2.weight"), &[o, o, 3, 3]);
    for n in ["neck.1", "neck.3"] {
        add(format!("{sam}.{n}.weight"), &[o]);
        add(format!("{sam}.{n}.bias"), &[o]);
    }
    add(format!("{sam}.net_2.weight"), &[s.net_2_chans, o, 3, 3]);
    add(
        format!("{sam}.net_3.weight"),
        &[s.net_3_chans, s.net_2_chans, 3, 3],
    );
    let vm = "model.vision_model";
    let d = c.hidden_size;
    add(format!("{vm}.embeddings.class_embedding"), &[d]);
    add(
        format!("{vm}.embeddings.position_embedding.weight"),
        &[c.num_positions(), d],
    );
    add(format!("{vm}.pre_layrnorm.weight"), &[d]);
    add(format!("{vm}.pre_layrnorm.bias"), &[d]);
    for i in 0..c.num_layers {
        let l = format!("{vm}.transformer.layers.{i}");
        for n in ["layer_norm1", "layer_norm2"] {
            add(format!("{l}.{n}.weight"), &[d]);
            add(format!("{l}.{n}.bias"), &[d]);
        }
        add(format!("{l}.self_attn.qkv_proj.weight"), &[3 * d, d]);
        add(format!("{l}.self_attn.qkv_proj.bias"), &[3 * d]);
        add(format!("{l}.self_attn.out_proj.weight"), &[d, d]);
        add(format!("{l}.self_attn.out_proj.bias"), &[d]);
        add(format!("{l}.mlp.fc1.weight"), &[c.ffn_hidden_size, d]);
        add(format!("{l}.mlp.fc1.bias"), &[c.ffn_hidden_size]);
        add(format!("{l}.mlp.fc2.weight"), &[d, c.ffn_hidden_size]);
        add(format!("{l}.mlp.fc2.bias"), &[d]);
    }
    add(
        "model.projector.layers.weight".into(),
        &[p.n_embed, p.input_dim],
    );
    add("model.projector.layers.bias".into(), &[p.n_embed]);
    add("model.image_newline".into(), &[p.n_embed]);
    add("model.view_seperator".into(), &[p.n_embed]);
    v
}

/// Random weights for every vision tensor: N(0, 1/fan_in) for matrices and convs, norms at 1 ± small,
/// tables and biases N(0, 0.02).
pub fn random_vision_weights(
    cfg: &VisionConfig,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut map = HashMap::new();
    for (name, shape) in vision_tensor_shapes(cfg) {
        let is_norm = name.contains("norm") || name.contains("neck.1") || name.contains("neck.3");
        let t = if shape.len() >= 2 && name.ends_with("weight") {
            let fan_in: usize = shape[1..].iter().product();
            Tensor::randn(0f32, (1.0 / fan_in as f64).sqrt() as f32, shape, device)?
        } else if is_norm && name.ends_with("weight") {
            (Tensor::randn(0f32, 0.02, shape, device)? + 1.0)?
        } else {
            Tensor::randn(0f32, 0.02, shape, device)?
        };
        map.insert(name, t.to_dtype(dtype)?);
    }
    Ok(map)
}

/// A synthetic grayscale page: dark "text lines" on white, so resizes do real work.
fn synthetic_page(width: usize, height: usize) -> Result<Image8> {
    let data = (0..width * height)
        .map(|i| {
            let (x, y) = (i % width, i / width);
            if (y / 6) % 4 == 0 && (x / 5) % 7 != 0 {
                20
            } else {
                250
            }
        })
        .collect();
    Image8::new(width, height, 1, data)
}

/// Peak resident set size of this process (`VmHWM`), on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Benchmarks the official-size encoder with random weights on CPU in f32 for `iters` pages of `mode`.
pub fn bench_encoder(mode: Mode, iters: usize) -> Result<EncoderBenchReport> {
    bench_encoder_with(
        &VisionConfig::default(),
        mode,
        iters,
        DType::F32,
        &Device::Cpu,
    )
}

/// As [`bench_encoder`] for any config, dtype and device (random weights).
pub fn bench_encoder_with(
    cfg: &VisionConfig,
    mode: Mode,
    iters: usize,
    dtype: DType,
    device: &Device,
) -> Result<EncoderBenchReport> {
    let opts = EncoderBenchOptions::new(mode, iters, dtype, device.clone());
    Ok(run_with_config(cfg, &opts)?.report)
}

/// Runs the benchmark as `opts` says: the vision sizes come from the model directory's config.json when
/// one is given, else the official ones.
pub fn run(opts: &EncoderBenchOptions) -> Result<EncoderBenchRun> {
    let cfg = match &opts.model {
        Some(dir) => VisionConfig::from_config_json(&read_config_json(dir)?)?,
        None => VisionConfig::default(),
    };
    run_with_config(&cfg, opts)
}

fn run_with_config(cfg: &VisionConfig, opts: &EncoderBenchOptions) -> Result<EncoderBenchRun> {
    let (dtype, device) = (opts.dtype, &opts.device);
    let t0 = Instant::now();
    let (encoder, weights) = match &opts.model {
        Some(dir) => {
            let vb = load_safetensors_mmap(dir, dtype, device)?;
            (DeepEncoder::new(cfg, vb)?, dir.display().to_string())
        }
        None => {
            let map = random_vision_weights(cfg, dtype, device)?;
            let vb = VarBuilder::from_tensors(map, dtype, device);
            (DeepEncoder::new(cfg, vb)?, "random".to_string())
        }
    };
    let params = vision_tensor_shapes(cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    device.synchronize()?;
    let build_s = t0.elapsed().as_secs_f64();
    let page = match &opts.image {
        Some(img) => img.clone(),
        None => synthetic_page(1191, 1684)?,
    };
    let iters = opts.iters.max(1);
    let (mut pre, mut enc, mut enc_min) = (0.0, 0.0, f64::INFINITY);
    let mut first = None;
    for i in 0..opts.warmup + iters {
        let t = Instant::now();
        let prepared = preprocess::prepare(&page, opts.mode)?;
        let pre_dt = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (sequence, projector_out) = encoder.encode_with_global(&prepared)?;
        // Reading a value forces asynchronous devices to finish before the clock stops.
        sequence
            .sum_all()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        let dt = t.elapsed().as_secs_f64();
        if i >= opts.warmup {
            pre += pre_dt;
            enc += dt;
            enc_min = enc_min.min(dt);
        }
        if first.is_none() {
            first = Some((sequence, projector_out, prepared.global_view));
        }
    }
    let (sequence, projector_out, global_view) = first.ok_or_else(|| ModelError::Input {
        reason: "no page was encoded".into(),
    })?;
    let profile = opts
        .profile
        .then(|| {
            SpanProfile::measure(device, || {
                encoder.encode_with_global(&preprocess::prepare(&page, opts.mode)?)
            })
        })
        .transpose()?;
    let report = EncoderBenchReport {
        mode: opts.mode,
        iters,
        warmup: opts.warmup,
        weights,
        params,
        tokens: sequence.dim(0)?,
        build_s,
        preprocess_s: pre / iters as f64,
        encode_mean_s: enc / iters as f64,
        encode_min_s: enc_min,
        peak_rss_bytes: peak_rss_bytes(),
        device: device_name(device),
        dtype,
        profile,
    };
    Ok(EncoderBenchRun {
        report,
        sequence,
        projector_out,
        global_view,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_shapes_count_the_published_parameters() {
        let n: usize = vision_tensor_shapes(&VisionConfig::default())
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // Spec §6.1: SAM + convs 95,569,152; CLIP 303,177,728 without its unused patch embedding
        // (1024·3·14·14 = 602,112); projector 2,622,720; newline + separator 2,560.
        assert_eq!(n, 95_569_152 + 303_177_728 - 602_112 + 2_622_720 + 2_560);
    }

    #[test]
    fn small_config_bench_runs() -> Result<()> {
        let json = serde_json::json!({
            "vision": {"sam": {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1],
                               "out_chans": 8, "net_2_chans": 16, "net_3_chans": 32},
                       "clip": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "ffn_hidden_size": 64}},
            "projector_config": {"input_dim": 64, "n_embed": 16}
        });
        let cfg = VisionConfig::from_config_json(&json)?;
        let r = bench_encoder_with(&cfg, Mode::Tiny, 1, DType::F32, &Device::Cpu)?;
        assert_eq!(r.tokens, 73);
        assert!(r.encode_mean_s > 0.0 && r.pages_per_s().is_finite());
        Ok(())
    }
}
