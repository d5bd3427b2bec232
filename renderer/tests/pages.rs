//! Page-level properties of the renderer: nothing lost, deterministic pixels, every script, tiers and ageing.

use std::cell::RefCell;

use optimem_renderer::{
    Document, GrayImage, LayoutConfig, Page, RenderError, Renderer, Tier, Turn, downsample,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

thread_local! {
    // Building a renderer parses the embedded fonts; share one across property cases.
    static RENDERER: RefCell<Renderer> = RefCell::new(Renderer::new(LayoutConfig::default()).expect("default layout is valid"));
}

fn paginate(doc: Document<'_>) -> Vec<Page> {
    RENDERER.with(|r| r.borrow_mut().paginate(doc))
}

/// Concatenates, per message, the spans of all pages in order.
fn reassemble(pages: &[Page], messages: &[&str]) -> Vec<String> {
    let mut out = vec![String::new(); messages.len()];
    let mut cursor = vec![0usize; messages.len()];
    for p in pages {
        for s in &p.spans {
            assert_eq!(
                s.start, cursor[s.message],
                "spans of message {} must be contiguous",
                s.message
            );
            assert!(s.start <= s.end);
            out[s.message].push_str(&messages[s.message][s.start..s.end]);
            cursor[s.message] = s.end;
        }
    }
    out
}

fn ink(img: &GrayImage) -> usize {
    img.pixels.iter().filter(|&&p| p < 128).count()
}

fn sha(img: &GrayImage) -> String {
    let d = Sha256::digest(&img.pixels);
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Text that stresses line breaking and byte accounting.
fn nasty_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "\\PC{0,40}",                                           // any printable Unicode
        "[a-zA-Z0-9+/]{60,400}",                                // base64-ish unbreakable runs
        "https://[a-z]{3,12}\\.example/[a-zA-Z0-9/_-]{20,200}", // URLs
        Just("\t".to_owned()),
        Just("\r\n".to_owned()),
        Just("\r".to_owned()),
        Just("\n\n".to_owned()),
        Just("\u{200b}\u{200d}\u{feff}".to_owned()), // zero-width characters
        Just("\u{0}\u{7}\u{1b}[0m\u{7f}".to_owned()), // control characters
        Just("שלום עולם مرحبا".to_owned()),
        Just(" (1) [x] «y» 12.5% ".to_owned()), // mirrored and weak characters, in either direction
        Just("\u{2029}\u{85}\u{1c}\u{2028}".to_owned()), // paragraph and line separators besides \n and \r
        Just("你好，世界。".repeat(30)),
        "[ ]{0,5}",
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn plain_text_spans_reassemble_the_input(text in nasty_text()) {
        let pages = paginate(Document::Text(&text));
        prop_assert_eq!(pages.is_empty(), text.is_empty());
        let back = reassemble(&pages, &[&text]);
        prop_assert_eq!(&back[0], &text);
    }

    #[test]
    fn chat_spans_reassemble_every_turn(contents in prop::collection::vec(nasty_text(), 1..5)) {
        let turns: Vec<Turn> = contents
            .iter()
            .enumerate()
            .map(|(i, c)| Turn { role: if i % 2 == 0 { "user".into() } else { "assistant".into() }, content: c.clone(), ..Turn::default() })
            .collect();
        let pages = paginate(Document::Chat(&turns));
        let messages: Vec<&str> = contents.iter().map(String::as_str).collect();
        let back = reassemble(&pages, &messages);
        prop_assert_eq!(back, contents);
    }

    /// Shaped words are cached across documents (the shared renderer has laid out every earlier case): a warm cache
    /// must give exactly the layout a fresh renderer gives, glyph by glyph.
    #[test]
    fn the_shape_cache_never_changes_a_layout(contents in prop::collection::vec(nasty_text(), 1..4)) {
        let turns: Vec<Turn> = contents
            .iter()
            .map(|c| Turn { role: "user".into(), content: c.clone(), ..Turn::default() })
            .collect();
        let warm = paginate(Document::Chat(&turns));
        let again = paginate(Document::Chat(&turns));
        let cold = Renderer::new(LayoutConfig::default()).expect("valid").paginate(Document::Chat(&turns));
        prop_assert_eq!(&warm, &cold);
        prop_assert_eq!(&again, &cold);
    }
}

/// Found by `chat_spans_reassemble_every_turn`: a paragraph separator inside a line used to reach the shaper, which
/// panics when the line's two bidi paragraphs run in different directions.
#[test]
fn paragraph_separators_between_scripts_of_both_directions_render() {
    for sep in ["\u{2029}", "\u{85}", "\u{1c}", "\u{1d}", "\u{1e}"] {
        let content = format!("\r\nשלום עולם مرحبا{sep}Σ and more");
        let turns = [Turn {
            role: "user".into(),
            content: content.clone(),
            ..Turn::default()
        }];
        let pages = paginate(Document::Chat(&turns));
        assert_eq!(reassemble(&pages, &[&content])[0], content);
        let pages = paginate(Document::Text(&content));
        assert_eq!(reassemble(&pages, &[&content])[0], content);
    }
}

#[test]
fn empty_text_gives_no_pages_and_blank_lines_give_one() {
    assert!(paginate(Document::Text("")).is_empty());
    let pages = paginate(Document::Text("\n\n"));
    assert_eq!(pages.len(), 1);
    assert_eq!(reassemble(&pages, &["\n\n"])[0], "\n\n");
}

#[test]
fn a_long_message_continues_on_the_next_page() {
    let text = "All work and no play makes a dull agent. ".repeat(400);
    let pages = paginate(Document::Text(&text));
    assert!(pages.len() >= 3, "{} pages", pages.len());
    assert_eq!(reassemble(&pages, &[&text])[0], text);
    // Pages are full: every page but the last reaches the bottom margin within two lines.
    let cfg = LayoutConfig::default();
    for p in &pages[..pages.len() - 1] {
        let last = p.lines.last().expect("non-empty page");
        assert!(
            last.top + 2.0 * cfg.line_pitch() >= cfg.canvas - cfg.margin,
            "page {} ends early",
            p.index
        );
    }
}

#[test]
fn an_overlong_word_is_broken_not_clipped() {
    let word = "x".repeat(3000);
    let pages = paginate(Document::Text(&word));
    let cfg = LayoutConfig::default();
    let lines: Vec<_> = pages.iter().flat_map(|p| &p.lines).collect();
    assert!(lines.len() > 10);
    for l in &lines {
        for g in &l.line.glyphs {
            assert!(
                g.x + g.advance <= cfg.content_width() + 0.5,
                "glyph past the right margin"
            );
        }
    }
    let glyphs: usize = lines.iter().map(|l| l.line.glyphs.len()).sum();
    assert_eq!(glyphs, 3000, "every character is drawn");
}

#[test]
fn every_script_is_shaped_with_real_glyphs_and_inks_the_page() {
    let samples = [
        ("latin", "The quick brown fox jumps over the lazy dog."),
        ("cyrillic", "Съешь же ещё этих мягких французских булок."),
        ("greek", "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία."),
        ("cjk", "光学上下文压缩：近处清晰，远处模糊。日本語のかな。"),
        ("arabic", "نص حكيم له سر قاطع وذو شأن عظيم"),
        ("hebrew", "דג סקרן שט בים מאוכזב ולפתע מצא חברה"),
        (
            "devanagari",
            "ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले",
        ),
    ];
    RENDERER.with(|r| {
        let mut r = r.borrow_mut();
        for (name, text) in samples {
            let pages = r.paginate(Document::Text(text));
            assert_eq!(pages.len(), 1, "{name}");
            let glyphs: Vec<_> = pages[0].lines.iter().flat_map(|l| &l.line.glyphs).collect();
            assert!(!glyphs.is_empty(), "{name}");
            assert!(
                glyphs.iter().all(|g| g.glyph_id != 0),
                "{name}: .notdef glyph (no font covers it)"
            );
            let img = r.rasterize(&pages[0], Tier::Small);
            assert!(ink(&img) > 200, "{name}: only {} dark pixels", ink(&img));
        }
        // Emoji and unassigned code points have no embedded font: they fall back to .notdef without panicking.
        let pages = r.paginate(Document::Text("smile 😀 and \u{10ffff} end"));
        let img = r.rasterize(&pages[0], Tier::Tiny);
        assert!(ink(&img) > 0);
    });
}

#[test]
fn rasters_are_deterministic_golden_hashes() {
    // Golden hashes: these pixels are what the bundled model is trained on. A change here is a change of the model's input
    // distribution: update the hashes only together with a note in training/RESULTS.md.
    let text = "Near sharp, far blurry: optimem renders an agent's history into pages. 你好，世界。 مرحبا\n\tIndented line.";
    let golden = [
        (Tier::Tiny, "3c3e3e7250ffd02b"),
        (Tier::Small, "271423e6c5e3d91a"),
        (Tier::Base, "ecd1bf0b32d55726"),
        (Tier::Large, "a3f9bc5f400e0363"),
    ];
    let mut fresh = Renderer::new(LayoutConfig::default()).expect("valid");
    let pages = fresh.paginate(Document::Text(text));
    for (tier, want) in golden {
        let img = fresh.rasterize(&pages[0], tier);
        assert_eq!((img.width, img.height), (tier.pixels(), tier.pixels()));
        // A second renderer with a warm cache of other sizes gives the same bytes.
        let again = RENDERER.with(|r| {
            let mut r = r.borrow_mut();
            let p = r.paginate(Document::Text(text));
            r.rasterize(&p[0], tier)
        });
        assert_eq!(img, again, "{tier}: cache state changed the pixels");
        assert_eq!(sha(&img), want, "{tier}");
    }
}

#[test]
fn downsampling_ages_a_page_to_each_lower_tier() {
    let text = "A page that grows old. ".repeat(100);
    let (page, base) = RENDERER.with(|r| {
        let mut r = r.borrow_mut();
        let pages = r.paginate(Document::Text(&text));
        let img = r.rasterize(&pages[0], Tier::Base);
        (pages[0].clone(), img)
    });
    for tier in [Tier::Small, Tier::Tiny] {
        let aged = downsample(&base, tier).expect("down");
        assert_eq!((aged.width, aged.height), (tier.pixels(), tier.pixels()));
        // Ageing is optical blurring of the same layout: close to rendering that layout directly at the lower size.
        let direct = RENDERER.with(|r| r.borrow_mut().rasterize(&page, tier));
        let diff: f64 = aged
            .pixels
            .iter()
            .zip(&direct.pixels)
            .map(|(&a, &b)| f64::from(a.abs_diff(b)))
            .sum::<f64>()
            / aged.pixels.len() as f64;
        assert!(diff < 8.0, "{tier}: mean abs difference {diff}");
        assert!(ink(&aged) > 0);
    }
    assert!(downsample(&base, Tier::Large).is_err());
}

#[test]
fn a_first_page_can_start_lower_and_the_text_flows_on() {
    let text = "Near sharp, far blurry: the forgetting curve of an optical memory. ".repeat(120);
    let cfg = LayoutConfig::default();
    let plain = paginate(Document::Text(&text));
    let lowered = RENDERER
        .with(|r| r.borrow_mut().paginate_below(Document::Text(&text), 300.0))
        .expect("300 units leave room");
    // Same text, in the same order, nothing lost; the first page holds fewer lines and the rest flows on.
    assert_eq!(reassemble(&lowered, &[&text])[0], text);
    assert!(lowered[0].lines.len() < plain[0].lines.len());
    assert!((lowered[0].lines[0].top - (cfg.margin + 300.0)).abs() < 1e-3);
    assert!((lowered[1].lines[0].top - cfg.margin).abs() < 1e-3);
    let last = lowered[0].lines.last().expect("lines");
    assert!(last.top + last.line.height <= cfg.margin + cfg.content_height() + 1e-3);
    // Pixels: the band above the first line is blank, and the page is not.
    let img = RENDERER.with(|r| r.borrow_mut().rasterize(&lowered[0], Tier::Small));
    let band = (img.width as f32 * (cfg.margin + 300.0) / cfg.canvas) as usize - 2;
    assert!(
        img.pixels[..band * img.width as usize]
            .iter()
            .all(|&p| p == 255)
    );
    assert!(img.pixels.iter().any(|&p| p < 128));
    // No offset is the plain layout; the largest one leaves one line on the first page.
    let zero = RENDERER.with(|r| r.borrow_mut().paginate_below(Document::Text(&text), 0.0));
    assert_eq!(zero.expect("0 is valid"), plain);
    let max = RENDERER.with(|r| r.borrow().max_top());
    assert!((max - (cfg.content_height() - cfg.line_pitch())).abs() < 1e-3);
    let lowest = RENDERER
        .with(|r| r.borrow_mut().paginate_below(Document::Text(&text), max))
        .expect("max_top is valid");
    assert_eq!(lowest[0].lines.len(), 1);
    assert_eq!(reassemble(&lowest, &[&text])[0], text);
    // An offset that is negative, not a number, or leaves no room for a line is refused, naming the bound.
    for top in [
        -5.0,
        f32::NAN,
        f32::INFINITY,
        max + 1.0,
        cfg.content_height(),
    ] {
        let err = RENDERER
            .with(|r| r.borrow_mut().paginate_below(Document::Text(&text), top))
            .expect_err("refused");
        assert!(
            matches!(err, RenderError::BadTop { .. })
                && err.to_string().contains(&format!("between 0 and {max}")),
            "first_top {top}: {err}"
        );
    }
}
