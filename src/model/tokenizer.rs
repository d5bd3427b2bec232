//! The DeepSeek-OCR tokenizer: prompt construction and streaming detokenisation (spec §5.1–5.4).
//!
//! The model directory's `tokenizer.json` (DeepSeek-V3 byte-level BPE plus the OCR tokens) is loaded
//! with the `tokenizers` crate. Prompts follow the official "plain" template: the text is stripped,
//! split on the literal `<image>`, each piece is encoded without special tokens, N placeholder ids
//! are inserted per image (N from the DeepEncoder layout, §3.4), and BOS is prepended by hand.
//! The `<image>` id is looked up in the tokenizer, as vLLM does, never hard-coded.

use std::path::Path;

use crate::model::ModelError;

/// The literal that marks an image in a prompt.
pub const IMAGE_TOKEN: &str = "<image>";

/// Tokens the official n-gram guard may always repeat (table cells, OCR-RUN-IMG).
pub const NGRAM_WHITELIST_TOKENS: [&str; 2] = ["<td>", "</td>"];

/// A prompt ready for [`crate::model::decoder::DeepseekOcrDecoder::prompt_embeds`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptIds {
    /// BOS, text ids and image placeholder ids.
    pub ids: Vec<u32>,
    /// True exactly at the placeholder positions (`images_seq_mask`).
    pub image_mask: Vec<bool>,
}

/// `tokenizer.json` with the ids the pipeline needs.
#[derive(Debug, Clone)]
pub struct OcrTokenizer {
    inner: tokenizers::Tokenizer,
    image_token_id: u32,
    bos_token_id: u32,
    eos_token_id: u32,
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl OcrTokenizer {
    /// Loads `tokenizer.json`; BOS and EOS come from config.json (`bos_token_id`, `eos_token_id`).
    pub fn from_file(
        path: &Path,
        bos_token_id: u32,
        eos_token_id: u32,
    ) -> Result<Self, ModelError> {
        let bytes = read_tokenizer_json(path)?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::new(inner, bos_token_id, eos_token_id)
    }

    /// Loads `dir/tokenizer.json` of a model directory, with BOS/EOS from its config.
    pub fn from_model_dir(
        dir: &Path,
        cfg: &crate::model::decoder::TextConfig,
    ) -> Result<Self, ModelError> {
        Self::from_file(
            &dir.join("tokenizer.json"),
            cfg.bos_token_id,
            cfg.eos_token_id,
        )
    }

    pub fn new(
        inner: tokenizers::Tokenizer,
        bos_token_id: u32,
        eos_token_id: u32,
    ) -> Result<Self, ModelError> {
        let image_token_id = inner.token_to_id(IMAGE_TOKEN).ok_or_else(|| {
            ModelError::Tokenizer(format!("tokenizer.json has no {IMAGE_TOKEN} token"))
        })?;
        Ok(Self {
            inner,
            image_token_id,
            bos_token_id,
            eos_token_id,
        })
    }

    pub fn image_token_id(&self) -> u32 {
        self.image_token_id
    }

    pub fn bos_token_id(&self) -> u32 {
        self.bos_token_id
    }

    pub fn eos_token_id(&self) -> u32 {
        self.eos_token_id
    }

    /// The id of an exact token string, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The ids of `<td>` and `</td>` for the n-gram whitelist (those present).
    pub fn ngram_whitelist(&self) -> Vec<u32> {
        NGRAM_WHITELIST_TOKENS
            .iter()
            .filter_map(|t| self.inner.token_to_id(t))
            .collect()
    }

    /// Encodes plain text without BOS/EOS (`add_special_tokens=False`); added tokens such as
    /// `<|grounding|>` become single ids. Also the text-token count of the metrics (DESIGN §6).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Builds the prompt ids (spec §5.3–5.4): `image_tokens[i]` placeholders for the i-th `<image>`.
    /// The number of `<image>` marks must equal the number of images.
    pub fn encode_prompt(
        &self,
        prompt: &str,
        image_tokens: &[usize],
    ) -> Result<PromptIds, ModelError> {
        let prompt = prompt.trim();
        let pieces: Vec<&str> = prompt.split(IMAGE_TOKEN).collect();
        if pieces.len() - 1 != image_tokens.len() {
            return Err(ModelError::Input {
                reason: format!(
                    "prompt has {} {IMAGE_TOKEN} marks for {} images",
                    pieces.len() - 1,
                    image_tokens.len()
                ),
            });
        }
        let mut ids = vec![self.bos_token_id];
        let mut image_mask = vec![false];
        for (i, piece) in pieces.iter().enumerate() {
            let text = self.encode_text(piece)?;
            image_mask.extend(std::iter::repeat_n(false, text.len()));
            ids.extend(text);
            if let Some(&n) = image_tokens.get(i) {
                ids.extend(std::iter::repeat_n(self.image_token_id, n));
                image_mask.extend(std::iter::repeat_n(true, n));
            }
        }
        Ok(PromptIds { ids, image_mask })
    }

    /// Decodes ids to text, keeping special tokens (`<|ref|>`, `<td>`) as the official scripts do.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner.decode(ids, false).map_err(tok_err)
    }

