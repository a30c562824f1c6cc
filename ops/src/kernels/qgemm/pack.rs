//! Weight packing of the int8 GEMM: [`PackedQWeights`] in the layouts of [`QLayout`].

use super::NR;
use crate::kernels::aligned::AVec;
use crate::kernels::isa::Isa;
use crate::{OpError, OpResult};

/// Two i16 values in one i32 lane, `lo` in the low half (the `vpmaddwd` operand layout).
#[inline]
pub(super) fn pair(lo: i32, hi: i32) -> i32 {
    (u32::from(lo as u16) | (u32::from(hi as u16) << 16)) as i32
}

/// The two i16 values of a [`pair`].
#[inline]
pub(super) fn unpair(v: i32) -> (i32, i32) {
    (i32::from(v as i16), v >> 16)
}

/// How packed weights store K (chosen by [`PackedQWeights::pack`], or forced with
/// [`PackedQWeights::pack_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QLayout {
    /// i16 pairs of consecutive k for `vpmaddwd` (any zero point).
    Pairs,
    /// i8 quads of consecutive k for `vpmaddubsw` (centred weights in [−128, 127]), split
    /// into a saturation-free main part and exact sparse outliers.
    Quads,
    /// s8 quads of consecutive k for `vpdpbusd` (u8 × s8, four products summed into i32,
    /// never saturating), K padded to a multiple of 4. Each channel stores `w − s` with
    /// `s = z_w` when every centred weight fits i8 (symmetric weights: no correction), else
    /// `s = 128`, and the difference is corrected exactly in the output stage with the row
    /// sums of A: `Σ x·(w − z_w) = Σ x·(w − s) + (s − z_w)·Σ x`.
    Vnni,
    /// [`QLayout::Vnni`] with K padded to a multiple of 64, so that 16 quads of a panel form
    /// one 16 × 64-byte AMX tile (`tdpbusd` B operand); the VNNI kernels read it too.
    Tiles,
}

impl QLayout {
    /// The layout [`PackedQWeights::pack`] gives at instruction-set level `isa` for K = `k`
    /// (before the outlier check of the quad layout).
    pub fn for_isa(isa: Isa, k: usize) -> QLayout {
        match isa {
            Isa::Amx => QLayout::Tiles,
            Isa::Avx512Vnni | Isa::AvxVnni => QLayout::Vnni,
            _ if k >= QUAD_MIN_K => QLayout::Quads,
            _ => QLayout::Pairs,
        }
    }

    /// True for the `vpdpbusd` layouts ([`QLayout::Vnni`], [`QLayout::Tiles`]).
    pub fn is_vnni(self) -> bool {
        matches!(self, QLayout::Vnni | QLayout::Tiles)
    }
}

/// One weight moved out of the `vpmaddubsw` main part: `acc[·, lane] += x[·, k] · delta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outlier {
    pub(super) k: u32,
    pub(super) lane: u32,
    pub(super) delta: i32,
    /// `delta` as the low half of an i16 pair (high half 0), the `vpmaddwd` operand.
    pub(super) dpair: i32,
}

impl Outlier {
    pub(super) fn new(k: usize, lane: usize, delta: i32) -> Self {
        Outlier {
            k: k as u32,
            lane: lane as u32,
            delta,
            dpair: delta & 0xffff,
        }
    }
}

/// The outliers of one weight panel: lane `l`'s are `list[starts[l]..starts[l + 1]]`.
#[derive(Clone, Copy)]
pub(super) struct OutlierPanel<'a> {
    pub(super) list: &'a [Outlier],
    /// `NR + 1` non-decreasing offsets into `list`.
    pub(super) starts: &'a [usize],
}

impl<'a> OutlierPanel<'a> {
    /// All the panel's outliers, lane by lane.
    pub(super) fn all(&self) -> &'a [Outlier] {
        &self.list[self.starts[0]..self.starts[NR]]
    }

    /// Lane `l`'s outliers.
    pub(super) fn lane(&self, l: usize) -> &'a [Outlier] {
        &self.list[self.starts[l]..self.starts[l + 1]]
    }

    /// A panel from a plain list (sorted by lane), for tests.
    #[cfg(test)]
    pub(super) fn from_sorted(list: &'a [Outlier], starts: &'a mut Vec<usize>) -> Self {
        starts.clear();
        starts.extend((0..=NR).map(|l| list.partition_point(|o| (o.lane as usize) < l)));
        OutlierPanel { list, starts }
    }
}

