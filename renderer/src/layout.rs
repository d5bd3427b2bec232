//! Text and chat turns → laid-out lines → pages.
//!
//! Layout happens once, in logical units on a fixed square canvas ([`LayoutConfig::canvas`], 1024 units), so that the same page
//! can later be rasterized at any tier (512…1280 px) and shows exactly the same lines: only the pixel scale changes.
//!
//! Nothing is lost: every input byte belongs to exactly one line ([`Line::range`]), lines partition each message in order, and a
//! page's [`Span`]s are the union of its lines' ranges. So the concatenation of all pages' spans is the input, byte for byte,
//! whatever it holds (control characters, CRLF, zero-width characters, words longer than a line: those are broken by glyph).

use std::ops::Range;

use cosmic_text::{Attrs, Buffer, Family, Metrics, Shaping, Weight, Wrap};

use crate::fonts::{BODY_FAMILY, Fonts};

/// Geometry of a page in logical units. The defaults put about a Fox page of English prose (600–1,300 text tokens) on a page.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayoutConfig {
    /// Side of the square logical canvas; rasterizing at N px scales by N / canvas.
    pub canvas: f32,
    /// Blank border on every side.
    pub margin: f32,
    /// Body font size (the text density knob: see [`crate::density`]).
    pub font_size: f32,
    /// Line pitch as a multiple of the font size.
    pub line_height: f32,
    /// Extra vertical space between chat turns, as a multiple of the line pitch; the turn rule is drawn in its middle.
    pub turn_gap: f32,
    /// Tab stops, in spaces.
    pub tab_width: u16,
}

impl Default for LayoutConfig {
    fn default() -> Self {
        Self {
            canvas: 1024.0,
            margin: 40.0,
            font_size: 17.0,
            line_height: 1.25,
            turn_gap: 0.6,
            tab_width: 4,
        }
    }
}

impl LayoutConfig {
    /// Checks that the geometry leaves room for at least one line.
    pub fn validate(&self) -> Result<(), crate::RenderError> {
        let ok = self.canvas.is_finite()
            && self.font_size.is_finite()
            && self.line_height.is_finite()
            && self.turn_gap.is_finite()
            && self.font_size >= 2.0
            && self.line_height >= 0.5
            && self.turn_gap >= 0.0
            && self.content_width() >= self.font_size * 2.0
            && self.content_height() >= self.line_pitch() * (1.0 + self.turn_gap);
        if ok {
            Ok(())
        } else {
            Err(crate::RenderError::BadLayout(format!("{self:?}")))
        }
    }

    pub fn content_width(&self) -> f32 {
        self.canvas - 2.0 * self.margin
    }

    pub fn content_height(&self) -> f32 {
        self.canvas - 2.0 * self.margin
    }

    pub fn line_pitch(&self) -> f32 {
        self.font_size * self.line_height
    }
}

/// One turn of a conversation.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Turn {
    pub role: String,
    pub content: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub time: Option<String>,
}

impl Turn {
    /// The bold label drawn before the turn's text, e.g. `assistant (planner) · 10:15: `. It is one line: control
    /// characters and line/paragraph separators in the role, name or time become spaces (the label is drawn, not
    /// part of any message's bytes, so nothing is lost from the spans).
    pub fn label(&self) -> String {
        self.raw_label()
            .chars()
            .map(|c| {
                if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                    ' '
                } else {
                    c
                }
            })
            .collect()
    }

    fn raw_label(&self) -> String {
        let mut label = self.role.clone();
        if let Some(name) = self.name.as_deref().filter(|n| !n.is_empty()) {
            label.push_str(&format!(" ({name})"));
        }
        if let Some(time) = self.time.as_deref().filter(|t| !t.is_empty()) {
            label.push_str(&format!(" · {time}"));
        }
        label.push_str(": ");
        label
    }
}

/// What to lay out.
#[derive(Clone, Copy, Debug)]
pub enum Document<'a> {
    /// Plain text: one message, no labels.
    Text(&'a str),
    /// Chat turns: each turn is a message with a bold role label and a rule before it (but the first).
    Chat(&'a [Turn]),
}

/// A glyph placed on its line, in logical units; `x` from the left margin, `y` from the line's baseline (down is positive).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Glyph {
    pub font: cosmic_text::fontdb::ID,
    pub glyph_id: u16,
    pub font_size: f32,
    pub x: f32,
    pub y: f32,
    pub advance: f32,
    /// Byte offset of the glyph's cluster in the line's visible text ([`Line::visible`]).
    pub offset: usize,
}

