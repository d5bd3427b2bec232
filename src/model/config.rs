//! Model configuration (the vision half) and the checkpoint-loading helpers shared by every model module.
//!
//! The official DeepSeek-OCR `config.json` (`model_type: deepseek_vl_v2`) does not describe the vision
//! tower: the Python hard-codes SAM-B (768×12, window 14, global blocks 2/5/8/11), CLIP-L (1024×24) and a
//! 2048→1280 linear projector (spec §2). Those official sizes are the defaults here. Our own model
//! directories may add a `vision` section that overrides them (interfaces.md §1); unknown keys in that
//! section are errors, so a typo cannot silently fall back to the official size.
//!
//! The loading helpers live in [`load`] and are re-exported here ([`load_safetensors_mmap`], [`tensor`],
//! [`linear`], [`layer_norm`]); they turn a missing or mis-shaped tensor into a [`ModelError`] that
//! names it.

use serde::Deserialize;

use super::error::{ModelError, Result};

pub mod load;
pub use load::{
    LayerNorm, Linear, layer_norm, linear, load_safetensors_mmap, read_config_json, tensor,
    tensor_dtype,
};

/// SAM-B image encoder sizes (`sam_model.*`). Defaults: `build_sam_vit_b` (spec §2.2).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamConfig {
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// Blocks that attend over the whole grid; all others use windows.
    pub global_attn_indexes: Vec<usize>,
    pub window_size: usize,
    pub patch_size: usize,
    /// Pretraining resolution; fixes the `pos_embed` grid (img_size / patch_size).
    pub img_size: usize,
    pub mlp_ratio: f64,
    /// Neck width.
    pub out_chans: usize,
    pub net_2_chans: usize,
    pub net_3_chans: usize,
}

impl Default for SamConfig {
    fn default() -> Self {
        Self {
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            global_attn_indexes: vec![2, 5, 8, 11],
            window_size: 14,
            patch_size: 16,
            img_size: 1024,
            mlp_ratio: 4.0,
            out_chans: 256,
            net_2_chans: 512,
            net_3_chans: 1024,
        }
    }
}

impl SamConfig {
    /// Side of the pretrained `pos_embed` grid (64 for the official model).
    pub fn pos_grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Hidden width of the MLP, `int(embed_dim * mlp_ratio)` as in Python.
    pub fn mlp_dim(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }
}

/// CLIP-L sizes (`vision_model.*`). Defaults: `vit_model_cfg` in `build_clip_l` (spec §2.3).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClipConfig {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub ffn_hidden_size: usize,
    /// With `patch_size`, fixes the position-embedding grid (224/14 = 16, so 257 positions with CLS).
    pub image_size: usize,
    pub patch_size: usize,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            hidden_size: 1024,
            num_layers: 24,
            num_heads: 16,
            ffn_hidden_size: 4096,
            image_size: 224,
            patch_size: 14,
        }
    }
}

impl ClipConfig {
    /// Side of the position-embedding grid, without CLS.
    pub fn pos_grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Rows of `position_embedding.weight` (grid² + CLS).
    pub fn num_positions(&self) -> usize {
        self.pos_grid() * self.pos_grid() + 1
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// `projector_config` of config.json. Only the `linear` projector exists in the released model.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectorConfig {
    pub input_dim: usize,
    pub n_embed: usize,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            input_dim: 2048,
            n_embed: 1280,
        }
    }
}

/// Everything the DeepEncoder needs to know about sizes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VisionConfig {
    pub sam: SamConfig,
    pub clip: ClipConfig,
    pub projector: ProjectorConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VisionSection {
    #[serde(default)]
    sam: SamConfig,
    #[serde(default)]
    clip: ClipConfig,
}

