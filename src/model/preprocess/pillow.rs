//! The Pillow operations the HF `infer()` path applies to an image: `Image.resize` with the default
//! BICUBIC filter, `ImageOps.contain` / `ImageOps.pad`, and `Image.crop` (spec §3.2).
//!
//! `resize` follows Pillow's `Resample.c` for 8-bit images: a separable filter (Keys cubic, a = −0.5)
//! whose support widens by the scale factor when downsampling (antialiasing), coefficients normalised in
//! double precision and then quantised to 22-bit fixed point, a horizontal pass followed by a vertical
//! pass, each rounding and clipping to u8. The output is therefore byte-identical to Pillow's.

use optimem_renderer::resample::{Filter, resize_interleaved};

use super::Image8;

/// `Image.resize((width, height), Image.BICUBIC)` on an 8-bit image (any channel count). The arithmetic is the renderer's
/// Pillow-exact resampler, shared so that pages aged by the renderer and images shrunk here are resized identically.
pub fn resize_bicubic(img: &Image8, width: usize, height: usize) -> Image8 {
    let (in_w, in_h, c) = (img.width(), img.height(), img.channels());
    if (in_w, in_h) == (width, height) {
        return img.clone();
    }
    let data = resize_interleaved(img.data(), in_w, in_h, c, width, height, Filter::Bicubic);
    Image8::from_parts(width, height, c, data)
}

/// Python's `round()` for the non-negative sizes used here (ties to even).
fn py_round(x: f64) -> usize {
    x.round_ties_even().max(0.0) as usize
}

/// `ImageOps.contain(image, (size, size))`: scale up or down so the longer side is `size`.
pub fn contain(img: &Image8, size: usize) -> Image8 {
    let (w, h) = (img.width(), img.height());
    let im_ratio = w as f64 / h as f64;
    let (mut tw, mut th) = (size, size);
    if im_ratio != 1.0 {
        if im_ratio > 1.0 {
            th = py_round(h as f64 / w as f64 * size as f64);
        } else {
            tw = py_round(w as f64 / h as f64 * size as f64);
        }
    }
    if tw == 0 || th == 0 {
        return Image8::from_parts(tw, th, img.channels(), Vec::new());
    }
    resize_bicubic(img, tw, th)
}

/// `ImageOps.pad(image, (size, size), color=fill)`: contain, then centre on a `fill` canvas.
pub fn pad(img: &Image8, size: usize, fill: u8) -> Image8 {
    let resized = contain(img, size);
    if (resized.width(), resized.height()) == (size, size) {
        return resized;
    }
    let c = img.channels();
    let mut out = vec![fill; size * size * c];
    let (x0, y0) = if resized.width() != size {
        (py_round((size - resized.width()) as f64 * 0.5), 0)
    } else {
        (0, py_round((size - resized.height()) as f64 * 0.5))
    };
    let row_len = resized.width() * c;
    for y in 0..resized.height() {
        let dst = ((y + y0) * size + x0) * c;
        out[dst..dst + row_len].copy_from_slice(&resized.data()[y * row_len..(y + 1) * row_len]);
    }
    Image8::from_parts(size, size, c, out)
}

/// `Image.crop((x, y, x + width, y + height))` for a box inside the image.
pub fn crop(img: &Image8, x: usize, y: usize, width: usize, height: usize) -> Image8 {
    let c = img.channels();
    let mut out = Vec::with_capacity(width * height * c);
    for row in y..y + height {
        let start = (row * img.width() + x) * c;
        out.extend_from_slice(&img.data()[start..start + width * c]);
    }
    Image8::from_parts(width, height, c, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize, c: usize) -> Image8 {
        let data = (0..w * h * c).map(|i| ((i * 37) % 256) as u8).collect();
        Image8::from_parts(w, h, c, data)
    }

    #[test]
    fn constant_images_stay_constant() {
        let img = Image8::from_parts(37, 23, 3, vec![200; 37 * 23 * 3]);
        let r = resize_bicubic(&img, 64, 11);
        assert!(r.data().iter().all(|&v| v == 200));
    }

    #[test]
    fn pad_centres_with_round_half_even() {
        // 30x10 → contain 16x5 (round(10/30*16)=round(5.33)=5), offset round(11*0.5)=round(5.5)=6.
        let img = Image8::from_parts(30, 10, 1, vec![255; 300]);
        let p = pad(&img, 16, 127);
        assert_eq!((p.width(), p.height()), (16, 16));
        let col: Vec<u8> = (0..16).map(|y| p.data()[y * 16 + 3]).collect();
        assert_eq!(col.iter().position(|&v| v == 255), Some(6));
        assert_eq!(col.iter().filter(|&&v| v == 255).count(), 5);
    }

    #[test]
    fn crop_takes_the_box() {
        let img = gradient(8, 6, 3);
        let c = crop(&img, 2, 1, 3, 4);
        assert_eq!((c.width(), c.height()), (3, 4));
        assert_eq!(&c.data()[..3], &img.data()[(8 + 2) * 3..(8 + 2) * 3 + 3]);
    }
}
