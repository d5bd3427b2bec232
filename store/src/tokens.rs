//! Vision tokens as the store sees them: an opaque typed array (shape, dtype, bytes).
//!
//! The store does not know what a vision token means; it keeps them compactly and gives
//! them back bit for bit. Two encodings: `F16` (default, half the bytes of f32, ~3 decimal
//! digits) and `Int8RowScale` (a quarter of f32: one f32 scale per row, then one i8 per
//! value, symmetric rounding, so each value is off by at most `max|row| / 254`). Tensor
//! bytes are little-endian, like safetensors and numpy, so they can be handed to a model
//! without reordering.

use half::f16;

use crate::error::{Result, StoreError};

/// Most dimensions a token array may have (e.g. `[views, rows, width]`).
pub const MAX_TOKEN_DIMS: usize = 4;

/// How the values of a token array are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenDtype {
    /// IEEE half precision, little-endian: 2 bytes per value.
    F16,
    /// One little-endian f32 scale per row (the last dimension is the row), then one i8 per
    /// value; value ≈ q × scale. 1 byte per value plus 4 bytes per row.
    Int8RowScale,
}

impl TokenDtype {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::F16 => 0,
            Self::Int8RowScale => 1,
        }
    }

    pub(crate) fn from_code(code: u8) -> Result<Self> {
        match code {
            0 => Ok(Self::F16),
            1 => Ok(Self::Int8RowScale),
            c => Err(StoreError::corrupt(format!("unknown token dtype code {c}"))),
        }
    }

    /// Bytes needed for `rows` rows of `width` values.
    pub fn byte_len(self, rows: usize, width: usize) -> usize {
        match self {
            Self::F16 => rows * width * 2,
            Self::Int8RowScale => rows * 4 + rows * width,
        }
    }
}

/// A vision-token array: shape (last dimension = the hidden width), dtype and raw bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionTokens {
    dtype: TokenDtype,
    shape: Vec<u32>,
    data: Vec<u8>,
}

impl VisionTokens {
    /// Wraps already-encoded bytes, checking that their length matches shape and dtype.
    pub fn from_raw(dtype: TokenDtype, shape: Vec<u32>, data: Vec<u8>) -> Result<Self> {
        let (rows, width) = rows_and_width(&shape)?;
        let want = dtype.byte_len(rows, width);
        if data.len() != want {
            return Err(StoreError::invalid(format!(
                "token bytes: {} given, {want} needed for shape {shape:?} as {dtype:?}",
                data.len()
            )));
        }
        Ok(Self { dtype, shape, data })
    }

    /// Encodes f32 values (row-major, `shape` as given) into `dtype`. Refuses non-finite
    /// values, and for F16 values beyond its range (±65504), instead of storing infinities.
    pub fn from_f32(values: &[f32], shape: Vec<u32>, dtype: TokenDtype) -> Result<Self> {
        let (rows, width) = rows_and_width(&shape)?;
        if values.len() != rows * width {
            return Err(StoreError::invalid(format!(
                "{} token values given, shape {shape:?} holds {}",
                values.len(),
                rows * width
            )));
        }
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(StoreError::invalid(format!(
                "token value {bad} is not finite"
            )));
        }
        let data = match dtype {
            TokenDtype::F16 => f32_to_f16_bytes(values)?,
            TokenDtype::Int8RowScale => quantize_int8_rows(values, width),
        };
        Ok(Self { dtype, shape, data })
    }

    /// Decodes the values back to f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            TokenDtype::F16 => f16_bytes_to_f32(&self.data),
            TokenDtype::Int8RowScale => dequantize_int8_rows(&self.data, self.width()),
        }
    }

    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }

    pub fn shape(&self) -> &[u32] {
        &self.shape
    }

    /// The encoded bytes, as stored.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Number of token vectors (product of all dimensions but the last).
    pub fn rows(&self) -> usize {
        self.shape[..self.shape.len() - 1]
            .iter()
            .map(|&d| d as usize)
            .product()
    }

    /// Width of one token vector (the last dimension).
    pub fn width(&self) -> usize {
        *self
            .shape
            .last()
            .expect("shape has at least one dimension (checked on construction)") as usize
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.data
    }
}

fn rows_and_width(shape: &[u32]) -> Result<(usize, usize)> {
    if shape.is_empty() || shape.len() > MAX_TOKEN_DIMS {
        return Err(StoreError::invalid(format!(
            "token shape {shape:?} must have 1..={MAX_TOKEN_DIMS} dimensions"
        )));
    }
    if shape.contains(&0) {
        return Err(StoreError::invalid(format!(
            "token shape {shape:?} has a zero dimension"
        )));
    }
    let width = shape[shape.len() - 1] as usize;
    let rows = shape[..shape.len() - 1]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
        .filter(|rows| {
            rows.checked_mul(width)
                .is_some_and(|n| n <= u32::MAX as usize)
        })
        .ok_or_else(|| StoreError::invalid(format!("token shape {shape:?} is too large")))?;
    Ok((rows, width))
}

