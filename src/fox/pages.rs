//! Fox-style pages: held-out prose cut into pages of 600–1,300 text tokens (buckets of 100, the paper's Table 2; other
//! ranges on request), each set at the largest font size that keeps it on one page (up to `--max-font-size`).

use std::path::{Path, PathBuf};

use optimem_renderer::{Document, LayoutConfig, Page, Renderer};

use super::FoxError;
use crate::metrics::TextTokenizer;

/// The paper's buckets of text tokens per page: [600, 700) … [1200, 1300), the default.
pub const PAPER_BUCKETS: [(usize, usize); 7] = [
    (600, 700),
    (700, 800),
    (800, 900),
    (900, 1000),
    (1000, 1100),
    (1100, 1200),
    (1200, 1300),
];

/// Debian's licence texts: real English prose on every Debian machine, and not one of the bundled model's training sources.
pub const DEFAULT_TEXT_DIR: &str = "/usr/share/common-licenses";

/// Width of a bucket in text tokens, as in the paper.
pub const BUCKET_WIDTH: usize = 100;

/// Buckets of 100 text tokens covering `lo..hi`, e.g. "100-600" for pages of 100–600 tokens (at 100 vision tokens,
/// compression up to 6×: below the paper's range, where a small model is first measured). Both ends multiples of 100.
pub fn parse_buckets(spec: &str) -> Result<Vec<(usize, usize)>, String> {
    let bad = || {
        format!(
            "buckets {spec:?}: expected LO-HI in text tokens, multiples of {BUCKET_WIDTH} with LO < HI (e.g. 600-1300)"
        )
    };
    let (lo, hi) = spec.split_once('-').ok_or_else(bad)?;
    let (lo, hi): (usize, usize) = (
        lo.trim().parse().map_err(|_| bad())?,
        hi.trim().parse().map_err(|_| bad())?,
    );
    if lo >= hi || lo % BUCKET_WIDTH != 0 || hi % BUCKET_WIDTH != 0 {
        return Err(bad());
    }
    Ok((lo..hi)
        .step_by(BUCKET_WIDTH)
        .map(|b| (b, b + BUCKET_WIDTH))
        .collect())
}

/// The bucket of `buckets` a page with `tokens` text tokens falls in, if any.
pub fn bucket_of(buckets: &[(usize, usize)], tokens: usize) -> Option<(usize, usize)> {
    buckets
        .iter()
        .copied()
        .find(|&(lo, hi)| (lo..hi).contains(&tokens))
}

/// What joins a word to the one before it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sep {
    /// A blank line: the word opens a paragraph.
    Para,
    Space,
    /// Nothing: a CJK character inside an unspaced run (Chinese pages are cut character by character).
    None,
}

/// One word of the corpus (or one character of CJK text) and what precedes it.
#[derive(Clone, Debug)]
struct Word {
    text: String,
    sep: Sep,
    doc: usize,
}

/// Han, kana, Hangul and CJK punctuation: scripts written without spaces between words.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3000..=0x303F | 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF
        | 0xFF00..=0xFFEF | 0x20000..=0x2FA1F)
}

/// The prose pages are cut from: every document's paragraphs (hard-wrapped lines re-joined), as one word stream.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// What the report says the text is.
    pub description: String,
    pub docs: Vec<String>,
    words: Vec<Word>,
}

impl Corpus {
    /// The `.txt` files of `dir` (sorted by name), or without a directory the files of [`DEFAULT_TEXT_DIR`] (identical
    /// contents, such as the GPL-3 behind the GPL symlink, once).
    pub fn load(dir: Option<&Path>) -> Result<Self, FoxError> {
        let (root, only_txt) = match dir {
            Some(d) => (d.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_TEXT_DIR), false),
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FoxError::Io { path, source }
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
            .map_err(io(&root))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io(&root))?;
        files.retain(|p| p.is_file() && (!only_txt || p.extension().is_some_and(|e| e == "txt")));
        files.sort();
        let mut docs = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        for f in &files {
            let bytes = std::fs::read(f).map_err(io(f))?;
            let text = crate::input::utf8(bytes)
                .map_err(|e| FoxError::NoText(format!("{}: {e}", f.display())))?;
            if texts.contains(&text) {
                continue;
            }
            docs.push(f.file_name().map_or_else(
                || f.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ));
            texts.push(text);
        }
        let mut words = Vec::new();
        for (doc, text) in texts.iter().enumerate() {
            let mut sep = Sep::Para;
            for line in text.lines() {
                if line.trim().is_empty() {
                    sep = Sep::Para;
                    continue;
                }
                for w in line.split_whitespace() {
                    if w.chars().any(is_cjk) {
                        // Each character is a unit; the first keeps the separator before the run.
                        for (i, c) in w.chars().enumerate() {
                            words.push(Word {
                                text: c.to_string(),
                                sep: if i == 0 { sep } else { Sep::None },
                                doc,
                            });
                        }
                    } else {
                        words.push(Word {
                            text: w.to_owned(),
                            sep,
                            doc,
                        });
                    }
                    sep = Sep::Space;
                }
                // A hard-wrapped CJK line continues without a space; Latin lines are re-joined with one.
                if line.trim_end().chars().last().is_some_and(is_cjk) {
                    sep = Sep::None;
                }
            }
        }
        if words.is_empty() {
            return Err(FoxError::NoText(format!("no text in {}", root.display())));
        }
        let description = match dir {
            Some(d) => format!("{} .txt file(s) from {}", docs.len(), d.display()),
            None => format!(
                "built-in: the {} distinct licence texts in {DEFAULT_TEXT_DIR} (Debian; real English prose, not one of \
                 the training sources in models/optimem-tiny/README.md, though licence text can appear inside them)",
                docs.len()
            ),
        };
        Ok(Self {
            description,
            docs,
            words,
        })
    }

    /// Words `start..end` as page text: spaces within paragraphs, blank lines between them.
    fn text(&self, start: usize, end: usize) -> String {
        let mut s = String::new();
        for (i, w) in self.words[start..end].iter().enumerate() {
            if i > 0 {
                s.push_str(match w.sep {
                    Sep::Para => "\n\n",
                    Sep::Space => " ",
                    Sep::None => "",
                });
            }
            s.push_str(&w.text);
        }
        s
    }
}

