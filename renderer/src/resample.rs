//! Pillow-compatible antialiased resampling of 8-bit planes, and the "far blurry" ageing step.
//!
//! The arithmetic follows Pillow's `Resample.c` (8-bit path): coefficients computed in f64 over a support widened by the
//! downscale factor, normalised, rounded to 22-bit fixed point, a horizontal pass to an 8-bit intermediate, then a vertical
//! pass, each clipped to 0..=255. Matching Pillow matters because DeepSeek-OCR's preprocessing resizes with Pillow's BICUBIC
//! (spec §3.2): pages aged here look like pages the official pipeline would have shrunk.

use crate::image::GrayImage;
use crate::tier::Tier;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// A separable reconstruction filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Keys cubic with a = −0.5, support 2 (Pillow `BICUBIC`).
    Bicubic,
    /// Triangle, support 1 (Pillow `BILINEAR`).
    Bilinear,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Bilinear => (1.0 - x).max(0.0),
        }
    }
}

/// Per output sample: the first input index, and fixed-point weights for consecutive inputs.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts truncate toward zero; both ends are clamped to the image.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..n {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let f = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 {
                (f - 0.5) as i32
            } else {
                (f + 0.5) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        bounds,
        ksize,
        weights,
    }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes one 8-bit plane (`width` × `height`, row-major) to `out_w` × `out_h`, exactly as Pillow's `Image.resize` does for an