/// One visual line.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// Index of the message (chat turn; 0 for plain text) this line shows.
    pub message: usize,
    /// The bytes of the message this line accounts for; consecutive lines of a message have adjacent ranges.
    pub range: Range<usize>,
    /// Label text drawn at the start of the line (first line of a chat turn), part of the visible text but of no message.
    pub label: Option<String>,
    /// Whether a turn rule (and the turn gap) comes before this line.
    pub rule_before: bool,
    pub glyphs: Vec<Glyph>,
    /// Distance from the line's top to its baseline.
    pub baseline: f32,
    pub height: f32,
}

impl Line {
    /// The text the line shows: the label, then its message bytes (including the line break that ends a paragraph).
    pub fn visible(&self, messages: &[&str]) -> String {
        let mut s = self.label.clone().unwrap_or_default();
        if let Some(text) = messages.get(self.message) {
            s.push_str(&text[self.range.clone()]);
        }
        s
    }
}

/// Splits `text` into paragraphs on every character the Unicode bidirectional algorithm treats as a paragraph
/// separator (class B): `\r\n`, `\n`, `\r`, U+001C–U+001E, U+0085 (NEL) and U+2029. The shaper must never see one
/// inside a line: cosmic-text asserts that all bidi paragraphs of a line share one direction, and panicked on
/// "שלום עולם مرحبا\u{2029}Σ" (an RTL then an LTR paragraph) found by the chat property test.
/// Returns each paragraph's content range and the range including its separator.
fn paragraphs(text: &str) -> Vec<(Range<usize>, Range<usize>)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = match c {
            '\r' if chars.peek().is_some_and(|&(_, n)| n == '\n') => {
                chars.next();
                i + 2
            }
            '\r' | '\n' | '\u{1c}' | '\u{1d}' | '\u{1e}' | '\u{85}' | '\u{2029}' => {
                i + c.len_utf8()
            }
            _ => continue,
        };
        out.push((start..i, start..end));
        start = end;
    }
    out.push((start..text.len(), start..text.len()));
    out
}

/// Shaped words are kept while one of the last this-many documents used them (cosmic-text's shape-run cache, one entry
/// per word and style). Prose reuses most of its words: a warm cache makes layout 3–5× faster. The bound keeps a
/// long-running server's cache to the vocabulary of recent requests.
const SHAPE_CACHE_DOCUMENTS: u64 = 32;

/// Whether some of `text` may be laid out right to left: a strong right-to-left character (Hebrew, Arabic, RLM…) or
/// an explicit right-to-left embedding, override or isolate. Without one, every bidi run of the paragraph is
/// left to right.
fn may_run_rtl(text: &str) -> bool {
    use unicode_bidi::BidiClass::{AL, R, RLE, RLI, RLO};
    text.chars()
        .any(|c| matches!(unicode_bidi::bidi_class(c), R | AL | RLE | RLO | RLI))
}

/// Lays out documents. Holds the font system and a reusable buffer; create one per thread.
#[derive(Debug)]
pub struct Layouter {
    pub(crate) fonts: Fonts,
    config: LayoutConfig,
    /// Next [`Attrs::metadata`] that no shaped run has had yet (see `message_lines`).
    fresh_metadata: usize,
}

impl Layouter {
    pub fn new(config: LayoutConfig) -> Result<Self, crate::RenderError> {
        config.validate()?;
        Ok(Self {
            fonts: Fonts::embedded(),
            config,
            fresh_metadata: 1,
        })
    }

    pub fn config(&self) -> &LayoutConfig {
        &self.config
    }

    /// Lays out a document into visual lines. Plain text that is empty gives no lines.
    pub fn lines(&mut self, doc: Document<'_>) -> Vec<Line> {
        let mut out = Vec::new();
        match doc {
            Document::Text(text) => {
                if !text.is_empty() {
                    self.message_lines(0, text, None, false, &mut out);
                }
            }
            Document::Chat(turns) => {
                for (i, turn) in turns.iter().enumerate() {
                    self.message_lines(i, &turn.content, Some(turn.label()), i > 0, &mut out);
                }
            }
        }
        self.fonts
            .system
            .shape_run_cache
            .trim(SHAPE_CACHE_DOCUMENTS);
        out
    }