    /// A fresh incremental detokeniser for one generation.
    pub fn detokenizer(&self) -> Detokenizer<'_> {
        Detokenizer {
            tokenizer: self,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }
}

/// Turns a stream of ids into text pieces, emitting only once the text ends on a complete UTF-8
/// character: byte-level BPE splits multi-byte characters (CJK, accents) across tokens, and a
/// partial one decodes to U+FFFD, which must not reach the caller.
///
/// It decodes a short window: the ids since the last emitted piece plus the ones before them
/// that produced the previous piece, so the cost per token stays constant.
#[derive(Debug)]
pub struct Detokenizer<'a> {
    tokenizer: &'a OcrTokenizer,
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix_offset: usize,
    /// End of the text already emitted.
    read_offset: usize,
}

impl Detokenizer<'_> {
    /// Adds one id; returns the new text if it ends on a character boundary.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, ModelError> {
        self.ids.push(id);
        let piece = self.pending()?;
        match piece {
            Some(p) if !p.ends_with(char::REPLACEMENT_CHARACTER) => {
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                Ok(Some(p))
            }
            _ => Ok(None),
        }
    }

    /// Flushes what is left at the end of generation (an unfinished character decodes as U+FFFD).
    pub fn finish(&mut self) -> Result<Option<String>, ModelError> {
        let piece = self.pending()?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(piece)
    }

    /// The text of the ids after `read_offset`, decoded in the context of the previous piece.
    fn pending(&self) -> Result<Option<String>, ModelError> {
        let prefix = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = self.tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if full.len() <= prefix.len() {
            return Ok(None);
        }
        match full.strip_prefix(prefix.as_str()) {
            Some(rest) => Ok(Some(rest.to_string())),
            None => Err(ModelError::Tokenizer(format!(
                "incremental decoding diverged: {prefix:?} is not a prefix of {full:?}"
            ))),
        }
    }
}

