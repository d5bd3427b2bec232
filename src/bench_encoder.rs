//! Encoder throughput benchmark: the DeepEncoder at the official sizes with random weights.
//!
//! Speed does not depend on weight values, so the benchmark builds every vision tensor of the official
//! checkpoint (spec §6.2 shapes, from [`VisionConfig`]) from a normal distribution scaled by 1/√fan_in,
//! and times preprocessing and encoding of a synthetic A4 page (1191×1684, the PDF script's 144 dpi).
//! It needs no model download. Peak resident memory (`VmHWM`) is read from /proc on Linux.

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::model::error::Result;
use crate::model::preprocess::{self, Image8, Mode};
use crate::model::{DeepEncoder, VisionConfig};

/// What one benchmark run measured.
#[derive(Debug, Clone)]
pub struct EncoderBenchReport {
    pub mode: Mode,
    pub iters: usize,
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
    /// Peak resident memory of the process so far, if the OS reports it.
    pub peak_rss_bytes: Option<u64>,
}

impl EncoderBenchReport {
    pub fn pages_per_s(&self) -> f64 {
        1.0 / (self.preprocess_s + self.encode_mean_s)
    }
}

impl fmt::Display for EncoderBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "encoder {} ({} params, random weights): {} tokens/page; preprocess {:.3} s, encode mean {:.3} s \
             (min {:.3} s) over {} pages => {:.3} pages/s",
            self.mode,
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
        Ok(())
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

/// Benchmarks the official-size encoder on CPU in f32 for `iters` pages of `mode`.
pub fn bench_encoder(mode: Mode, iters: usize) -> Result<EncoderBenchReport> {
    bench_encoder_with(
        &VisionConfig::default(),
        mode,
        iters,
        DType::F32,
        &Device::Cpu,
    )
}

/// As [`bench_encoder`] for any config, dtype and device.
pub fn bench_encoder_with(
    cfg: &VisionConfig,
    mode: Mode,
    iters: usize,
    dtype: DType,
    device: &Device,
) -> Result<EncoderBenchReport> {
    let t0 = Instant::now();
    let weights = random_vision_weights(cfg, dtype, device)?;
    let params = weights.values().map(Tensor::elem_count).sum();
    let encoder = DeepEncoder::new(cfg, VarBuilder::from_tensors(weights, dtype, device))?;
    let build_s = t0.elapsed().as_secs_f64();
    let page = synthetic_page(1191, 1684)?;
    let iters = iters.max(1);
    let (mut pre, mut enc, mut enc_min, mut tokens) = (0.0, 0.0, f64::INFINITY, 0);
    for _ in 0..iters {
        let t = Instant::now();
        let prepared = preprocess::prepare(&page, mode)?;
        pre += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = encoder.encode(&prepared)?;
        // Reading a value forces asynchronous devices to finish before the clock stops.
        out.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let dt = t.elapsed().as_secs_f64();
        enc += dt;
        enc_min = enc_min.min(dt);
        tokens = out.dim(0)?;
    }
    Ok(EncoderBenchReport {
        mode,
        iters,
        params,
        tokens,
        build_s,
        preprocess_s: pre / iters as f64,
        encode_mean_s: enc / iters as f64,
        encode_min_s: enc_min,
        peak_rss_bytes: peak_rss_bytes(),
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