impl VisionConfig {
    /// Reads the vision sizes from a parsed `config.json` (official layout, optional `vision` section).
    ///
    /// `projector_config.projector_type` must be `linear`; its `input_dim` / `n_embed` default to the
    /// official 2048 / 1280 when absent. The top-level decoder `hidden_size`, when present, must equal
    /// `n_embed`, since projected vision tokens are spliced into the decoder's embedding sequence.
    pub fn from_config_json(json: &serde_json::Value) -> Result<Self> {
        let root = json.as_object().ok_or_else(|| ModelError::ConfigParse {
            what: "config.json".into(),
            reason: "top level is not a JSON object".into(),
        })?;
        let (sam, clip) = match root.get("vision") {
            None | Some(serde_json::Value::Null) => (SamConfig::default(), ClipConfig::default()),
            Some(v) => {
                let s: VisionSection =
                    serde_json::from_value(v.clone()).map_err(|e| ModelError::ConfigParse {
                        what: "`vision` section".into(),
                        reason: e.to_string(),
                    })?;
                (s.sam, s.clip)
            }
        };
        let mut projector = ProjectorConfig::default();
        if let Some(p) = root.get("projector_config") {
            let p = p.as_object().ok_or_else(|| ModelError::Config {
                field: "projector_config".into(),
                reason: "not a JSON object".into(),
            })?;
            if let Some(t) = p.get("projector_type")
                && t.as_str() != Some("linear")
            {
                return Err(ModelError::Config {
                    field: "projector_config.projector_type".into(),
                    reason: format!("{t} is not supported (only \"linear\", as in DeepSeek-OCR)"),
                });
            }
            if let Some(v) = p.get("input_dim") {
                projector.input_dim = json_usize(v, "projector_config.input_dim")?;
            }
            if let Some(v) = p.get("n_embed") {
                projector.n_embed = json_usize(v, "projector_config.n_embed")?;
            }
        }
        let cfg = Self {
            sam,
            clip,
            projector,
        };
        cfg.validate()?;
        if let Some(h) = root.get("hidden_size") {
            let h = json_usize(h, "hidden_size")?;
            if h != cfg.projector.n_embed {
                return Err(ModelError::Config {
                    field: "projector_config.n_embed".into(),
                    reason: format!(
                        "{} differs from decoder hidden_size {h}",
                        cfg.projector.n_embed
                    ),
                });
            }
        }
        Ok(cfg)
    }

    /// Checks the invariants of interfaces.md §1 and the divisibility the model code relies on.
    pub fn validate(&self) -> Result<()> {
        let (s, c, p) = (&self.sam, &self.clip, &self.projector);
        let bad = |field: &str, reason: String| {
            Err(ModelError::Config {
                field: field.into(),
                reason,
            })
        };
        let positive = [
            ("vision.sam.embed_dim", s.embed_dim),
            ("vision.sam.depth", s.depth),
            ("vision.sam.num_heads", s.num_heads),
            ("vision.sam.window_size", s.window_size),
            ("vision.sam.patch_size", s.patch_size),
            ("vision.sam.out_chans", s.out_chans),
            ("vision.sam.net_2_chans", s.net_2_chans),
            ("vision.sam.net_3_chans", s.net_3_chans),
            ("vision.clip.hidden_size", c.hidden_size),
            ("vision.clip.num_layers", c.num_layers),
            ("vision.clip.num_heads", c.num_heads),
            ("vision.clip.ffn_hidden_size", c.ffn_hidden_size),
            ("vision.clip.patch_size", c.patch_size),
            ("projector_config.n_embed", p.n_embed),
        ];
        for (field, v) in positive {
            if v == 0 {
                return bad(field, "must be positive".into());
            }
        }
        if s.embed_dim % s.num_heads != 0 {
            return bad(
                "vision.sam.num_heads",
                format!("does not divide embed_dim {}", s.embed_dim),
            );
        }
        if s.img_size == 0 || s.img_size % s.patch_size != 0 {
            return bad(
                "vision.sam.img_size",
                format!("must be a positive multiple of patch_size {}", s.patch_size),
            );
        }
        if s.mlp_ratio.is_nan() || s.mlp_ratio <= 0.0 || s.mlp_dim() == 0 {
            return bad(
                "vision.sam.mlp_ratio",
                format!("{} gives no MLP width", s.mlp_ratio),
            );
        }
        if let Some(i) = s.global_attn_indexes.iter().find(|&&i| i >= s.depth) {
            return bad(
                "vision.sam.global_attn_indexes",
                format!("block {i} >= depth {}", s.depth),
            );
        }
        if c.hidden_size % c.num_heads != 0 {
            return bad(
                "vision.clip.num_heads",
                format!("does not divide hidden_size {}", c.hidden_size),
            );
        }
        if c.image_size == 0 || c.image_size % c.patch_size != 0 {
            return bad(
                "vision.clip.image_size",
                format!("must be a positive multiple of patch_size {}", c.patch_size),
            );
        }
        if c.hidden_size != s.net_3_chans {
            return bad(
                "vision.clip.hidden_size",
                format!(
                    "{} must equal vision.sam.net_3_chans {} (SAM output feeds CLIP)",
                    c.hidden_size, s.net_3_chans
                ),
            );
        }
        if p.input_dim != c.hidden_size + s.net_3_chans {
            return bad(
                "projector_config.input_dim",
                format!(
                    "{} must equal clip.hidden_size + sam.net_3_chans = {}",
                    p.input_dim,
                    c.hidden_size + s.net_3_chans
                ),
            );
        }
        Ok(())
    }
}

