//! The whole model: a model directory → DeepEncoder + MoE decoder + tokenizer, and the three things callers do with it:
//! encode a page into vision tokens, decode stored vision tokens back to text, and OCR an image end to end.
//!
//! A model directory holds `config.json`, `tokenizer.json` and `*.safetensors` in the official DeepSeek-OCR layout, so a
//! downloaded `deepseek-ai/DeepSeek-OCR` folder and our bundled `models/optimem-tiny` load through the same code.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::model::config::{load_safetensors_mmap, read_config_json};
use crate::model::decoder::{DeepseekOcrDecoder, TextConfig};
use crate::model::generate::{Control, GenerateOptions, Generation, generate_text_batch};
use crate::model::tokenizer::OcrTokenizer;
use crate::model::{DeepEncoder, Image8, Mode, ModelError, VisionConfig, preprocess};

/// The prompt of the paper's Fox study and of optical recall: plain text, no layout markup.
pub const FREE_OCR_PROMPT: &str = "<image>\nFree OCR.";

/// A loaded DeepSeek-OCR model.
pub struct OcrModel {
    pub encoder: DeepEncoder,
    pub decoder: DeepseekOcrDecoder,
    pub tokenizer: OcrTokenizer,
    pub vision: VisionConfig,
    pub text: TextConfig,
    /// Identifies the weights that made a set of vision tokens (stored with every page): the directory name and a
    /// fingerprint of config.json and the weight files (sizes and sampled bytes, see `model_id`).
    pub id: String,
    pub dir: PathBuf,
    /// The modes these weights were trained to read, from config.json's optional top-level `trained_tiers` (ours;
    /// the official checkpoint has none, and reads every mode): a small model trained on Tiny and Small pages sees
    /// nothing in a Base page, and the memory layer's default tier policy keeps to what it reads.
    pub trained_modes: Option<Vec<Mode>>,
}

impl std::fmt::Debug for OcrModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OcrModel")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl OcrModel {
    /// Loads a model directory on `device` in `dtype` (f32 on CPU; bf16 on CUDA).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let json = read_config_json(dir)?;
        let vision = VisionConfig::from_config_json(&json)?;
        let text = TextConfig::from_config_json(&json)?;
        let vb = load_safetensors_mmap(dir, dtype, device)?;
        let encoder = DeepEncoder::new(&vision, vb.clone())?;
        let decoder = DeepseekOcrDecoder::new(&text, vb)?;
        let tokenizer = OcrTokenizer::from_file(
            &dir.join("tokenizer.json"),
            text.bos_token_id,
            text.eos_token_id,
        )?;
        let id = model_id(dir)?;
        let trained_modes = trained_modes(&json)?;
        Ok(Self {
            encoder,
            decoder,
            tokenizer,
            vision,
            text,
            id,
            dir: dir.to_path_buf(),
            trained_modes,
        })
    }

    /// A page or image → its vision-token sequence `[N, hidden]` (layout newlines and view separator included).
    pub fn encode(&self, image: &Image8, mode: Mode) -> Result<Tensor, ModelError> {
        let prepared = preprocess::prepare(image, mode)?;
        self.encoder.encode(&prepared)
    }

    /// Decodes one image's vision-token sequence (as [`Self::encode`] made it, possibly stored and reloaded) with `prompt`,
    /// which must contain exactly one `<image>`. `on_text` receives the text as it is generated and may stop it.
    pub fn decode(
        &self,
        image_embeds: &Tensor,
        prompt: &str,
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> Control,
    ) -> Result<(String, Generation), ModelError> {
        let mut out = self.decode_batch(
            std::slice::from_ref(image_embeds),
            prompt,
            std::slice::from_ref(opts),
            |_, piece| on_text(piece),
        )?;
        out.pop().ok_or_else(|| ModelError::Input {
            reason: "decoding returned no sequence".into(),
        })
    }

    /// [`Self::decode`] of several images at once, one sequence each (`opts[i]` for `image_embeds[i]`), through one
    /// batched generation ([`generate_text_batch`]). Every image must have the same number of vision-token rows (the
    /// same mode), so that the prompts have one length. `on_text(i, piece)` streams sequence `i`.
    pub fn decode_batch(
        &self,
        image_embeds: &[Tensor],
        prompt: &str,
        opts: &[GenerateOptions],
        on_text: impl FnMut(usize, &str) -> Control,
    ) -> Result<Vec<(String, Generation)>, ModelError> {
        let Some(first) = image_embeds.first() else {
            return Ok(Vec::new());
        };
        let n = first.dim(0)?;
        let p = self.tokenizer.encode_prompt(prompt, &[n])?;
        let mut rows = Vec::with_capacity(image_embeds.len());
        for img in image_embeds {
            if img.dim(0)? != n {
                return Err(ModelError::Input {
                    reason: format!(
                        "a batch decode needs images of one size: {} vision-token rows after {n}",
                        img.dim(0)?
                    ),
                });
            }
            rows.push(
                self.decoder
                    .prompt_embeds(&p.ids, &p.image_mask, Some(img))?,
            );
        }
        let embeds = Tensor::cat(&rows, 0)?;
        generate_text_batch(
            &self.decoder,
            &self.tokenizer,
            &embeds,
            &p.ids,
            opts,
            on_text,
        )
    }

    /// OCR end to end: preprocess, encode, decode.
    pub fn ocr(
        &self,
        image: &Image8,
        mode: Mode,
        prompt: &str,
        opts: &GenerateOptions,
        on_text: impl FnMut(&str) -> Control,
    ) -> Result<(String, Generation), ModelError> {
        let embeds = self.encode(image, mode)?;
        self.decode(&embeds, prompt, opts, on_text)
    }

    /// The official greedy settings (n-gram 30 over 90, `<td>` whitelist) capped at `max_new_tokens`.
    pub fn ocr_options(&self, max_new_tokens: usize) -> GenerateOptions {
        let mut opts = GenerateOptions::ocr(
            self.tokenizer.eos_token_id(),
            self.tokenizer.ngram_whitelist(),
        );
        opts.max_new_tokens = max_new_tokens;
        opts.max_context = opts.max_context.min(self.text.max_position_embeddings);
        opts
    }
}