/// f32 → little-endian f16 bytes; refuses values that f16 cannot hold.
pub fn f32_to_f16_bytes(values: &[f32]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * 2);
    for &v in values {
        let h = f16::from_f32(v);
        if !h.is_finite() {
            return Err(StoreError::invalid(format!(
                "token value {v} is beyond the f16 range"
            )));
        }
        out.extend_from_slice(&h.to_le_bytes());
    }
    Ok(out)
}

/// Little-endian f16 bytes → f32.
pub fn f16_bytes_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

/// Symmetric per-row int8 quantisation: `[rows × f32 LE scale][rows × width i8]`.
/// The scale is `max|row| / 127` (0 for an all-zero row), so |x − q·scale| ≤ scale / 2.
pub fn quantize_int8_rows(values: &[f32], width: usize) -> Vec<u8> {
    let rows = values.len() / width.max(1);
    let mut scales = Vec::with_capacity(rows * 4);
    let mut quants = Vec::with_capacity(values.len());
    for row in values.chunks_exact(width) {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        scales.extend_from_slice(&scale.to_le_bytes());
        for &v in row {
            let q = if scale > 0.0 {
                (v / scale).round().clamp(-127.0, 127.0) as i8
            } else {
                0
            };
            quants.push(q.to_le_bytes()[0]);
        }
    }
    scales.extend_from_slice(&quants);
    scales
}

/// Inverse of [`quantize_int8_rows`].
pub fn dequantize_int8_rows(bytes: &[u8], width: usize) -> Vec<f32> {
    let rows = bytes.len() / (4 + width);
    let (scales, quants) = bytes.split_at(rows * 4);
    let mut out = Vec::with_capacity(rows * width);
    for (s, row) in scales.chunks_exact(4).zip(quants.chunks_exact(width)) {
        let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        out.extend(
            row.iter()
                .map(|&q| f32::from(i8::from_le_bytes([q])) * scale),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values with a wide spread of magnitudes per row.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let unit = (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                unit * (1.0 + (i % 7) as f32 * 3.0)
            })
            .collect()
    }

    #[test]
    fn int8_error_is_within_half_a_step_per_row() -> Result<()> {
        let (rows, width) = (73usize, 1280usize);
        let v = values(rows * width, 42);
        let t = VisionTokens::from_f32(
            &v,
            vec![rows as u32, width as u32],
            TokenDtype::Int8RowScale,
        )?;
        assert_eq!(t.bytes().len(), rows * 4 + rows * width);
        let back = t.to_f32();
        for (row_in, row_out) in v.chunks(width).zip(back.chunks(width)) {
            let max = row_in.iter().fold(0f32, |m, x| m.max(x.abs()));
            let bound = max / 254.0 * (1.0 + 1e-5);
            for (a, b) in row_in.iter().zip(row_out) {
                assert!((a - b).abs() <= bound, "|{a} - {b}| > {bound}");
            }
        }
        Ok(())
    }

    #[test]
    fn int8_zero_row_and_extremes() -> Result<()> {
        let v = [0.0, 0.0, 0.0, -5.0, 5.0, 0.0];
        let t = VisionTokens::from_f32(&v, vec![2, 3], TokenDtype::Int8RowScale)?;
        assert_eq!(t.to_f32(), vec![0.0, 0.0, 0.0, -5.0, 5.0, 0.0]);
        Ok(())
    }

    #[test]
    fn f16_round_trip_is_within_half_ulp() -> Result<()> {
        let v = values(4 * 64, 7);
        let t = VisionTokens::from_f32(&v, vec![2, 2, 64], TokenDtype::F16)?;
        assert_eq!(t.rows(), 4);
        assert_eq!(t.width(), 64);
        assert_eq!(t.bytes().len(), v.len() * 2);
        for (a, b) in v.iter().zip(t.to_f32()) {
            // f16 has an 11-bit significand: relative error ≤ 2^-11 for normal values.
            assert!(
                (a - b).abs() <= a.abs() * 2f32.powi(-11) + 1e-7,
                "{a} vs {b}"
            );
        }
        let raw = VisionTokens::from_raw(TokenDtype::F16, vec![2, 2, 64], t.bytes().to_vec())?;
        assert_eq!(raw, t);
        Ok(())
    }

    #[test]
    fn bad_arrays_are_refused() {
        let inv = |r: Result<VisionTokens>| matches!(r, Err(StoreError::InvalidInput(_)));
        assert!(inv(VisionTokens::from_f32(
            &[1.0; 6],
            vec![4, 2],
            TokenDtype::F16
        )));
        assert!(inv(VisionTokens::from_f32(
            &[f32::NAN; 2],
            vec![2],
            TokenDtype::F16
        )));
        assert!(inv(VisionTokens::from_f32(
            &[1e6; 2],
            vec![2],
            TokenDtype::F16
        )));
        assert!(inv(VisionTokens::from_f32(&[], vec![], TokenDtype::F16)));
        assert!(inv(VisionTokens::from_f32(
            &[],
            vec![0, 4],
            TokenDtype::F16
        )));
        assert!(inv(VisionTokens::from_raw(
            TokenDtype::Int8RowScale,
            vec![2, 3],
            vec![0; 6]
        )));
        assert!(inv(VisionTokens::from_raw(
            TokenDtype::F16,
            vec![u32::MAX, u32::MAX],
            vec![]
        )));
    }
}