/// Weights `[N, K]` centred by their zero points and packed for the GEMM: panels of [`NR`]
/// channels, within a panel `[k unit][channel]` (zero padded), where a unit is an i16 pair
/// ([`QLayout::Pairs`]) or an i8 quad ([`QLayout::Quads`], with the number of quads even),
/// plus the per-channel sums `Σ_k (w − z_w)` for the zero-point correction.
#[derive(Clone, PartialEq)]
pub struct PackedQWeights {
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) layout: QLayout,
    /// K units per panel row (pairs, or an even number of quads).
    pub(super) kunits: usize,
    /// 64-byte aligned (AMX tile rows and zmm loads never straddle cache lines).
    pub(super) data: AVec<i32>,
    pub(super) col_sums: Vec<i32>,
    /// Quads only: weights kept out of the main part, grouped by panel.
    pub(super) outliers: Vec<Outlier>,
    /// Quads only: `outliers[lane_outliers[c]..lane_outliers[c + 1]]` belong to channel `c`
    /// (`panels · NR + 1` offsets, padding channels included, so a panel's outliers come
    /// lane by lane).
    pub(super) lane_outliers: Vec<usize>,
    /// VNNI layouts: per channel `s − z_w` (see [`QLayout::Vnni`]), padded to whole panels.
    pub(super) corr: Vec<i32>,
    /// VNNI layouts: some `corr` is not 0, so the output stage needs the row sums of A.
    pub(super) needs_rowsum: bool,
}

impl std::fmt::Debug for PackedQWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedQWeights {{ n: {}, k: {}, layout: {:?}, outliers: {} }}",
            self.n,
            self.k,
            self.layout,
            self.outliers.len()
        )
    }
}

/// Shortest K [`PackedQWeights::pack`] gives the quad layout: below it each quad tile (4 rows)
/// does too little work per output stage, and the 6-row pair tiles are faster even without
/// outliers (measured on ResNet-50's and SqueezeNet's K = 16–64 convolutions: pairs 0–20%
/// faster; whole SqueezeNet int8 ~4% faster at batch 1).
pub(super) const QUAD_MIN_K: usize = 128;

/// Largest sum of same-sign centred weights allowed in one i16 lane of the quad kernel:
/// `255 · 128 = 32640` fits i16 both ways.
const LANE_BUDGET: i32 = 128;

impl PackedQWeights {
    /// Packs `codes` (`[n, k]` row-major uint8) with one zero point per row (in [0, 255])
    /// for the kernels of [`Isa::current`] (see [`pack_for`](Self::pack_for)).
    pub fn pack(codes: &[u8], n: usize, k: usize, zero_points: &[i32]) -> OpResult<Self> {
        Self::pack_for(Isa::current(), codes, n, k, zero_points)
    }

    /// Packs for level `isa`: [`QLayout::Tiles`] for AMX, [`QLayout::Vnni`] for the VNNI
    /// levels; below them [`QLayout::Quads`] when K is at least 128, every centred weight
    /// fits i8 and few outliers are needed, else [`QLayout::Pairs`].
    pub fn pack_for(
        isa: Isa,
        codes: &[u8],
        n: usize,
        k: usize,
        zero_points: &[i32],
    ) -> OpResult<Self> {
        check_weights(codes, n, k, zero_points)?;
        let layout = QLayout::for_isa(isa, k);
        if layout.is_vnni() {
            return Ok(Self::pack_vnni(codes, n, k, zero_points, layout));
        }
        if layout == QLayout::Quads && fits_i8(codes, n, k, zero_points) {
            let q = Self::pack_quads(codes, n, k, zero_points);
            // An outlier costs ~15x a main-part multiply-add per row; the quad kernel runs
            // ~25-40 % faster than pairs, so give up beyond 1/64 (~1.6 %) outliers.
            if q.outliers.len() * 64 <= n * k {
                return Ok(q);
            }
        }
        Ok(Self::pack_pairs(codes, n, k, zero_points))
    }

    /// Packs like [`pack`](Self::pack) with the given layout; [`QLayout::Quads`] fails when
    /// a centred weight does not fit i8.
    pub fn pack_with(
        codes: &[u8],
        n: usize,
        k: usize,
        zero_points: &[i32],
        layout: QLayout,
    ) -> OpResult<Self> {
        check_weights(codes, n, k, zero_points)?;
        match layout {
            QLayout::Pairs => Ok(Self::pack_pairs(codes, n, k, zero_points)),
            QLayout::Quads if fits_i8(codes, n, k, zero_points) => {
                Ok(Self::pack_quads(codes, n, k, zero_points))
            }
            QLayout::Quads => Err(OpError::DType(
                "int8 GEMM weights: centred weights do not fit i8 for the quad layout".into(),
            )),
            QLayout::Vnni | QLayout::Tiles => Ok(Self::pack_vnni(codes, n, k, zero_points, layout)),
        }
    }

