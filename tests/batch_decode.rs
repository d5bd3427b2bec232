//! Batched decoding: several pages' vision tokens generated together through one KV cache give each page the text it
//! gets alone, and the engine batches the decodes of one page size that wait in its queue.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use optimem::engine::Engine;
use optimem::model::OcrModel;
use optimem::model::generate::Control;

/// Vision tokens of a made-up page: `rows` × `cols` values from a seeded generator (the decoder does not care where
/// its embeddings came from, and random ones make the sequences differ).
fn tokens(seed: u64, rows: usize, cols: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..rows * cols)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

#[test]
fn a_batch_generates_for_each_page_what_it_generates_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    common::fixture_model_dir(tmp.path());
    let model = OcrModel::load(tmp.path(), &Device::Cpu, DType::F32).expect("model");
    let (rows, cols) = (111, model.text.hidden_size);
    // Rows stop at different steps (the one of budget 1 right after the prompt): each leaves the batch when it stops.
    let caps = [5, 12, 9, 1];
    let embeds: Vec<Tensor> = (0..caps.len() as u64)
        .map(|i| Tensor::from_vec(tokens(i + 1, rows, cols), (rows, cols), &Device::Cpu))
        .collect::<Result<_, _>>()
        .expect("tensors");
    let opts: Vec<_> = caps.iter().map(|&c| model.ocr_options(c)).collect();
    let alone: Vec<_> = embeds
        .iter()
        .zip(&opts)
        .map(|(e, o)| {
            model
                .decode(e, optimem::model::FREE_OCR_PROMPT, o, |_| Control::Continue)
                .expect("decode alone")
        })
        .collect();
    let mut streamed = vec![String::new(); caps.len()];
    let together = model
        .decode_batch(
            &embeds,
            optimem::model::FREE_OCR_PROMPT,
            &opts,
            |i, piece| {
                streamed[i].push_str(piece);
                Control::Continue
            },
        )
        .expect("decode batch");
    assert_eq!(together, alone);
    for (i, (text, generation)) in together.iter().enumerate() {
        assert_eq!(&streamed[i], text, "row {i} streamed");
        assert!(generation.tokens.len() <= caps[i]);
    }
    // The rows differ, so the comparison above is not of one sequence with itself.
    assert_ne!(together[0].1.tokens, together[1].1.tokens);
    // Pages of different sizes cannot share a batch.
    let other = Tensor::zeros((rows - 1, cols), DType::F32, &Device::Cpu).expect("zeros");
    let mixed = [embeds[0].clone(), other];
    assert!(
        model
            .decode_batch(
                &mixed,
                optimem::model::FREE_OCR_PROMPT,
                &opts[..2],
                |_, _| Control::Continue
            )
            .is_err()
    );
}

/// The text `engine` decodes, at most 8 tokens, for the made-up page `seed` of `rows` × `cols` tokens.
fn decode(engine: &Engine, seed: u64, rows: usize, cols: usize) -> String {
    engine
        .decode(
            tokens(seed, rows, cols),
            rows,
            cols,
            8,
            Arc::new(AtomicBool::new(false)),
            |_| Control::Continue,
        )
        .expect("decode")
        .text
}

#[test]
fn queued_decodes_of_one_page_size_run_as_one_batch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(common::server::engine_in(tmp.path(), "model", 8));
    let (rows, cols) = (111, engine.hidden_size());
    // One at a time first: what each page decodes to alone.
    let alone: Vec<_> = (1..=3).map(|s| decode(&engine, s, rows, cols)).collect();
    let before = engine.stats();
    assert_eq!(before.decode_batches, 0);

    // Then all at once, behind a paused worker, with one page of another size among them.
    let pause = engine.pause().expect("pause");
    let handles: Vec<_> = [(1, rows), (2, rows), (3, rows), (4, rows - 1)]
        .into_iter()
        .map(|(seed, r)| {
            let e = engine.clone();
            std::thread::spawn(move || decode(&e, seed, r, cols))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.queued() < 4 {
        assert!(Instant::now() < deadline, "the decodes never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(pause);
    let texts: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    assert_eq!(&texts[..3], &alone[..]);
    let run = engine.stats().since(&before);
    assert_eq!(
        (run.decode_batches, run.batched_decodes, run.decodes_started),
        (1, 3, 4),
        "{run:?}"
    );
}
