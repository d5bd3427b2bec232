//! A preallocated key/value cache for incremental decoding.
//!
//! Each layer owns two tensors `[B, kv_heads, capacity, head_dim]` allocated once, at the full
//! capacity (the request's context cap, at most `max_position_embeddings`). A step writes its keys
//! and values in place with `slice_set` and attention reads the filled prefix through `narrow`, so
//! no step concatenates or reallocates: memory is known up front (spec §4.4: 61,440 B per token in
//! bf16 at official sizes) and a request that would overflow fails before any work.

use candle_core::{DType, Device, Tensor};

use crate::model::ModelError;
use crate::model::decoder::TextConfig;

/// Keys and values of every layer for one batch of sequences.
#[derive(Debug)]
pub struct KvCache {
    /// `(k, v)` per layer, each `[B, kv_heads, capacity, head_dim]`.
    layers: Vec<(Tensor, Tensor)>,
    /// Positions already written (the same for every layer between forwards).
    len: usize,
    capacity: usize,
    batch: usize,
}

impl KvCache {
    /// Allocates a cache for `batch` sequences of up to `capacity` positions.
    pub fn new(
        cfg: &TextConfig,
        batch: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        if capacity > cfg.max_position_embeddings {
            return Err(ModelError::Input {
                reason: format!(
                    "KV-cache capacity {capacity} exceeds max_position_embeddings {}",
                    cfg.max_position_embeddings
                ),
            });
        }
        let shape = (batch, cfg.num_key_value_heads, capacity, cfg.head_dim());
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, dtype, device)?,
                    Tensor::zeros(shape, dtype, device)?,
                ))
            })
            .collect::<Result<Vec<_>, candle_core::Error>>()?;
        Ok(Self {
            layers,
            len: 0,
            capacity,
            batch,
        })
    }

    /// Positions already cached: the position of the next token fed.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Forgets every cached position; the buffers are kept for the next request.
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Bytes held by the buffers (all layers, keys and values, at full capacity).
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    /// Bytes one cached position costs across all layers and the batch.
    pub fn bytes_per_position(&self) -> usize {
        self.allocated_bytes() / self.capacity.max(1)
    }

    /// Fails unless `extra` more positions fit.
    pub(crate) fn check_room(&self, extra: usize) -> Result<(), ModelError> {
        if self.len + extra > self.capacity {
            return Err(ModelError::ContextFull {
                requested: self.len + extra,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// Writes `k`, `v` (`[B, kv_heads, T, head_dim]`) of `layer` at the current end and returns the
    /// filled prefix `[B, kv_heads, len + T, head_dim]`. The length advances in [`Self::advance`],
    /// once every layer has written.
    pub(crate) fn write(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let t = k.dim(2)?;
        self.check_room(t)?;
        let (kc, vc) = self.layers.get(layer).ok_or_else(|| ModelError::Input {
            reason: format!("KV cache has no layer {layer}"),
        })?;
        kc.slice_set(&k.contiguous()?, 2, self.len)?;
        vc.slice_set(&v.contiguous()?, 2, self.len)?;
        Ok((
            kc.narrow(2, 0, self.len + t)?,
            vc.narrow(2, 0, self.len + t)?,
        ))
    }

    /// Keeps only the sequences at `rows` (indices into the batch, in the order given) and drops the others, so a
    /// batch whose rows finish at different steps stops spending compute on the finished ones. Copies the kept rows
    /// once (the whole capacity); the capacity is unchanged.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<(), ModelError> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.batch) {
            return Err(ModelError::Input {
                reason: format!("KV cache has no row {bad} (batch {})", self.batch),
            });
        }
        if rows.len() == self.batch && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        let Some((k0, _)) = self.layers.first() else {
            self.batch = rows.len();
            return Ok(());
        };
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let ids = Tensor::new(ids.as_slice(), k0.device())?;
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| Ok((k.index_select(&ids, 0)?, v.index_select(&ids, 0)?)))
            .collect::<Result<Vec<_>, candle_core::Error>>()?;
        self.layers = layers;
        self.batch = rows.len();
        Ok(())
    }

    /// Marks `t` more positions as filled.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