    /// The `vpdpbusd` layouts: per panel `[quad][NR]` i32 words, each the four s8 weights
    /// `w − s` of one channel (`s` per [`QLayout::Vnni`]), K padded with zero weights.
    pub(super) fn pack_vnni(
        codes: &[u8],
        n: usize,
        k: usize,
        zero_points: &[i32],
        layout: QLayout,
    ) -> Self {
        let align = if layout == QLayout::Tiles { 16 } else { 1 };
        let kq = k.div_ceil(4).next_multiple_of(align).max(align);
        let panels = n.div_ceil(NR);
        let mut data = AVec::filled(panels * kq * NR, 0i32);
        let mut col_sums = vec![0i32; n];
        let mut corr = vec![0i32; panels * NR];
        for (c, &z) in zero_points.iter().enumerate() {
            let row = &codes[c * k..(c + 1) * k];
            let fits = row
                .iter()
                .all(|&v| (-128..=127).contains(&(i32::from(v) - z)));
            let s = if fits { z } else { 128 };
            corr[c] = s - z;
            col_sums[c] = row
                .iter()
                .fold(0i32, |acc, &v| acc.wrapping_add(i32::from(v) - z));
            let base = (c / NR) * kq * NR + c % NR;
            for (q, four) in row.chunks(4).enumerate() {
                let mut b = [0u8; 4];
                for (d, &v) in b.iter_mut().zip(four) {
                    *d = (i32::from(v) - s) as i8 as u8;
                }
                data[base + q * NR] = i32::from_le_bytes(b);
            }
        }
        let needs_rowsum = corr.iter().any(|&c| c != 0);
        PackedQWeights {
            n,
            k,
            layout,
            kunits: kq,
            data,
            col_sums,
            outliers: Vec::new(),
            lane_outliers: vec![0; panels * NR + 1],
            corr,
            needs_rowsum,
        }
    }

    pub(super) fn pack_pairs(codes: &[u8], n: usize, k: usize, zero_points: &[i32]) -> Self {
        let kpairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = AVec::filled(panels * kpairs * NR, 0i32);
        let mut col_sums = vec![0i32; n];
        for (c, (&z, sum)) in zero_points.iter().zip(&mut col_sums).enumerate() {
            let row = &codes[c * k..(c + 1) * k];
            let base = (c / NR) * kpairs * NR + c % NR;
            let mut s = 0i32;
            for (p, two) in row.chunks(2).enumerate() {
                let lo = i32::from(two[0]) - z;
                let hi = two.get(1).map_or(0, |&v| i32::from(v) - z);
                data[base + p * NR] = pair(lo, hi);
                s = s.wrapping_add(lo + hi);
            }
            *sum = s;
        }
        PackedQWeights {
            n,
            k,
            layout: QLayout::Pairs,
            kunits: kpairs,
            data,
            col_sums,
            outliers: Vec::new(),
            lane_outliers: vec![0; panels * NR + 1],
            corr: Vec::new(),
            needs_rowsum: false,
        }
    }

