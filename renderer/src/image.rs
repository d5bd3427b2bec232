//! An 8-bit grayscale raster and its PNG encoding.

/// 8-bit grayscale pixels, row-major, 0 = black ink, 255 = white paper.
#[derive(Clone, PartialEq, Eq)]
pub struct GrayImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl std::fmt::Debug for GrayImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GrayImage({}x{})", self.width, self.height)
    }
}

impl GrayImage {
    /// A white page.
    pub fn blank(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            pixels: vec![255; width as usize * height as usize],
        }
    }

    /// Encodes as an 8-bit grayscale PNG.
    pub fn to_png(&self) -> Result<Vec<u8>, crate::RenderError> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width, self.height);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Fast);
            let mut w = enc
                .write_header()
                .map_err(|e| crate::RenderError::Png(e.to_string()))?;
            w.write_image_data(&self.pixels)
                .map_err(|e| crate::RenderError::Png(e.to_string()))?;
        }
        Ok(out)
    }

    /// Decodes an 8-bit grayscale PNG (as written by [`GrayImage::to_png`]); other formats are an error.
    pub fn from_png(bytes: &[u8]) -> Result<Self, crate::RenderError> {
        let bad = |e: String| crate::RenderError::Png(e);
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = dec.read_info().map_err(|e| bad(e.to_string()))?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| bad("image too large".into()))?;
        let mut buf = vec![0; size];
        let info = reader
            .next_frame(&mut buf)
            .map_err(|e| bad(e.to_string()))?;
        if info.color_type != png::ColorType::Grayscale || info.bit_depth != png::BitDepth::Eight {
            return Err(bad(format!(
                "expected 8-bit grayscale, got {:?} {:?}",
                info.color_type, info.bit_depth
            )));
        }
        buf.truncate(info.buffer_size());
        Ok(Self {
            width: info.width,
            height: info.height,
            pixels: buf,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip() {
        let mut img = GrayImage::blank(7, 3);
        img.pixels[5] = 0;
        img.pixels[20] = 128;
        let back = GrayImage::from_png(&img.to_png().expect("encode")).expect("decode");
        assert_eq!(back, img);
        assert!(GrayImage::from_png(b"not a png").is_err());
    }
}
