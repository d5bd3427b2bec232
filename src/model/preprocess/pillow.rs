//! The Pillow operations the HF `infer()` path applies to an image: `Image.resize` with the default
//! BICUBIC filter, `ImageOps.contain` / `ImageOps.pad`, and `Image.crop` (spec §3.2).
//!
//! `resize` follows Pillow's `Resample.c` for 8-bit images: a separable filter (Keys cubic, a = −0.5)
//! whose support widens by the scale factor when downsampling (antialiasing), coefficients normalised in
//! double precision and then quantised to 22-bit fixed point, a horizontal pass followed by a vertical
//! pass, each rounding and clipping to u8. The output is therefore byte-identical to Pillow's.

use super::Image8;

/// Fractional bits of the fixed-point coefficients: `32 - 8 - 2` in Pillow.
const PRECISION_BITS: u32 = 22;

/// Pillow's `bicubic_filter` (support 2).
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point filter taps for one axis: per output pixel the first source index and tap count.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
    ksize: usize,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `[0, in_size)`.
fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    // The box edges are C floats in Pillow; (in1 - in0) is exact for image sizes.
    let scale = f64::from(in_size as f32) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = (support.ceil() as usize) * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C `(int)` truncates toward zero; negative starts are clamped to 0 right after.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let n = xmax.clamp(0, ksize as i64) as usize;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bicubic_filter((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut kk[xx * ksize..(xx + 1) * ksize];
        for (x, out) in row.iter_mut().enumerate().take(n) {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *out = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin as usize, n));
    }
    Coeffs { bounds, kk, ksize }
}

/// Pillow's `clip8`: the accumulator started at one half, so the shift rounds; then clamp to u8.
#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `Image.resize((width, height), Image.BICUBIC)` on an 8-bit image (any channel count).
pub fn resize_bicubic(img: &Image8, width: usize, height: usize) -> Image8 {
    let (in_w, in_h, c) = (img.width(), img.height(), img.channels());
    if (in_w, in_h) == (width, height) {
        return img.clone();
    }
    let horiz = precompute_coeffs(in_w, width);
    let vert = precompute_coeffs(in_h, height);
    // Rows of the source the vertical pass reads; the horizontal pass only produces those.
    let y_first = vert.bounds.first().map_or(0, |b| b.0);
    let y_last = vert.bounds.last().map_or(0, |b| b.0 + b.1);
    let src = img.data();
    let (tmp, tmp_w, row_offset) = if width != in_w {
        let rows = y_last - y_first;
        let mut tmp = vec![0u8; rows * width * c];
        for r in 0..rows {
            let in_row = &src[(r + y_first) * in_w * c..(r + y_first + 1) * in_w * c];
            let out_row = &mut tmp[r * width * c..(r + 1) * width * c];
            for xx in 0..width {
                let (xmin, n) = horiz.bounds[xx];
                let k = &horiz.kk[xx * horiz.ksize..xx * horiz.ksize + n];
                for ch in 0..c {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (x, &kx) in k.iter().enumerate() {
                        ss = ss
                            .wrapping_add(i32::from(in_row[(x + xmin) * c + ch]).wrapping_mul(kx));
                    }
                    out_row[xx * c + ch] = clip8(ss);
                }
            }
        }
        (tmp, width, y_first)
    } else {
        (src.to_vec(), in_w, 0)
    };
    if height == in_h {
        return Image8::from_parts(width, height, c, tmp);
    }
    let mut out = vec![0u8; height * width * c];
    let stride = tmp_w * c;
    for yy in 0..height {
        let (ymin, n) = vert.bounds[yy];
        let k = &vert.kk[yy * vert.ksize..yy * vert.ksize + n];
        let out_row = &mut out[yy * stride..(yy + 1) * stride];
        for (i, o) in out_row.iter_mut().enumerate() {
            let mut ss: i32 = 1 << (PRECISION_BITS - 1);
            for (y, &ky) in k.iter().enumerate() {
                let v = tmp[(y + ymin - row_offset) * stride + i];
                ss = ss.wrapping_add(i32::from(v).wrapping_mul(ky));
            }
            *o = clip8(ss);
        }
    }
    Image8::from_parts(width, height, c, out)
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
    fn coefficients_are_normalised_fixed_point() {
        for (i, o) in [(900, 640), (700, 512), (100, 1280), (1500, 1920)] {
            let co = precompute_coeffs(i, o);
            for xx in 0..o {
                let (_, n) = co.bounds[xx];
                let sum: i64 = co.kk[xx * co.ksize..xx * co.ksize + n]
                    .iter()
                    .map(|&k| i64::from(k))
                    .sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= n as i64,
                    "{i}->{o} at {xx}: {sum}"
                );
            }
        }
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
