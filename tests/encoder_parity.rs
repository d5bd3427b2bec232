//! Parity of the vision half against the PyTorch reference (tools/reference, fixtures in tests/fixtures).
//!
//! Every stage is compared: the position-table resizes (`interp.safetensors`), Pillow preprocessing
//! (exact u8 equality, `preprocess.safetensors`), and for the random-weight `ocr-small` model each SAM
//! stage, CLIP, the fused features, the projector and the final 2-D layout, in Tiny, Small, Base and
//! Gundam mode. Floating stages must agree within 1e-4 (max |Δ|).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use optimem::model::deepencoder::fuse;
use optimem::model::interp::{resize_nhwc_bicubic_aa, resize_rows_linear};
use optimem::model::preprocess::{self, pixels};
use optimem::model::{DeepEncoder, Image8, Mode, VisionConfig, config};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(path: &Path) -> Result<HashMap<String, Tensor>, Box<dyn std::error::Error>> {
    Ok(candle_core::safetensors::load(path, &Device::Cpu)?)
}

fn get<'a>(map: &'a HashMap<String, Tensor>, name: &str) -> Result<&'a Tensor, String> {
    map.get(name)
        .ok_or_else(|| format!("fixture lacks `{name}`"))
}

/// Max |a − b| after checking shapes agree.
fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32, Box<dyn std::error::Error>> {
    if a.dims() != b.dims() {
        return Err(format!("shape {:?} vs fixture {:?}", a.dims(), b.dims()).into());
    }
    let d = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?;
    Ok(d.to_scalar::<f32>()?)
}

fn assert_close(name: &str, ours: &Tensor, want: &Tensor) -> TestResult {
    let d = max_diff(ours, want).map_err(|e| format!("{name}: {e}"))?;
    eprintln!("{name}: max |Δ| = {d:e}"); // shown with --nocapture
    assert!(d <= TOL, "{name}: max |Δ| = {d:e} > {TOL:e}");
    Ok(())
}

/// An HWC u8 fixture tensor as an [`Image8`].
fn image(t: &Tensor) -> Result<Image8, Box<dyn std::error::Error>> {
    let (h, w, c) = t.dims3()?;
    Ok(Image8::new(w, h, c, t.flatten_all()?.to_vec1::<u8>()?)?)
}

fn assert_same_image(name: &str, ours: &Image8, want: &Tensor) -> TestResult {
    let want = image(want)?;
    assert_eq!(
        (ours.width(), ours.height(), ours.channels()),
        (want.width(), want.height(), want.channels()),
        "{name}: size"
    );
    let diff = ours
        .data()
        .iter()
        .zip(want.data())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(diff, 0, "{name}: {diff} bytes differ from Pillow");
    Ok(())
}

#[test]
fn interp_matches_torch() -> TestResult {
    let f = load(&fixtures().join("interp.safetensors"))?;
    let sam_in = get(&f, "sam_pos_in")?;
    for g in [32, 40, 80] {
        let ours = resize_nhwc_bicubic_aa(sam_in, g, g)?;
        assert_close(
            &format!("sam_pos_{g}"),
            &ours,
            get(&f, &format!("sam_pos_{g}"))?,
        )?;
    }
    let clip_in = get(&f, "clip_pos_in")?;
    let d = clip_in.dim(1)?;
    for g in [8, 10, 20] {
        let grid = clip_in.narrow(0, 1, 256)?.reshape((1, 16, 16, d))?;
        let resized = resize_nhwc_bicubic_aa(&grid, g, g)?.reshape((g * g, d))?;
        let ours = Tensor::cat(&[&clip_in.narrow(0, 0, 1)?, &resized], 0)?;
        assert_close(
            &format!("clip_pos_{g}"),
            &ours,
            get(&f, &format!("clip_pos_{g}"))?,
        )?;
    }
    let rel_in = get(&f, "rel_pos_in")?;
    for l in [63, 79, 159] {
        let ours = resize_rows_linear(rel_in, l)?;
        assert_close(
            &format!("rel_pos_{l}"),
            &ours,
            get(&f, &format!("rel_pos_{l}"))?,
        )?;
    }
    Ok(())
}

