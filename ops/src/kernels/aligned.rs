//! 64-byte aligned buffers (one cache line, one zmm register, one AMX tile row).
//!
//! A 64-byte load from an address that is not a multiple of 64 touches two cache lines:
//! measured on the AMX kernel (Intel, 2 vCPUs), tile loads from 16-byte aligned buffers ran at
//! about a quarter of the speed of the same loads from aligned ones. `Vec` only guarantees the
//! element type's alignment, so [`AVec`] over-allocates by one line and starts its elements at
//! the first aligned address inside (safe code: an offset, no custom allocator).

/// Alignment in bytes.
pub const ALIGN: usize = 64;

/// A growable buffer of `T` whose first element sits at a 64-byte aligned address.
pub struct AVec<T> {
    buf: Vec<T>,
    off: usize,
    len: usize,
}

impl<T: Copy + Default> AVec<T> {
    /// An empty buffer.
    pub fn new() -> Self {
        AVec {
            buf: Vec::new(),
            off: 0,
            len: 0,
        }
    }

    /// `len` copies of `v`.
    pub fn filled(len: usize, v: T) -> Self {
        let mut a = AVec::new();
        a.resize(len, v);
        a
    }

    /// Sets the length to `len`; elements past the old length take `v`. Existing elements
    /// keep their values (they move if the storage has to grow).
    pub fn resize(&mut self, len: usize, v: T) {
        let extra = ALIGN / std::mem::size_of::<T>().max(1);
        if len + extra > self.buf.len() {
            let old = self.as_slice().to_vec();
            let mut buf = vec![T::default(); (len + extra).max(2 * self.buf.len())];
            let off = aligned_offset(&buf);
            buf[off..off + old.len()].copy_from_slice(&old);
            self.buf = buf;
            self.off = off;
        }
        let old = self.len;
        self.len = len;
        if len > old {
            self.as_mut_slice()[old..].fill(v);
        }
    }

    /// The elements.
    pub fn as_slice(&self) -> &[T] {
        &self.buf[self.off..self.off + self.len]
    }

    /// The elements, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.buf[self.off..self.off + self.len]
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Copy + Default> Default for AVec<T> {
    fn default() -> Self {
        AVec::new()
    }
}

impl<T: Copy + Default> Clone for AVec<T> {
    fn clone(&self) -> Self {
        let mut a = AVec::new();
        a.resize(self.len, T::default());
        a.as_mut_slice().copy_from_slice(self.as_slice());
        a
    }
}

impl<T: Copy + Default + PartialEq> PartialEq for AVec<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Copy + Default + std::fmt::Debug> std::fmt::Debug for AVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AVec(len {})", self.len)
    }
}

impl<T: Copy + Default> std::ops::Deref for AVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Copy + Default> std::ops::DerefMut for AVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

/// The index of the first element of `buf` at a 64-byte aligned address (`buf` must hold
/// at least one line's worth of elements past it).
pub fn aligned_offset<T>(buf: &[T]) -> usize {
    let size = std::mem::size_of::<T>().max(1);
    let misalign = buf.as_ptr() as usize % ALIGN;
    ((ALIGN - misalign) % ALIGN) / size
}

/// A zeroed `Vec<u8>` of `len + 63` bytes and the offset of its first 64-byte aligned byte,
/// for outputs that later become tensors (see `int8::qu8_from_aligned`).
pub fn aligned_bytes(len: usize) -> (Vec<u8>, usize) {
    let v = vec![0u8; len + ALIGN - 1];
    let off = aligned_offset(&v);
    (v, off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_aligned_and_keeps_values() {
        let mut a: AVec<i32> = AVec::new();
        for n in [0usize, 1, 15, 16, 17, 100, 1000, 5] {
            let old: Vec<i32> = a.to_vec();
            a.resize(n, 7);
            assert_eq!(a.as_ptr() as usize % ALIGN, 0, "len {n}");
            assert_eq!(a.len(), n);
            let keep = old.len().min(n);
            assert_eq!(&a[..keep], &old[..keep]);
            assert!(a[keep..].iter().all(|&v| v == 7));
        }
        let b = a.clone();
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert_eq!(a, b);
        let (v, off) = aligned_bytes(10);
        assert_eq!(v[off..].as_ptr() as usize % ALIGN, 0);
        assert!(v.len() - off >= 10);
    }
}