    /// The quad layout. The kernel adds the two i16 sums of quads `2j` and `2j + 1` lane by
    /// lane, so one i16 lane collects k = 8j + {0, 1, 4, 5} or 8j + {2, 3, 6, 7}; in each
    /// such set the positive weights and the negative weights must each sum to at most
    /// [`LANE_BUDGET`] in magnitude. Weights of largest magnitude are moved to the outlier
    /// list (main part 0) until the set complies.
    pub(super) fn pack_quads(codes: &[u8], n: usize, k: usize, zero_points: &[i32]) -> Self {
        let kquads = k.div_ceil(8) * 2;
        let panels = n.div_ceil(NR);
        let mut data = AVec::filled(panels * kquads * NR, 0i32);
        let mut col_sums = vec![0i32; n];
        let mut outliers = Vec::new();
        let mut lane_outliers = vec![0usize; panels * NR + 1];
        let mut main = vec![0i32; kquads * 4];
        for (c, (&z, sum)) in zero_points.iter().zip(&mut col_sums).enumerate() {
            let row = &codes[c * k..(c + 1) * k];
            main.fill(0);
            let mut s = 0i32;
            for (m, &v) in main.iter_mut().zip(row) {
                *m = i32::from(v) - z;
                s = s.wrapping_add(*m);
            }
            *sum = s;
            for oct in 0..kquads / 2 {
                for set in [[0usize, 1, 4, 5], [2, 3, 6, 7]] {
                    let idx = set.map(|j| 8 * oct + j);
                    loop {
                        let pos: i32 = idx.iter().map(|&i| main[i].max(0)).sum();
                        let neg: i32 = idx.iter().map(|&i| (-main[i]).max(0)).sum();
                        let sign = if pos > LANE_BUDGET {
                            1
                        } else if neg > LANE_BUDGET {
                            -1
                        } else {
                            break;
                        };
                        // The largest weight of the offending sign becomes an outlier.
                        let mut best = idx[0];
                        for &i in &idx {
                            if main[i] * sign > main[best] * sign {
                                best = i;
                            }
                        }
                        outliers.push(Outlier::new(best, c % NR, main[best]));
                        main[best] = 0;
                    }
                }
            }
            let base = (c / NR) * kquads * NR + c % NR;
            for (q, four) in main.chunks_exact(4).enumerate() {
                let b: [u8; 4] = std::array::from_fn(|j| four[j] as i8 as u8);
                data[base + q * NR] = i32::from_le_bytes(b);
            }
            lane_outliers[c + 1] = outliers.len();
        }
        // Padding channels of the last panel have none.
        let total = outliers.len();
        lane_outliers[n + 1..].fill(total);
        PackedQWeights {
            n,
            k,
            layout: QLayout::Quads,
            kunits: kquads,
            data,
            col_sums,
            outliers,
            lane_outliers,
            corr: Vec::new(),
            needs_rowsum: false,
        }
    }

    /// Output channels (N).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length (K).
    pub fn k(&self) -> usize {
        self.k
    }

    /// True when the VNNI/tile kernels add a row-sum correction (some channel's centred
    /// weights do not fit i8, see [`QLayout::Vnni`]).
    pub fn needs_rowsum(&self) -> bool {
        self.needs_rowsum
    }

    /// The layout the weights were packed in.
    pub fn layout(&self) -> QLayout {
        self.layout
    }

    /// Number of weights handled as exact outliers (always 0 for [`QLayout::Pairs`]).
    pub fn outlier_count(&self) -> usize {
        self.outliers.len()
    }

    /// `Σ_k (w[n, k] − z_w[n])` for every channel (wrapping i32).
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }

    /// Units `pc..pc+kc` of the panel holding channel `col` (`col % NR == 0`).
    pub(super) fn block(&self, col: usize, pc: usize, kc: usize) -> &[i32] {
        let s = ((col / NR) * self.kunits + pc) * NR;
        &self.data[s..s + kc * NR]
    }

    /// The outliers of the panel holding channel `col`.
    pub(super) fn panel_outliers(&self, col: usize) -> OutlierPanel<'_> {
        let p = col / NR;
        OutlierPanel {
            list: &self.outliers,
            starts: &self.lane_outliers[p * NR..=(p + 1) * NR],
        }
    }
}

/// Checks the sizes and zero points of weights to pack.
pub(super) fn check_weights(codes: &[u8], n: usize, k: usize, zero_points: &[i32]) -> OpResult<()> {
    if n.checked_mul(k) != Some(codes.len()) {
        return Err(OpError::Shape(format!(
            "int8 GEMM weights: {} codes do not form [{n}, {k}]",
            codes.len()
        )));
    }
    if zero_points.len() != n {
        return Err(OpError::Shape(format!(
            "int8 GEMM weights: {} zero points for {n} output channels",
            zero_points.len()
        )));
    }
    if let Some(z) = zero_points.iter().find(|z| !(0..=255).contains(*z)) {
        return Err(OpError::DType(format!(
            "int8 GEMM weights: zero point {z} is outside [0, 255]"
        )));
    }
    Ok(())
}

/// True when every centred weight `w − z_w` lies in [−128, 127].
pub(super) fn fits_i8(codes: &[u8], n: usize, k: usize, zero_points: &[i32]) -> bool {
    (0..n).all(|c| {
        let row = &codes[c * k..(c + 1) * k];
        let z = zero_points[c];
        row.iter()
            .all(|&v| (-128..=127).contains(&(i32::from(v) - z)))
    })
}