#[test]
fn preprocess_matches_pillow() -> TestResult {
    let f = load(&fixtures().join("preprocess.safetensors"))?;
    let a = image(get(&f, "image_a")?)?;
    let tiny = preprocess::prepare(&a, Mode::Tiny)?;
    assert_same_image(
        "image_a_view_512",
        &tiny.global_view,
        get(&f, "image_a_view_512")?,
    )?;
    for size in [640, 1024, 1280] {
        if let Some(t) = f.get(&format!("image_a_view_{size}")) {
            let mode = [Mode::Small, Mode::Base, Mode::Large]
                .into_iter()
                .find(|m| m.image_size() == size)
                .ok_or("no mode")?;
            assert_same_image(
                &format!("image_a_view_{size}"),
                &preprocess::prepare(&a, mode)?.global_view,
                t,
            )?;
        }
    }
    let b = image(get(&f, "image_b")?)?;
    let gundam = preprocess::prepare(&b, Mode::Gundam)?;
    assert_same_image(
        "image_b_global_1024",
        &gundam.global_view,
        get(&f, "image_b_global_1024")?,
    )?;
    let grid = get(&f, "image_b_grid")?.to_vec1::<i64>()?;
    let g = gundam.grid.ok_or("no Gundam grid for image_b")?;
    assert_eq!(vec![g.cols as i64, g.rows as i64], grid, "image_b_grid");
    let tiles = get(&f, "image_b_tiles")?;
    assert_eq!(gundam.tiles.len(), tiles.dim(0)?, "tile count");
    for (i, tile) in gundam.tiles.iter().enumerate() {
        assert_same_image(&format!("image_b_tiles[{i}]"), tile, &tiles.get(i)?)?;
    }
    // Base mode pads exactly like Gundam's global view.
    let base = preprocess::prepare(&b, Mode::Base)?;
    assert_same_image(
        "image_b Base view",
        &base.global_view,
        get(&f, "image_b_global_1024")?,
    )?;
    Ok(())
}

fn encoder() -> Result<DeepEncoder, Box<dyn std::error::Error>> {
    let dir = fixtures().join("ocr-small");
    let cfg = VisionConfig::from_config_json(&config::read_config_json(&dir)?)?;
    let vb = config::load_safetensors_mmap(&dir, DType::F32, &Device::Cpu)?;
    Ok(DeepEncoder::new(&cfg, vb)?)
}

/// Pixels `[B,3,S,S]` from the u8 HWC source named in the file's metadata (e.g. `preprocess.safetensors:image_a_view_512`).
fn input_pixels(source: &Tensor) -> Result<Tensor, Box<dyn std::error::Error>> {
    let views = if source.rank() == 3 {
        vec![image(source)?]
    } else {
        (0..source.dim(0)?)
            .map(|i| image(&source.get(i)?))
            .collect::<Result<_, _>>()?
    };
    Ok(pixels(&views, DType::F32, &Device::Cpu)?)
}

/// Checks one view's stages (keys under `prefix`) for pixels `px`; returns the projected tokens.
fn check_view(
    enc: &DeepEncoder,
    f: &HashMap<String, Tensor>,
    prefix: &str,
    px: &Tensor,
) -> Result<Tensor, Box<dyn std::error::Error>> {
    let key = |k: &str| format!("{prefix}{k}");
    let st = enc.sam_model().forward_stages(px)?;
    if let Some(want) = f.get(&key("sam_patch_embed")) {
        assert_close(&key("sam_patch_embed"), &st.patch_embed, want)?;
    }
    for (i, blk) in st.blocks.iter().enumerate() {
        if let Some(want) = f.get(&key(&format!("sam_block_{i}"))) {
            assert_close(&key(&format!("sam_block_{i}")), blk, want)?;
        }
    }
    assert_close(&key("sam_neck"), &st.neck, get(f, &key("sam_neck"))?)?;
    assert_close(&key("sam_net_2"), &st.net_2, get(f, &key("sam_net_2"))?)?;
    assert_close(&key("sam_out"), &st.net_3, get(f, &key("sam_out"))?)?;
    let clip = enc.vision_model().forward(&st.net_3)?;
    assert_close(&key("clip_out"), &clip, get(f, &key("clip_out"))?)?;
    let features = fuse(&clip, &st.net_3)?;
    assert_close(&key("features"), &features, get(f, &key("features"))?)?;
    let projected = enc.project(&features)?;
    assert_close(
        &key("projector_out"),
        &projected,
        get(f, &key("projector_out"))?,
    )?;
    Ok(projected)
}

/// Encodes the prepared `image` end to end and compares the layout sequence.
fn check_sequence(
    enc: &DeepEncoder,
    f: &HashMap<String, Tensor>,
    image: &Image8,
    mode: Mode,
) -> TestResult {
    let prepared = preprocess::prepare(image, mode)?;
    let seq = enc.encode(&prepared)?;
    assert_eq!(
        seq.dim(0)?,
        enc.layout(&prepared).num_tokens(),
        "{mode}: sequence length = placeholder count"
    );
    assert_close(&format!("{mode} sequence"), &seq, get(f, "sequence")?)
}

