//! Decoding PNG and JPEG bytes into an [`Image8`], as `Image.open(..)` + `ImageOps.exif_transpose` +
//! `.convert("RGB")` do in HF `infer()` (spec §3.2).
//!
//! PNG decoding is lossless, so pixels equal Pillow's; grayscale PNGs (the renderer's pages) stay one
//! channel and are expanded to RGB later, which gives the same bytes as converting first. Alpha is
//! dropped without compositing, as Pillow's RGBA→RGB conversion does. 16-bit samples keep their high
//! byte. JPEG is decoded by `zune-jpeg`, whose IDCT may differ from libjpeg's by a few levels, so JPEG
//! inputs are close to, not bit-identical with, the Python reference.

use super::Image8;
use crate::model::error::{ModelError, Result};

fn bad(reason: impl Into<String>) -> ModelError {
    ModelError::Image {
        reason: reason.into(),
    }
}

/// Decodes PNG or JPEG bytes (detected by signature) and applies the EXIF orientation, if any.
pub fn decode(bytes: &[u8]) -> Result<Image8> {
    let (img, exif) = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes)?
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg(bytes)?
    } else {
        return Err(bad("unknown format (only PNG and JPEG are supported)"));
    };
    let orientation = exif.as_deref().and_then(exif_orientation).unwrap_or(1);
    Ok(apply_orientation(&img, orientation))
}

fn decode_png(bytes: &[u8]) -> Result<(Image8, Option<Vec<u8>>)> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| bad(format!("PNG: {e}")))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad("PNG: image too large for memory"))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(format!("PNG: {e}")))?;
    buf.truncate(info.buffer_size());
    let exif = reader.info().exif_metadata.as_ref().map(|e| e.to_vec());
    let (w, h) = (info.width as usize, info.height as usize);
    let px = w * h;
    let img = match info.color_type {
        png::ColorType::Grayscale => Image8::new(w, h, 1, buf)?,
        png::ColorType::GrayscaleAlpha => Image8::new(
            w,
            h,
            1,
            buf.chunks_exact(2).map(|p| p[0]).take(px).collect(),
        )?,
        png::ColorType::Rgb => Image8::new(w, h, 3, buf)?,
        png::ColorType::Rgba => Image8::new(
            w,
            h,
            3,
            buf.chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        )?,
        png::ColorType::Indexed => return Err(bad("PNG: palette was not expanded")),
    };
    Ok((img, exif))
}

fn decode_jpeg(bytes: &[u8]) -> Result<(Image8, Option<Vec<u8>>)> {
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };
    let opts = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
    let data = dec.decode().map_err(|e| bad(format!("JPEG: {e:?}")))?;
    let info = dec.info().ok_or_else(|| bad("JPEG: no header"))?;
    let exif = dec.exif().cloned();
    let img = Image8::new(usize::from(info.width), usize::from(info.height), 3, data)?;
    Ok((img, exif))
}

/// Reads tag 0x0112 (Orientation) from IFD0 of a TIFF-structured EXIF block.
fn exif_orientation(tiff: &[u8]) -> Option<u16> {
    let le = match tiff.get(0..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b = [*tiff.get(o)?, *tiff.get(o + 1)?];
        Some(if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b = [
            *tiff.get(o)?,
            *tiff.get(o + 1)?,
            *tiff.get(o + 2)?,
            *tiff.get(o + 3)?,
        ];
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let ifd = u32_at(4)? as usize;
    let entries = u16_at(ifd)? as usize;
    (0..entries).find_map(|i| {
        let e = ifd + 2 + 12 * i;
        (u16_at(e)? == 0x0112).then(|| u16_at(e + 8)).flatten()
    })
}

/// `ImageOps.exif_transpose` for orientations 2–8 (1 and unknown values leave the image as is).
fn apply_orientation(img: &Image8, orientation: u16) -> Image8 {
    let (w, h, c) = (img.width(), img.height(), img.channels());
    let swap = matches!(orientation, 5..=8);
    let (ow, oh) = if swap { (h, w) } else { (w, h) };
    // Source coordinates of output pixel (x, y).
    let src = |x: usize, y: usize| -> (usize, usize) {
        match orientation {
            2 => (w - 1 - x, y),
            3 => (w - 1 - x, h - 1 - y),
            4 => (x, h - 1 - y),
            5 => (y, x),
            6 => (y, h - 1 - x),
            7 => (w - 1 - y, h - 1 - x),
            8 => (w - 1 - y, x),
            _ => (x, y),
        }
    };
    if !(2..=8).contains(&orientation) {
        return img.clone();
    }
    let mut out = Vec::with_capacity(ow * oh * c);
    for y in 0..oh {
        for x in 0..ow {
            let (sx, sy) = src(x, y);
            let s = (sy * w + sx) * c;
            out.extend_from_slice(&img.data()[s..s + c]);
        }
    }
    Image8::from_parts(ow, oh, c, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(w: u32, h: u32, color: png::ColorType, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, w, h);
            enc.set_color(color);
            enc.set_depth(png::BitDepth::Eight);
            let mut wr = enc.write_header().expect("in-memory PNG header");
            wr.write_image_data(data).expect("in-memory PNG data");
        }
        out
    }

    #[test]
    fn png_gray_and_rgba_decode() -> Result<()> {
        let g = decode(&png_bytes(
            3,
            2,
            png::ColorType::Grayscale,
            &[1, 2, 3, 4, 5, 6],
        ))?;
        assert_eq!((g.width(), g.height(), g.channels()), (3, 2, 1));
        assert_eq!(g.data(), &[1, 2, 3, 4, 5, 6]);
        let rgba = decode(&png_bytes(
            1,
            2,
            png::ColorType::Rgba,
            &[1, 2, 3, 9, 4, 5, 6, 0],
        ))?;
        assert_eq!(rgba.data(), &[1, 2, 3, 4, 5, 6]);
        assert!(decode(b"GIF89a").is_err());
        Ok(())
    }

    #[test]
    fn orientation_rotations() {
        // 2x1 image [a b]: orientation 6 (rotate 90° clockwise) gives a 1x2 column [a; b].
        let img = Image8::from_parts(2, 1, 1, vec![10, 20]);
        let r = apply_orientation(&img, 6);
        assert_eq!(
            (r.width(), r.height(), r.data().to_vec()),
            (1, 2, vec![10, 20])
        );
        let r = apply_orientation(&img, 8);
        assert_eq!(
            (r.width(), r.height(), r.data().to_vec()),
            (1, 2, vec![20, 10])
        );
        let tiff = [
            b'I', b'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0,
        ];
        assert_eq!(exif_orientation(&tiff), Some(6));
    }
}