/// Reads a `tokenizer.json`, or its zstd-compressed twin `tokenizer.json.zst` when only that exists. Large vocabularies
/// (the DeepSeek-V3 file is 7.8 MB of JSON, 1.5 MB compressed) are committed compressed: every byte of the repository
/// travels to the GPU machine on each call, within a fixed budget.
pub fn read_tokenizer_json(path: &Path) -> Result<Vec<u8>, ModelError> {
    let io = |path: &Path, source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        return std::fs::read(path).map_err(|e| io(path, e));
    }
    let mut zst = path.as_os_str().to_owned();
    zst.push(".zst");
    let zst = std::path::PathBuf::from(zst);
    match std::fs::read(&zst) {
        Ok(bytes) => zstd::decode_all(bytes.as_slice()).map_err(|e| io(&zst, e)),
        // Name the file the caller asked for: that is what the user will look for.
        Err(_) => std::fs::read(path).map_err(|e| io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed DeepSeek-V3 + OCR tokenizer (assets/tokenizers/deepseek-v3/README.md).
    fn tokenizer() -> Result<OcrTokenizer, ModelError> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets/tokenizers/deepseek-v3/tokenizer.json");
        OcrTokenizer::from_file(&path, 0, 1)
    }

    #[test]
    fn ocr_tokens_have_the_official_ids() -> Result<(), ModelError> {
        let t = tokenizer()?;
        assert_eq!(t.image_token_id(), 128815);
        assert_eq!(t.token_to_id("<|grounding|>"), Some(128820));
        assert_eq!(t.ngram_whitelist(), vec![128821, 128822]);
        assert_eq!(t.token_to_id("<｜end▁of▁sentence｜>"), Some(1));
        Ok(())
    }

    /// Ids computed with the Python `tokenizers` 0.23 package on the same file:
    /// `tok.encode("\n<|grounding|>Convert the document to markdown.", add_special_tokens=False)`.
    #[test]
    fn document_prompt_encodes_as_the_reference() -> Result<(), ModelError> {
        let t = tokenizer()?;
        let p = t.encode_prompt(
            "  <image>\n<|grounding|>Convert the document to markdown. ",
            &[3],
        )?;
        let text = [201, 128820, 21842, 270, 4940, 304, 2121, 7919, 16];
        let mut want = vec![0, 128815, 128815, 128815];
        want.extend(text);
        assert_eq!(p.ids, want);
        let mut mask = vec![false, true, true, true];
        mask.extend([false; 9]);
        assert_eq!(p.image_mask, mask);
        Ok(())
    }

    #[test]
    fn image_marks_must_match_the_images() -> Result<(), ModelError> {
        let t = tokenizer()?;
        assert!(matches!(
            t.encode_prompt("<image>Free OCR.", &[]),
            Err(ModelError::Input { .. })
        ));
        let p = t.encode_prompt("a<image>b<image>", &[1, 2])?;
        let img = t.image_token_id();
        assert_eq!(p.ids.iter().filter(|&&i| i == img).count(), 3);
        assert_eq!(p.image_mask.iter().filter(|&&m| m).count(), 3);
        Ok(())
    }

    #[test]
    fn streaming_emits_whole_characters_only() -> Result<(), ModelError> {
        let t = tokenizer()?;
        let text = "Hello, 世界! café <td>x</td> ok";
        let ids = t.encode_text(text)?;
        // Python: "世界" is one token whose bytes span 6 bytes; force a split case below too.
        let mut detok = t.detokenizer();
        let mut out = String::new();
        for &id in &ids {
            if let Some(piece) = detok.push(id)? {
                assert!(!piece.contains(char::REPLACEMENT_CHARACTER), "{piece:?}");
                out.push_str(&piece);
            }
        }
        if let Some(rest) = detok.finish()? {
            out.push_str(&rest);
        }
        assert_eq!(out, text);

        // A character whose bytes come from two tokens: nothing is emitted after the first.
        let bytes_of = |s: &str| -> Result<Vec<u32>, ModelError> { t.encode_text(s) };
        let e_acute = bytes_of("é")?;
        let split: Vec<u32> = if e_acute.len() >= 2 {
            e_acute
        } else {
            // "é" is one token; use the byte-level tokens Ã and © (0xC3 0xA9) instead.
            vec![
                t.token_to_id("Ã")
                    .ok_or_else(|| tok_err("no byte token Ã"))?,
                t.token_to_id("©")
                    .ok_or_else(|| tok_err("no byte token ©"))?,
            ]
        };
        let mut detok = t.detokenizer();
        assert_eq!(detok.push(split[0])?, None);
        assert_eq!(detok.push(split[1])?.as_deref(), Some("é"));
        Ok(())
    }
}