#[test]
fn encoder_tiny_matches_reference() -> TestResult {
    let enc = encoder()?;
    let pre = load(&fixtures().join("preprocess.safetensors"))?;
    let f = load(&fixtures().join("ocr-small/encoder_tiny.safetensors"))?;
    let view = get(&pre, "image_a_view_512")?;
    check_view(&enc, &f, "", &input_pixels(view)?)?;
    assert!(
        f.contains_key("sam_block_3"),
        "tiny fixture keeps every SAM block"
    );
    check_sequence(&enc, &f, &image(get(&pre, "image_a")?)?, Mode::Tiny)
}

#[test]
fn encoder_small_matches_reference() -> TestResult {
    let enc = encoder()?;
    let pre = load(&fixtures().join("preprocess.safetensors"))?;
    let f = load(&fixtures().join("ocr-small/encoder_small.safetensors"))?;
    let tile = get(&pre, "image_b_tiles")?.get(0)?;
    check_view(&enc, &f, "", &input_pixels(&tile)?)?;
    // A 640×640 image is its own Small view (stretch to 640 and pad are no-ops).
    check_sequence(&enc, &f, &image(&tile)?, Mode::Small)
}

#[test]
fn encoder_base_matches_reference() -> TestResult {
    let enc = encoder()?;
    let pre = load(&fixtures().join("preprocess.safetensors"))?;
    let f = load(&fixtures().join("ocr-small/encoder_base.safetensors"))?;
    check_view(
        &enc,
        &f,
        "",
        &input_pixels(get(&pre, "image_b_global_1024")?)?,
    )?;
    check_sequence(&enc, &f, &image(get(&pre, "image_b")?)?, Mode::Base)
}

#[test]
fn encoder_gundam_matches_reference() -> TestResult {
    let enc = encoder()?;
    let pre = load(&fixtures().join("preprocess.safetensors"))?;
    let f = load(&fixtures().join("ocr-small/encoder_gundam.safetensors"))?;
    let global = check_view(
        &enc,
        &f,
        "global.",
        &input_pixels(get(&pre, "image_b_global_1024")?)?,
    )?;
    let local = check_view(
        &enc,
        &f,
        "local.",
        &input_pixels(get(&pre, "image_b_tiles")?)?,
    )?;
    let image_b = image(get(&pre, "image_b")?)?;
    let prepared = preprocess::prepare(&image_b, Mode::Gundam)?;
    let g = prepared.grid.ok_or("no grid")?;
    assert_eq!(
        vec![g.cols as i64, g.rows as i64],
        get(&f, "grid")?.to_vec1::<i64>()?,
        "grid"
    );
    let seq = enc.assemble(&enc.layout(&prepared), &global, Some(&local))?;
    assert_close("gundam assembled sequence", &seq, get(&f, "sequence")?)?;
    check_sequence(&enc, &f, &image_b, Mode::Gundam)
}

/// Loads the ocr-small weights into a map that a test can edit before building the encoder.
fn edited_encoder(
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
) -> Result<DeepEncoder, optimem::model::ModelError> {
    let dir = fixtures().join("ocr-small");
    let cfg = VisionConfig::from_config_json(&config::read_config_json(&dir)?)?;
    let mut map = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
    edit(&mut map);
    DeepEncoder::new(
        &cfg,
        candle_nn::VarBuilder::from_tensors(map, DType::F32, &Device::Cpu),
    )
}

#[test]
fn loading_names_missing_and_misshaped_tensors() -> TestResult {
    let missing = "model.sam_model.blocks.1.attn.rel_pos_h";
    match edited_encoder(|m| {
        m.remove(missing);
    }) {
        Err(optimem::model::ModelError::MissingTensor { name }) => assert_eq!(name, missing),
        other => panic!("expected MissingTensor, got {:?}", other.err()),
    }
    let bad = "model.projector.layers.weight";
    let err = edited_encoder(|m| {
        if let Some(t) = m.get(bad).and_then(|t| t.t().ok()) {
            m.insert(bad.to_string(), t);
        }
    });
    match err {
        Err(e @ optimem::model::ModelError::TensorShape { .. }) => {
            assert!(e.to_string().contains(bad), "{e}");
        }
        other => panic!("expected TensorShape, got {:?}", other.err()),
    }
    // CLIP's own patch embedding is unused: the checkpoint may have it or not.
    edited_encoder(|m| {
        m.remove("model.vision_model.embeddings.patch_embedding.weight");
    })?;
    Ok(())
}
