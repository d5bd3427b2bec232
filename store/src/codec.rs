//! A small, explicit binary encoding for the store's records (page metadata, memories,
//! heads, meta values).
//!
//! Integers are big-endian and fixed width, byte strings are `u32` length-prefixed. Every
//! record starts with a one-byte format version so that a later schema can read old records.
//! Hand-written rather than derived so that the on-disk format is visible in one place and
//! cannot change by accident when a Rust type gains a field. Decoding never panics: short or
//! malformed input is `StoreError::Corrupt`.

use crate::error::{Result, StoreError};

/// Appends fields to a byte buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(version: u8) -> Self {
        Self { buf: vec![version] }
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        // Every byte string the store writes is bounded far below 4 GiB by validation
        // (strings) or by the page size limits (blobs are not encoded through here).
        let len = u32::try_from(v.len()).expect("record field shorter than 4 GiB (validated)");
        self.u32(len);
        self.buf.extend_from_slice(v);
        self
    }

    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    pub(crate) fn opt<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T)) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                f(self, v);
                self
            }
        }
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields back in the order they were written.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Starts reading a record of kind `what` (named in errors), checking its version byte.
    pub(crate) fn new(buf: &'a [u8], what: &'static str, version: u8) -> Result<Self> {
        let mut r = Self { buf, what };
        let found = r.u8()?;
        if found != version {
            return Err(StoreError::corrupt(format!(
                "{what} record has format version {found}, expected {version}"
            )));
        }
        Ok(r)
    }

    /// Starts reading a record of kind `what` written in any of `versions` (a newer build reading older records);
    /// returns the version found with the reader.
    pub(crate) fn new_versions(
        buf: &'a [u8],
        what: &'static str,
        versions: std::ops::RangeInclusive<u8>,
    ) -> Result<(Self, u8)> {
        let mut r = Self { buf, what };
        let found = r.u8()?;
        if !versions.contains(&found) {
            return Err(StoreError::corrupt(format!(
                "{what} record has format version {found}, expected {}..={}",
                versions.start(),
                versions.end()
            )));
        }
        Ok((r, found))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(StoreError::corrupt(format!(
                "{} record is truncated",
                self.what
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    pub(crate) fn string(&mut self) -> Result<String> {
        let what = self.what;
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| {
            StoreError::corrupt(format!("{what} record holds a string that is not UTF-8"))
        })
    }

    pub(crate) fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<Option<T>> {
        match self.u8()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            t => Err(StoreError::corrupt(format!(
                "{} record has option tag {t}",
                self.what
            ))),
        }
    }

    /// A bounded count, refusing lengths that could not fit in what is left (so a damaged
    /// length cannot make the decoder allocate gigabytes).
    pub(crate) fn count(&mut self, min_item_bytes: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item_bytes.max(1)) > self.buf.len() {
            return Err(StoreError::corrupt(format!(
                "{} record has an impossible count {n}",
                self.what
            )));
        }
        Ok(n)
    }

    /// Ends the record: trailing bytes mean the record is not what we think it is.
    pub(crate) fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(StoreError::corrupt(format!(
                "{} record has {} trailing bytes",
                self.what,
                self.buf.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() -> Result<()> {
        let mut w = Writer::new(3);
        w.u8(7)
            .u32(0xdead_beef)
            .u64(u64::MAX - 1)
            .str("héllo")
            .fixed(&[1, 2, 3]);
        w.opt(Some(5u32), |w, v| {
            w.u32(v);
        });
        w.opt(None::<u32>, |w, v| {
            w.u32(v);
        });
        let buf = w.finish();

        let mut r = Reader::new(&buf, "test", 3)?;
        assert_eq!(r.u8()?, 7);
        assert_eq!(r.u32()?, 0xdead_beef);
        assert_eq!(r.u64()?, u64::MAX - 1);
        assert_eq!(r.string()?, "héllo");
        assert_eq!(r.fixed::<3>()?, [1, 2, 3]);
        assert_eq!(r.opt(|r| r.u32())?, Some(5));
        assert_eq!(r.opt(|r| r.u32())?, None);
        r.finish()?;

        // Every strict prefix must fail cleanly, never panic.
        for cut in 0..buf.len() {
            let res = (|| -> Result<()> {
                let mut r = Reader::new(&buf[..cut], "test", 3)?;
                r.u8()?;
                r.u32()?;
                r.u64()?;
                r.string()?;
                r.fixed::<3>()?;
                r.opt(|r| r.u32())?;
                r.opt(|r| r.u32())?;
                r.finish()
            })();
            assert!(
                matches!(res, Err(StoreError::Corrupt(_))),
                "prefix {cut} decoded"
            );
        }
        assert!(matches!(
            Reader::new(&buf, "test", 4),
            Err(StoreError::Corrupt(_))
        ));
        Ok(())
    }
}