/// One benchmark page: its text, where it came from, its token count and the font size it is set at.
#[derive(Clone, Debug)]
pub struct FoxPage {
    pub bucket: (usize, usize),
    pub text: String,
    pub text_tokens: usize,
    /// The document of its first word.
    pub source: String,
    pub first_word: usize,
    pub font_size: f32,
    /// The page as laid out (one page).
    pub page: Page,
}

/// Cuts `per_bucket` pages per bucket of `buckets` from the corpus in reading order (each page continues where the last ended; the
/// corpus restarts from its beginning only when exhausted, and `wrapped` says so). Page k of a bucket aims at
/// lo + (hi − lo)·(k + 1)/(n + 1) tokens, spreading the pages over the bucket.
pub fn build_pages(
    corpus: &Corpus,
    tok: &TextTokenizer,
    buckets: &[(usize, usize)],
    per_bucket: usize,
    base: &LayoutConfig,
    max_font_size: f32,
) -> Result<(Vec<FoxPage>, bool), FoxError> {
    let mut out = Vec::new();
    let mut cursor = 0usize;
    let mut wrapped = false;
    for &(lo, hi) in buckets {
        for k in 0..per_bucket {
            let target = (lo + (hi - lo) * (k + 1) / (per_bucket + 1)).max(1);
            let (start, end) = match cut(corpus, tok, cursor, target)? {
                Some(r) => r,
                None => {
                    wrapped = true;
                    cut(corpus, tok, 0, target)?.ok_or_else(|| {
                        FoxError::NoText(format!(
                            "the whole text has fewer than {target} tokens: give more with --text"
                        ))
                    })?
                }
            };
            cursor = end;
            let text = corpus.text(start, end);
            let text_tokens = tok.count(&text)?;
            if bucket_of(buckets, text_tokens) != Some((lo, hi)) {
                return Err(FoxError::NoText(format!(
                    "could not cut a page of {lo}–{hi} tokens at word {start} (got {text_tokens}): a single word is \
                     too long"
                )));
            }
            let (font_size, page) = fit_one_page(&text, base, max_font_size)?;
            out.push(FoxPage {
                bucket: (lo, hi),
                text,
                text_tokens,
                source: corpus.docs[corpus.words[start].doc].clone(),
                first_word: start,
                font_size,
                page,
            });
        }
    }
    Ok((out, wrapped))
}

/// Words `start..end` with the most words whose text has at most `target` tokens, or None if the rest of the corpus
/// has fewer than `target` tokens.
fn cut(
    corpus: &Corpus,
    tok: &TextTokenizer,
    start: usize,
    target: usize,
) -> Result<Option<(usize, usize)>, FoxError> {
    // An English word or a CJK character is rarely under half a token, so 4·target units always reach the target.
    let max_end = (start + target * 4).min(corpus.words.len());
    if max_end <= start || tok.count(&corpus.text(start, max_end))? < target {
        return Ok(None);
    }
    let (mut lo, mut hi) = (start, max_end); // count(lo) <= target < count(hi) or count(hi) == target
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if tok.count(&corpus.text(start, mid))? <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some((start, lo.max(start + 1))))
}

/// The smallest and largest body font sizes a benchmark page is set at (`--max-font-size` lowers the largest).
pub const FONT_SIZE_RANGE: (f32, f32) = (4.0, 40.0);

/// `Ok` when `max_font_size` is within [`FONT_SIZE_RANGE`], the sizes a page can be fitted at.
pub fn check_max_font_size(max_font_size: f32) -> Result<(), FoxError> {
    let (min, max) = FONT_SIZE_RANGE;
    if (min..=max).contains(&max_font_size) {
        Ok(())
    } else {
        Err(FoxError::BadFontSize(max_font_size))
    }
}