    fn message_lines(
        &mut self,
        message: usize,
        text: &str,
        label: Option<String>,
        rule: bool,
        out: &mut Vec<Line>,
    ) {
        let first = out.len();
        let cfg = self.config.clone();
        let metrics = Metrics::new(cfg.font_size, cfg.line_pitch());
        let mut buffer = Buffer::new_empty(metrics);
        buffer.set_size(Some(cfg.content_width()), None);
        buffer.set_wrap(Wrap::WordOrGlyph);
        buffer.set_tab_width(cfg.tab_width);
        let body = Attrs::new().family(Family::Name(BODY_FAMILY));
        let bold = body.clone().weight(Weight::BOLD);
        let mut prev_start = 0usize;
        for (pi, (content, with_break)) in paragraphs(text).into_iter().enumerate() {
            let para = &text[content.clone()];
            let label_here = if pi == 0 { label.as_deref() } else { None };
            let prefix = label_here.map_or(0, str::len);
            let pieces = [(label_here.unwrap_or(""), &bold), (para, &body)];
            if pieces.iter().any(|(t, _)| may_run_rtl(t)) {
                // cosmic-text's cache keys a shaped word by its text and style, not by its direction: a word shaped in
                // a left-to-right run (say "(1)") came back unmirrored in a right-to-left one. Each character of a
                // paragraph that may run right to left gets a metadata value never used before; metadata does not
                // change shaping or split runs, but it is part of the key, so these runs never hit the cache.
                let mut spans = Vec::new();
                for (text, attrs) in pieces {
                    for (i, c) in text.char_indices() {
                        let piece = &text[i..i + c.len_utf8()];
                        spans.push((piece, attrs.clone().metadata(self.fresh_metadata)));
                        self.fresh_metadata = self.fresh_metadata.wrapping_add(1).max(1);
                    }
                }
                buffer.set_rich_text(spans, &body, Shaping::Advanced, None);
            } else if let Some(l) = label_here {
                buffer.set_rich_text(
                    [(l, bold.clone()), (para, body.clone())],
                    &body,
                    Shaping::Advanced,
                    None,
                );
            } else {
                buffer.set_text(para, &body, Shaping::Advanced, None);
            }
            let layout = buffer
                .line_layout(&mut self.fonts.system, 0)
                .map(<[_]>::to_vec)
                .unwrap_or_default();
            let n = layout.len().max(1);
            for li in 0..n {
                let ll = layout.get(li);
                // A line starts at the paragraph start (first line) or at its first content glyph (wrapped lines);
                // clamped so ranges never go backwards whatever the shaper reports.
                let start = if li == 0 {
                    content.start
                } else {
                    ll.and_then(|l| {
                        l.glyphs
                            .iter()
                            .filter(|g| g.start >= prefix)
                            .map(|g| g.start - prefix)
                            .min()
                    })
                    .map_or(content.start, |s| content.start + s)
                };
                let start = start.max(prev_start).min(with_break.end);
                let own_prev = out.len() > first;
                if let Some(prev) = out.last_mut().filter(|_| own_prev) {
                    prev.range.end = start;
                }
                prev_start = start;
                let is_label_line = pi == 0 && li == 0 && label.is_some();
                let (glyphs, baseline, height) = match ll {
                    Some(l) => {
                        let line_height = l.line_height_opt.unwrap_or(cfg.line_pitch());
                        let baseline =
                            (line_height - (l.max_ascent + l.max_descent)) / 2.0 + l.max_ascent;
                        let glyphs = l
                            .glyphs
                            .iter()
                            .map(|g| Glyph {
                                font: g.font_id,
                                glyph_id: g.glyph_id,
                                font_size: g.font_size,
                                x: g.x + g.font_size * g.x_offset,
                                y: g.y - g.font_size * g.y_offset,
                                advance: g.w,
                                // Byte offset in the line's visible text: label glyphs index the label, content glyphs follow it.
                                offset: if g.start < prefix {
                                    g.start
                                } else {
                                    let label_len = if is_label_line { prefix } else { 0 };
                                    (content.start + g.start - prefix).saturating_sub(start)
                                        + label_len
                                },
                            })
                            .collect();
                        (glyphs, baseline, line_height)
                    }
                    None => (Vec::new(), cfg.font_size, cfg.line_pitch()),
                };
                out.push(Line {
                    message,
                    range: start..with_break.end,
                    label: if is_label_line { label.clone() } else { None },
                    rule_before: rule && pi == 0 && li == 0,
                    glyphs,
                    baseline,
                    height,
                });
            }
        }
        let own_last = out.len() > first;
        if let Some(last) = out.last_mut().filter(|_| own_last) {
            last.range.end = text.len();
        }
    }
}

/// A byte range of one message shown on a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Span {
    pub message: usize,
    pub start: usize,
    pub end: usize,
}

/// A line placed on a page: `top` is its distance from the canvas top, in logical units.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacedLine {
    pub line: Line,
    pub top: f32,
}

/// One page: lines placed on the canvas, and the spans of input it shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub index: usize,
    pub lines: Vec<PlacedLine>,
    pub spans: Vec<Span>,
    pub config: LayoutConfig,
}

