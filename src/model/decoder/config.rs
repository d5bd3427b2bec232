//! The decoder's part of config.json (`TextConfig`).
//!
//! The official DeepSeek-OCR config.json (`model_type: deepseek_vl_v2`) keeps the decoder fields at
//! the top level, where the HF remote code reads them (`DeepseekOCRConfig` subclasses
//! `DeepseekV2Config`); the `language_config` block holds the same values for vLLM and is ignored
//! here. Fields the official file omits take the `DeepseekV2Config` defaults listed in spec §4.1;
//! every other field is required, so a wrong or truncated config fails at load with the field named.

use serde_json::Value;

use crate::model::ModelError;

/// How the router picks experts (`topk_method`). Only the method DeepSeek-OCR uses is implemented;
/// the others are recognised so that the error says "unsupported" rather than "unknown".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopkMethod {
    /// Plain top-k over all routed experts (spec §4.3).
    Greedy,
}

/// How router logits become scores (`scoring_func`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoringFunc {
    /// Softmax over experts, computed in f32 (spec §4.3).
    Softmax,
}

/// The MLP activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// `x * sigmoid(x)`, the SwiGLU gate used by every DeepSeek-OCR MLP.
    Silu,
}

/// Hyper-parameters of the DeepSeek-3B-MoE decoder, named as in config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the dense MLP (layers below `first_k_dense_replace`).
    pub intermediate_size: usize,
    /// Width of one routed expert; shared experts are `n_shared_experts` times wider.
    pub moe_intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// `None` (JSON null) makes every layer dense.
    pub n_routed_experts: Option<usize>,
    /// `None` (JSON null) means no shared expert.
    pub n_shared_experts: Option<usize>,
    /// Experts per token (top-k); required when `n_routed_experts` is set.
    pub num_experts_per_tok: usize,
    pub routed_scaling_factor: f64,
    pub topk_method: TopkMethod,
    pub scoring_func: ScoringFunc,
    pub norm_topk_prob: bool,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
    pub hidden_act: HiddenAct,
    /// Size of the RoPE table and the default KV-cache capacity.
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
}