/// The largest body font size (to 1/64 unit, from 4 up to `max_font_size`, itself at most 40) at which `text` lays out
/// on one page; `max_font_size` itself when the text fits at it.
pub fn fit_one_page(
    text: &str,
    base: &LayoutConfig,
    max_font_size: f32,
) -> Result<(f32, Page), FoxError> {
    let layout = |fs: f32| -> Result<Vec<Page>, FoxError> {
        let mut r = Renderer::new(LayoutConfig {
            font_size: fs,
            ..base.clone()
        })?;
        Ok(r.paginate(Document::Text(text)))
    };
    check_max_font_size(max_font_size)?;
    let (mut lo, mut hi) = (FONT_SIZE_RANGE.0, max_font_size);
    let mut best = layout(lo)?;
    if best.len() != 1 {
        return Err(FoxError::NoText(format!(
            "{} characters do not fit on one page even at font size {lo}",
            text.chars().count()
        )));
    }
    let at_max = layout(hi)?;
    if at_max.len() == 1 {
        (lo, best) = (hi, at_max);
    }
    while hi - lo > 1.0 / 64.0 {
        let mid = (lo + hi) / 2.0;
        let pages = layout(mid)?;
        if pages.len() == 1 {
            lo = mid;
            best = pages;
        } else {
            hi = mid;
        }
    }
    let page = best
        .into_iter()
        .next()
        .ok_or_else(|| FoxError::NoText("empty page".into()))?;
    Ok((lo, page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_text_is_cut_by_character_and_rejoined_unspaced() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            tmp.path().join("zh.txt"),
            "光学压缩记忆。\n第二行\n\nNew para, here.",
        )
        .expect("write");
        let c = Corpus::load(Some(tmp.path())).expect("corpus");
        assert_eq!(c.words.len(), 7 + 3 + 3);
        assert_eq!(
            c.text(0, c.words.len()),
            "光学压缩记忆。第二行\n\nNew para, here."
        );
        assert_eq!(c.text(2, 4), "压缩");
    }

    #[test]
    fn buckets_cover_600_to_1300() {
        let b = &PAPER_BUCKETS;
        assert_eq!(bucket_of(b, 599), None);
        assert_eq!(bucket_of(b, 600), Some((600, 700)));
        assert_eq!(bucket_of(b, 699), Some((600, 700)));
        assert_eq!(bucket_of(b, 700), Some((700, 800)));
        assert_eq!(bucket_of(b, 1250), Some((1200, 1300)));
        assert_eq!(bucket_of(b, 1299), Some((1200, 1300)));
        assert_eq!(bucket_of(b, 1300), None);
    }

    #[test]
    fn bucket_ranges_parse_to_the_paper_buckets_and_refuse_bad_ranges() {
        assert_eq!(
            parse_buckets("600-1300").expect("paper"),
            PAPER_BUCKETS.to_vec()
        );
        assert_eq!(
            parse_buckets("100-300").expect("short"),
            vec![(100, 200), (200, 300)]
        );
        for bad in [
            "", "600", "600-600", "700-600", "650-1300", "600-1250", "a-b", "-100",
        ] {
            let e = parse_buckets(bad).expect_err(bad);
            assert!(e.contains("LO-HI"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_cap_sets_short_text_at_the_cap_and_leaves_long_text_alone() {
        let base = LayoutConfig::default();
        let short = &optimem_renderer::density::SAMPLE_PROSE[..300];
        let (free, _) = fit_one_page(short, &base, FONT_SIZE_RANGE.1).expect("fits");
        assert!(
            free > 24.0,
            "300 characters fit in type larger than 24 ({free})"
        );
        let (capped, page) = fit_one_page(short, &base, 24.0).expect("fits at the cap");
        assert_eq!(capped, 24.0);
        assert_eq!(page.index, 0);
        let long = optimem_renderer::density::SAMPLE_PROSE.repeat(6);
        let (fitted, _) = fit_one_page(&long, &base, FONT_SIZE_RANGE.1).expect("fits");
        assert!(fitted < 24.0, "{fitted}");
        // the same size to the search's 1/64 unit (the two bisections start from different bounds)
        let under_cap = fit_one_page(&long, &base, 24.0).expect("fits").0;
        assert!(
            (under_cap - fitted).abs() <= 1.0 / 64.0,
            "{under_cap} vs {fitted}"
        );
        for bad in [3.9, 40.5, f32::NAN, f32::INFINITY] {
            let e = fit_one_page(short, &base, bad).expect_err("refused");
            assert!(e.to_string().contains("--max-font-size"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_page_fits_at_the_fitted_size_and_not_much_larger() {
        let text = optimem_renderer::density::SAMPLE_PROSE.repeat(6);
        let base = LayoutConfig::default();
        let (fs, page) = fit_one_page(&text, &base, FONT_SIZE_RANGE.1).expect("fits");
        assert_eq!(page.index, 0);
        let mut r = Renderer::new(LayoutConfig {
            font_size: fs + 0.5,
            ..base
        })
        .expect("layout");
        assert!(
            r.paginate(Document::Text(&text)).len() > 1,
            "font {fs} is not the largest"
        );
    }
}