impl Page {
    /// The text drawn on the page in reading order (labels included), and each line's start offset in it.
    pub fn visible_text(&self, messages: &[&str]) -> (String, Vec<usize>) {
        let mut text = String::new();
        let mut starts = Vec::with_capacity(self.lines.len());
        for (i, pl) in self.lines.iter().enumerate() {
            if pl.line.rule_before && i > 0 && !text.ends_with('\n') {
                text.push('\n');
            }
            starts.push(text.len());
            text.push_str(&pl.line.visible(messages));
        }
        (text, starts)
    }
}

/// Cuts lines into pages: a page takes lines while they fit in the content height (a page always takes at least one line).
pub fn paginate(lines: Vec<Line>, config: &LayoutConfig) -> Vec<Page> {
    paginate_below(lines, config, 0.0)
}

/// [`paginate`] with the first page's text starting `first_top` logical units below the top of the content area
/// (blank space above it; later pages start at the top). Training pages use it so that text of any length is seen
/// on every row of vision tokens. The offset is held to what leaves the first line on the page (a negative or
/// non-finite one is 0); [`crate::Renderer::paginate_below`] refuses one beyond a line pitch short of the bottom.
pub fn paginate_below(lines: Vec<Line>, config: &LayoutConfig, first_top: f32) -> Vec<Page> {
    let mut pages: Vec<Page> = Vec::new();
    let mut cur: Vec<PlacedLine> = Vec::new();
    let bottom = config.content_height();
    let mut y = match lines.first() {
        Some(l) if first_top.is_finite() => first_top.min(bottom - l.height).max(0.0),
        _ => 0.0,
    };
    let gap = config.turn_gap * config.line_pitch();
    for line in lines {
        let pre = if line.rule_before && !cur.is_empty() {
            gap
        } else {
            0.0
        };
        if !cur.is_empty() && y + pre + line.height > bottom + 1e-3 {
            pages.push(make_page(pages.len(), std::mem::take(&mut cur), config));
            y = 0.0;
        }
        let pre = if line.rule_before && !cur.is_empty() {
            gap
        } else {
            0.0
        };
        y += pre;
        cur.push(PlacedLine {
            top: config.margin + y,
            line,
        });
        y += cur.last().map_or(0.0, |l| l.line.height);
    }
    if !cur.is_empty() {
        pages.push(make_page(pages.len(), cur, config));
    }
    pages
}

fn make_page(index: usize, lines: Vec<PlacedLine>, config: &LayoutConfig) -> Page {
    let mut spans: Vec<Span> = Vec::new();
    for pl in &lines {
        let r = &pl.line.range;
        match spans.last_mut() {
            Some(s) if s.message == pl.line.message && s.end == r.start => s.end = r.end,
            _ => spans.push(Span {
                message: pl.line.message,
                start: r.start,
                end: r.end,
            }),
        }
    }
    Page {
        index,
        lines,
        spans,
        config: config.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_split_on_every_line_break_kind() {
        let p = paragraphs("a\r\nb\nc\rd");
        let content: Vec<_> = p.iter().map(|(c, _)| c.clone()).collect();
        assert_eq!(content, vec![0..1, 3..4, 5..6, 7..8]);
        let with: Vec<_> = p.iter().map(|(_, w)| w.clone()).collect();
        assert_eq!(with, vec![0..3, 3..5, 5..7, 7..8]);
        // the other bidi paragraph separators: U+2029 (3 bytes), NEL (2 bytes), U+001C (1 byte)
        let p = paragraphs("a\u{2029}b\u{85}c\u{1c}d");
        let content: Vec<_> = p.iter().map(|(c, _)| c.clone()).collect();
        assert_eq!(content, vec![0..1, 4..5, 7..8, 9..10]);
        let with: Vec<_> = p.iter().map(|(_, w)| w.clone()).collect();
        assert_eq!(with, vec![0..4, 4..7, 7..9, 9..10]);
    }

    #[test]
    fn labels_stay_on_one_line() {
        let t = Turn {
            role: "user\n".into(),
            content: String::new(),
            name: Some("a\u{2029}b\rc".into()),
            time: Some("10:15\u{85}".into()),
        };
        assert_eq!(t.label(), "user  (a b c) · 10:15 : ");
    }

    #[test]
    fn label_names_role_name_and_time() {
        let t = Turn {
            role: "assistant".into(),
            content: String::new(),
            name: Some("planner".into()),
            time: Some("10:15".into()),
        };
        assert_eq!(t.label(), "assistant (planner) · 10:15: ");
    }
}