impl TextConfig {
    /// Reads the decoder fields from a parsed config.json, as the HF remote code does.
    pub fn from_config_json(json: &Value) -> Result<Self, ModelError> {
        let obj = json.as_object().ok_or_else(|| ModelError::Config {
            field: "<root>".into(),
            reason: "config.json is not a JSON object".into(),
        })?;
        let get = |k: &str| obj.get(k);

        // MLA is the DeepseekV2Config default; DeepSeek-OCR sets use_mla=false (plain MHA).
        match get("use_mla") {
            Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => {
                return Err(cfg_err(
                    "use_mla",
                    "true (multi-head latent attention) is not supported; DeepSeek-OCR uses plain MHA",
                ));
            }
            None => {
                return Err(cfg_err(
                    "use_mla",
                    "missing; DeepseekV2Config would default to MLA, which is not supported",
                ));
            }
            Some(v) => return Err(cfg_err("use_mla", &format!("expected a boolean, got {v}"))),
        }
        match get("rope_scaling") {
            None | Some(Value::Null) => {}
            Some(v) => {
                return Err(cfg_err(
                    "rope_scaling",
                    &format!("{v} is not supported; only null"),
                ));
            }
        }

        let n_routed_experts = opt_usize(obj, "n_routed_experts")?;
        let num_experts_per_tok = match n_routed_experts {
            Some(_) => req_usize(obj, "num_experts_per_tok")?,
            None => opt_usize(obj, "num_experts_per_tok")?.unwrap_or(0),
        };
        let cfg = TextConfig {
            vocab_size: req_usize(obj, "vocab_size")?,
            hidden_size: req_usize(obj, "hidden_size")?,
            intermediate_size: req_usize(obj, "intermediate_size")?,
            moe_intermediate_size: req_usize(obj, "moe_intermediate_size")?,
            num_hidden_layers: req_usize(obj, "num_hidden_layers")?,
            num_attention_heads: req_usize(obj, "num_attention_heads")?,
            num_key_value_heads: req_usize(obj, "num_key_value_heads")?,
            n_routed_experts,
            n_shared_experts: opt_usize(obj, "n_shared_experts")?,
            num_experts_per_tok,
            routed_scaling_factor: f64_or(obj, "routed_scaling_factor", 1.0)?,
            topk_method: parse_topk_method(obj)?,
            scoring_func: parse_scoring_func(obj)?,
            norm_topk_prob: bool_or(obj, "norm_topk_prob", false)?,
            first_k_dense_replace: req_usize(obj, "first_k_dense_replace")?,
            moe_layer_freq: usize_or(obj, "moe_layer_freq", 1)?,
            hidden_act: parse_hidden_act(obj)?,
            max_position_embeddings: req_usize(obj, "max_position_embeddings")?,
            rms_norm_eps: f64_or(obj, "rms_norm_eps", 1e-6)?,
            rope_theta: f64_or(obj, "rope_theta", 10000.0)?,
            attention_bias: bool_or(obj, "attention_bias", false)?,
            tie_word_embeddings: bool_or(obj, "tie_word_embeddings", false)?,
            bos_token_id: token_id(obj, "bos_token_id")?,
            eos_token_id: token_id(obj, "eos_token_id")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the relations between fields that the layers rely on.
    fn validate(&self) -> Result<(), ModelError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("moe_layer_freq", self.moe_layer_freq),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(cfg_err(field, "must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(cfg_err(
                "num_attention_heads",
                &format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(cfg_err(
                "num_attention_heads",
                "head_dim must be even for RoPE",
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(cfg_err(
                "num_key_value_heads",
                &format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if let Some(e) = self.n_routed_experts
            && (self.num_experts_per_tok == 0 || self.num_experts_per_tok > e)
        {
            return Err(cfg_err(
                "num_experts_per_tok",
                &format!(
                    "{} must be in 1..={e} (n_routed_experts)",
                    self.num_experts_per_tok
                ),
            ));
        }
        if self.bos_token_id as usize >= self.vocab_size
            || self.eos_token_id as usize >= self.vocab_size
        {
            return Err(cfg_err(
                "bos_token_id",
                "bos/eos ids must be below vocab_size",
            ));
        }
        Ok(())
    }

    /// Width of one attention head (no head_dim field: hidden_size / heads, spec §4.1).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Whether layer `layer_idx` is a MoE layer, by the rule of HF `DeepseekV2DecoderLayer`.
    pub fn is_moe_layer(&self, layer_idx: usize) -> bool {
        self.n_routed_experts.is_some()
            && layer_idx >= self.first_k_dense_replace
            && layer_idx.is_multiple_of(self.moe_layer_freq)
    }
}

fn cfg_err(field: &str, reason: &str) -> ModelError {
    ModelError::Config {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

type Obj = serde_json::Map<String, Value>;

fn as_usize(field: &str, v: &Value) -> Result<usize, ModelError> {
    v.as_u64()
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| cfg_err(field, &format!("expected a non-negative integer, got {v}")))
}

fn req_usize(obj: &Obj, field: &str) -> Result<usize, ModelError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(cfg_err(field, "missing")),
        Some(v) => as_usize(field, v),
    }
}

/// A field that must be present but may be null (HF treats null as "feature off").
fn opt_usize(obj: &Obj, field: &str) -> Result<Option<usize>, ModelError> {
    match obj.get(field) {
        None => Err(cfg_err(field, "missing (write null to disable)")),
        Some(Value::Null) => Ok(None),
        Some(v) => as_usize(field, v).map(Some),
    }
}

fn usize_or(obj: &Obj, field: &str, default: usize) -> Result<usize, ModelError> {
    match obj.get(field) {
        None => Ok(default),
        Some(v) => as_usize(field, v),
    }
}

fn f64_or(obj: &Obj, field: &str, default: f64) -> Result<f64, ModelError> {
    match obj.get(field) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| cfg_err(field, &format!("expected a number, got {v}"))),
    }
}

fn bool_or(obj: &Obj, field: &str, default: bool) -> Result<bool, ModelError> {
    match obj.get(field) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| cfg_err(field, &format!("expected a boolean, got {v}"))),
    }
}

fn token_id(obj: &Obj, field: &str) -> Result<u32, ModelError> {
    let v = req_usize(obj, field)?;
    u32::try_from(v).map_err(|_| cfg_err(field, "does not fit in u32"))
}

fn str_field<'a>(obj: &'a Obj, field: &str, default: &'a str) -> Result<&'a str, ModelError> {
    match obj.get(field) {
        None => Ok(default),
        Some(v) => v
            .as_str()
            .ok_or_else(|| cfg_err(field, &format!("expected a string, got {v}"))),
    }
}

fn parse_topk_method(obj: &Obj) -> Result<TopkMethod, ModelError> {
    // Required: the DeepseekV2Config default is the misspelt "gready", which HF itself rejects.
    let Some(v) = obj.get("topk_method") else {
        return Err(cfg_err("topk_method", "missing"));
    };
    match v.as_str() {
        Some("greedy") => Ok(TopkMethod::Greedy),
        Some(m @ ("group_limited_greedy" | "noaux_tc")) => Err(cfg_err(
            "topk_method",
            &format!("\"{m}\" is not supported; only \"greedy\" (DeepSeek-OCR)"),
        )),
        _ => Err(cfg_err("topk_method", &format!("unknown value {v}"))),
    }
}

fn parse_scoring_func(obj: &Obj) -> Result<ScoringFunc, ModelError> {
    match str_field(obj, "scoring_func", "softmax")? {
        "softmax" => Ok(ScoringFunc::Softmax),
        "sigmoid" => Err(cfg_err(
            "scoring_func",
            "\"sigmoid\" is not supported; only \"softmax\"",
        )),
        other => Err(cfg_err(
            "scoring_func",
            &format!("unknown value \"{other}\""),
        )),
    }
}

fn parse_hidden_act(obj: &Obj) -> Result<HiddenAct, ModelError> {
    match str_field(obj, "hidden_act", "silu")? {
        "silu" => Ok(HiddenAct::Silu),
        other => Err(cfg_err(
            "hidden_act",
            &format!("unsupported value \"{other}\"; only \"silu\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The decoder part of the official config.json (spec §4.1), with defaults left out.
    fn official() -> Value {
        json!({
            "model_type": "deepseek_vl_v2",
            "vocab_size": 129280, "hidden_size": 1280, "intermediate_size": 6848,
            "moe_intermediate_size": 896, "num_hidden_layers": 12, "num_attention_heads": 10,
            "num_key_value_heads": 10, "n_routed_experts": 64, "n_shared_experts": 2,
            "num_experts_per_tok": 6, "first_k_dense_replace": 1, "topk_method": "greedy",
            "n_group": 1, "topk_group": 1, "use_mla": false, "kv_lora_rank": null,
            "q_lora_rank": null, "max_position_embeddings": 8192, "bos_token_id": 0,
            "eos_token_id": 1, "language_config": {"hidden_size": 1}
        })
    }

    #[test]
    fn official_config_parses_with_documented_defaults() -> Result<(), ModelError> {
        let c = TextConfig::from_config_json(&official())?;
        assert_eq!(c.head_dim(), 128);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.rope_theta, 10000.0);
        assert!(!c.norm_topk_prob && !c.attention_bias && !c.tie_word_embeddings);
        assert_eq!(c.routed_scaling_factor, 1.0);
        assert_eq!(
            (c.scoring_func, c.hidden_act),
            (ScoringFunc::Softmax, HiddenAct::Silu)
        );
        assert!(!c.is_moe_layer(0));
        assert!((1..12).all(|i| c.is_moe_layer(i)));
        Ok(())
    }

    fn err_field(v: Value) -> String {
        match TextConfig::from_config_json(&v) {
            Err(ModelError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_the_field() {
        let mut v = official();
        v["use_mla"] = json!(true);
        assert_eq!(err_field(v), "use_mla");
        let mut v = official();
        v["topk_method"] = json!("noaux_tc");
        assert_eq!(err_field(v), "topk_method");
        let mut v = official();
        v["scoring_func"] = json!("softplus");
        assert_eq!(err_field(v), "scoring_func");
        let mut v = official();
        v["hidden_act"] = json!("gelu");
        assert_eq!(err_field(v), "hidden_act");
        let mut v = official();
        v.as_object_mut().map(|o| o.remove("hidden_size"));
        assert_eq!(err_field(v), "hidden_size");
        let mut v = official();
        v["num_attention_heads"] = json!(7);
        assert_eq!(err_field(v), "num_attention_heads");
        let mut v = official();
        v["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        assert_eq!(err_field(v), "rope_scaling");
    }
}