fn json_usize(v: &serde_json::Value, field: &str) -> Result<usize> {
    v.as_u64()
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| ModelError::Config {
            field: field.into(),
            reason: format!("{v} is not a non-negative integer"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_config_gives_official_sizes() -> Result<()> {
        let json = serde_json::json!({
            "model_type": "deepseek_vl_v2", "hidden_size": 1280,
            "projector_config": {"projector_type": "linear", "input_dim": 2048, "n_embed": 1280, "model_type": "mlp_projector"},
            "vision_config": {"image_size": 1024}
        });
        let cfg = VisionConfig::from_config_json(&json)?;
        assert_eq!(cfg, VisionConfig::default());
        assert_eq!(cfg.sam.pos_grid(), 64);
        assert_eq!(cfg.clip.num_positions(), 257);
        assert_eq!(cfg.sam.mlp_dim(), 3072);
        Ok(())
    }

    #[test]
    fn vision_section_overrides_and_rejects_unknown_keys() -> Result<()> {
        let json = serde_json::json!({
            "vision": {"sam": {"embed_dim": 64, "depth": 4, "num_heads": 2, "global_attn_indexes": [1, 3],
                               "out_chans": 32, "net_2_chans": 48, "net_3_chans": 96},
                       "clip": {"hidden_size": 96, "num_layers": 2, "num_heads": 4, "ffn_hidden_size": 128}},
            "projector_config": {"projector_type": "linear", "input_dim": 192, "n_embed": 80},
            "hidden_size": 80
        });
        let cfg = VisionConfig::from_config_json(&json)?;
        assert_eq!(cfg.sam.embed_dim, 64);
        assert_eq!(cfg.sam.window_size, 14);
        assert_eq!(cfg.clip.num_layers, 2);
        let typo = serde_json::json!({"vision": {"sam": {"embed_dims": 64}}});
        let err = VisionConfig::from_config_json(&typo)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("embed_dims")));
        Ok(())
    }

    #[test]
    fn inconsistent_or_unknown_values_are_named() {
        let cases = [
            (
                serde_json::json!({"projector_config": {"projector_type": "mlp_gelu"}}),
                "projector_type",
            ),
            (
                serde_json::json!({"projector_config": {"input_dim": 1024}}),
                "input_dim",
            ),
            (
                serde_json::json!({"vision": {"clip": {"hidden_size": 512, "num_heads": 8}}}),
                "clip.hidden_size",
            ),
            (serde_json::json!({"hidden_size": 1024}), "n_embed"),
        ];
        for (json, field) in cases {
            match VisionConfig::from_config_json(&json) {
                Err(e @ ModelError::Config { .. }) => assert!(e.to_string().contains(field), "{e}"),
                other => panic!("expected a config error naming {field}, got {other:?}"),
            }
        }
    }
}