/// `L` image.
pub fn resize_plane(
    src: &[u8],
    width: usize,
    height: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u8> {
    resize_interleaved(src, width, height, 1, out_w, out_h, filter)
}

/// Resizes an 8-bit image of `channels` interleaved bands (1 for `L`, 3 for `RGB`), exactly as Pillow's `Image.resize` does:
/// every band goes through the same fixed-point passes.
pub fn resize_interleaved(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u8> {
    let c = channels;
    debug_assert_eq!(src.len(), width * height * c);
    let horizontal = out_w != width;
    let vertical = out_h != height;
    let cv = coeffs(height, out_h, filter);
    let (mut plane, mut row0) = (src.to_vec(), 0usize);
    let mut pw = width;
    if horizontal {
        let ch = coeffs(width, out_w, filter);
        // Only the rows the vertical pass will read are resampled, as Pillow does.
        let (first, last) = if vertical {
            let (f, _) = cv.bounds[0];
            let (l, n) = cv.bounds[out_h - 1];
            (f, l + n)
        } else {
            (0, height)
        };
        let mut tmp = vec![0u8; out_w * c * (last - first)];
        for y in first..last {
            let row = &src[y * width * c..][..width * c];
            let out_row = &mut tmp[(y - first) * out_w * c..][..out_w * c];
            for (xx, &(xmin, n)) in ch.bounds.iter().enumerate() {
                let k = &ch.weights[xx * ch.ksize..][..n];
                for band in 0..c {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (x, &w) in k.iter().enumerate() {
                        ss += i64::from(row[(xmin + x) * c + band]) * i64::from(w);
                    }
                    out_row[xx * c + band] = clip8(ss);
                }
            }
        }
        (plane, pw, row0) = (tmp, out_w, first);
    }
    if !vertical {
        return plane;
    }
    let stride = pw * c;
    let mut out = vec![0u8; stride * out_h];
    for (yy, &(ymin, n)) in cv.bounds.iter().enumerate() {
        let k = &cv.weights[yy * cv.ksize..][..n];
        let out_row = &mut out[yy * stride..][..stride];
        for (i, o) in out_row.iter_mut().enumerate() {
            let mut ss: i64 = 1 << (PRECISION_BITS - 1);
            for (y, &w) in k.iter().enumerate() {
                ss += i64::from(plane[(ymin - row0 + y) * stride + i]) * i64::from(w);
            }
            *o = clip8(ss);
        }
    }
    out
}

/// Resizes a grayscale image with `filter`.
pub fn resize(img: &GrayImage, out_w: u32, out_h: u32, filter: Filter) -> GrayImage {
    let pixels = resize_plane(
        &img.pixels,
        img.width as usize,
        img.height as usize,
        out_w as usize,
        out_h as usize,
        filter,
    );
    GrayImage {
        width: out_w,
        height: out_h,
        pixels,
    }
}

/// Moves a page raster down to a lower tier: the same layout, optically blurred by antialiased bicubic downsampling
/// (the forgetting step of "near sharp, far blurry"). Pages never move up: a larger target is an error.
pub fn downsample(page: &GrayImage, tier: Tier) -> Result<GrayImage, crate::RenderError> {
    let px = tier.pixels();
    if px > page.width || px > page.height {
        return Err(crate::RenderError::Upsample {
            from: page.width,
            to: px,
        });
    }
    Ok(resize(page, px, px, Filter::Bicubic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_are_normalised_fixed_point() {
        for (i, o) in [(900, 640), (700, 512), (100, 1280), (1500, 1920)] {
            let co = coeffs(i, o, Filter::Bicubic);
            for (xx, &(_, n)) in co.bounds.iter().enumerate() {
                let sum: i64 = co.weights[xx * co.ksize..][..n]
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
    fn interleaved_bands_resize_like_separate_planes() {
        let (w, h) = (23, 17);
        let rgb: Vec<u8> = (0..w * h * 3)
            .map(|i| ((i * 37 + (i * i) % 251) % 256) as u8)
            .collect();
        let out = resize_interleaved(&rgb, w, h, 3, 9, 30, Filter::Bicubic);
        for band in 0..3 {
            let plane: Vec<u8> = rgb.iter().skip(band).step_by(3).copied().collect();
            let want = resize_plane(&plane, w, h, 9, 30, Filter::Bicubic);
            let got: Vec<u8> = out.iter().skip(band).step_by(3).copied().collect();
            assert_eq!(got, want, "band {band}");
        }
    }

    #[test]
    fn identity_size_is_a_copy() {
        let img = GrayImage {
            width: 3,
            height: 2,
            pixels: vec![0, 50, 100, 150, 200, 250],
        };
        assert_eq!(resize(&img, 3, 2, Filter::Bicubic), img);
    }

    #[test]
    fn flat_planes_stay_flat() {
        let img = GrayImage {
            width: 40,
            height: 30,
            pixels: vec![77; 1200],
        };
        for (w, h) in [(13, 7), (64, 50), (40, 11)] {
            let out = resize(&img, w, h, Filter::Bicubic);
            assert!(out.pixels.iter().all(|&p| p == 77), "{w}x{h}");
        }
    }

    #[test]
    fn halving_averages_pairs() {
        // Bilinear at scale 2 has support 2: each output is a weighted mean of four inputs (1/8, 3/8, 3/8, 1/8).
        let img = GrayImage {
            width: 4,
            height: 1,
            pixels: vec![0, 0, 255, 255],
        };
        let out = resize(&img, 2, 1, Filter::Bilinear);
        // Left output: inputs 0,1,2 with weights (3,3,1)/7 at the edge → 255/7 ≈ 36.
        assert_eq!(out.pixels, vec![36, 219]);
    }

    #[test]
    fn matches_pillow_bicubic() {
        // Equivalent Python (Pillow 13):
        //   data = bytes(((i*37 + (i*i) % 251) % 256) for i in range(37*23))
        //   out = Image.frombytes('L', (37, 23), data).resize((w, h), Image.BICUBIC).tobytes()
        //   print(w, h, sum(out), list(out[:6]))
        let data: Vec<u8> = (0..37 * 23)
            .map(|i: usize| ((i * 37 + (i * i) % 251) % 256) as u8)
            .collect();
        let img = GrayImage {
            width: 37,
            height: 23,
            pixels: data,
        };
        let expected: [(u32, u32, u64, [u8; 6]); 5] = [
            (16, 9, 18176, [91, 130, 92, 100, 103, 114]),
            (50, 30, 189718, [0, 16, 50, 77, 116, 147]),
            (37, 11, 51489, [108, 47, 152, 94, 161, 109]),
            (20, 23, 58114, [18, 88, 178, 63, 91, 171]),
            (5, 3, 1901, [112, 130, 120, 119, 115, 120]),
        ];
        for (w, h, sum, head) in expected {
            let out = resize(&img, w, h, Filter::Bicubic);
            assert_eq!(
                out.pixels.iter().map(|&p| u64::from(p)).sum::<u64>(),
                sum,
                "{w}x{h}"
            );
            assert_eq!(out.pixels[..6], head, "{w}x{h}");
        }
    }

    #[test]
    fn downsample_refuses_to_move_up() {
        let img = GrayImage::blank(640, 640);
        assert!(downsample(&img, Tier::Base).is_err());
        let out = downsample(&img, Tier::Tiny).expect("640 → 512");
        assert_eq!((out.width, out.height), (512, 512));
    }
}