/// Bytes read from each weight file for [`model_id`], in this many evenly spaced pieces of [`ID_SAMPLE_BYTES`].
const ID_SAMPLES: u64 = 64;
const ID_SAMPLE_BYTES: usize = 4096;

/// `dirname@fingerprint`: FNV-1a over config.json's bytes and, for each weight file, its name, its size and 64 pieces
/// of 4 KiB spread evenly over it (the first holds the safetensors header with its metadata). Sizes alone are not
/// enough: a retrained model of the same architecture has the same files to the byte count (the bundled model's runs j6
/// and j9 had the same id), and a store would then decode one model's tokens with the other's weights. Reading 256 KiB
/// per file keeps the start fast for the official 6.7 GB checkpoint; training changes virtually every byte.
fn model_id(dir: &Path) -> Result<String, ModelError> {
    use std::io::{Read, Seek, SeekFrom};
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
        move |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    let cfg = dir.join("config.json");
    feed(&std::fs::read(&cfg).map_err(io(&cfg))?);
    let mut files: Vec<(String, u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") {
            let len = entry.metadata().map_err(io(&entry.path()))?.len();
            files.push((name, len, entry.path()));
        }
    }
    files.sort();
    let mut piece = vec![0u8; ID_SAMPLE_BYTES];
    for (name, len, path) in &files {
        feed(name.as_bytes());
        feed(&len.to_le_bytes());
        let mut file = std::fs::File::open(path).map_err(io(path))?;
        let span = len.saturating_sub(ID_SAMPLE_BYTES as u64);
        for i in 0..ID_SAMPLES {
            let at = span * i / (ID_SAMPLES - 1);
            file.seek(SeekFrom::Start(at)).map_err(io(path))?;
            let n = (*len - at).min(ID_SAMPLE_BYTES as u64) as usize;
            file.read_exact(&mut piece[..n]).map_err(io(path))?;
            feed(&piece[..n]);
        }
    }
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
    Ok(format!(
        "{}@{h:016x}",
        name.unwrap_or_else(|| "model".into())
    ))
}

/// config.json's optional `trained_tiers`: a non-empty list of mode names (`["tiny", "small"]`). Absent or null: the
/// weights read every mode. Anything else is an error naming the field.
pub fn trained_modes(json: &serde_json::Value) -> Result<Option<Vec<Mode>>, ModelError> {
    let bad = |reason: String| ModelError::Config {
        field: "trained_tiers".into(),
        reason,
    };
    let list = match json.get("trained_tiers") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Array(list)) if !list.is_empty() => list,
        Some(other) => {
            return Err(bad(format!(
                "{other} is not a non-empty list of mode names"
            )));
        }
    };
    let mut modes = Vec::with_capacity(list.len());
    for v in list {
        let name = v
            .as_str()
            .ok_or_else(|| bad(format!("{v} is not a mode name")))?;
        let mode: Mode = name.parse().map_err(|_| {
            bad(format!(
                "unknown mode {name:?} (tiny, small, base, large, gundam)"
            ))
        })?;
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    Ok(Some(modes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_model_id_tells_weights_of_the_same_shape_apart() {
        let dirs: Vec<tempfile::TempDir> = (0..3)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        // Same config, same file names and sizes; the third holds other values, as a retrained model does.
        let weights: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        for (k, d) in dirs.iter().enumerate() {
            std::fs::write(d.path().join("config.json"), b"{}").expect("config");
            let mut w = weights.clone();
            if k == 2 {
                w.iter_mut().for_each(|b| *b ^= 1);
            }
            std::fs::write(d.path().join("model.safetensors"), &w).expect("weights");
        }
        let ids: Vec<String> = dirs
            .iter()
            .map(|d| model_id(d.path()).expect("id"))
            .map(|id| id.split_once('@').expect("name@hash").1.to_owned())
            .collect();
        assert_eq!(ids[0], ids[1]);
        assert_ne!(ids[0], ids[2]);
        // A file shorter than one sample is read whole.
        std::fs::write(dirs[0].path().join("model.safetensors"), b"tiny").expect("weights");
        assert_ne!(
            model_id(dirs[0].path())
                .expect("id")
                .split_once('@')
                .expect("hash")
                .1,
            ids[0]
        );
    }

    #[test]
    fn trained_tiers_are_optional_mode_names() {
        assert_eq!(trained_modes(&json!({})).expect("absent"), None);
        assert_eq!(
            trained_modes(&json!({"trained_tiers": null})).expect("null"),
            None
        );
        assert_eq!(
            trained_modes(&json!({"trained_tiers": ["tiny", "Small", "tiny"]})).expect("list"),
            Some(vec![Mode::Tiny, Mode::Small])
        );
        for bad in [json!([]), json!("tiny"), json!([1]), json!(["huge"])] {
            let e = trained_modes(&json!({ "trained_tiers": bad })).expect_err("bad");
            assert!(e.to_string().contains("trained_tiers"), "{e}");
        }
    }
}
