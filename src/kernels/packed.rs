//! The convolutions' matrix product, with packing buffers that belong to the caller.
//!
//! `matrixmultiply::sgemm` allocates its packing buffer on every call and takes none from its
//! caller, and a convolution multiplies one sample at a time, so through sgemm a training step
//! would allocate packing memory in proportion to its batch. This product packs into buffers
//! the caller keeps ([`Packing`], [`Prepacked`]), so a steady step allocates nothing for it.
//! It also lets a convolution do what sgemm's interface cannot: pack its weight once for every
//! sample of a batch, and have im2col write each sample's matrix straight into the packed
//! order ([`PackRows`]) instead of writing it whole and reading it again to pack it.
//!
//! It gives sgemm's bits, not merely sgemm's accuracy: every element of `C` is summed over the
//! inner dimension in 256-deep passes, each pass a chain of multiply-adds in order from zero,
//! added to `C` as `round(pass + round(beta C))` (the first pass with the caller's `beta`, the
//! others with 1), with fused multiply-adds where matrixmultiply's dispatch picks an FMA kernel
//! (AVX-512, or AVX2 with FMA, on x86; always on aarch64) and a multiply then an add elsewhere.
//! The tile sizes follow the instruction set, but no element's arithmetic depends on them:
//! padding only ever extends the rows and columns of a tile, never its inner dimension.
//! `alpha` is 1: the crate folds any other into an operand first (see `gemm`).
//!
//! The kernels are plain Rust that LLVM vectorizes, compiled once per instruction set and
//! picked at run time (multiversion), with no `unsafe`.

use ndarray::{ArrayView2, ArrayViewMut2, Axis, s};

/// The inner dimension of one pass: matrixmultiply's `kc` for `f32`, which the bits follow.
const KC: usize = 256;
/// Rows of `A` packed at a time.
const MC: usize = 64;
/// Columns of `B` packed at a time.
const NC: usize = 1024;
/// Rows of a tile, on every instruction set (its columns follow the vector width).
const MR: usize = 8;

/// Packing buffers, kept by the caller from product to product.
#[derive(Default)]
pub(crate) struct Packing {
    a: Aligned,
    b: Aligned,
}

/// Values starting on a 64-byte boundary: a tile kernel loads whole cache lines of packed
/// values, and a vector load that straddles two lines costs two.
#[derive(Default, Debug)]
struct Aligned {
    data: Vec<f32>,
    len: usize,
}

/// Floats in 64 bytes: the most an aligned start can be from the allocation's start.
const ALIGN: usize = 16;

impl Aligned {
    /// Where the aligned values start in `data`.
    fn offset(&self) -> usize {
        // Reading an address is safe; only its alignment is used.
        let misalign = (self.data.as_ptr() as usize / size_of::<f32>()) % ALIGN;
        (ALIGN - misalign) % ALIGN
    }

    /// `len` aligned values (new ones zero, the others as they were).
    fn resize(&mut self, len: usize) -> &mut [f32] {
        self.data.resize(len + ALIGN - 1, 0.0);
        self.len = len;
        let offset = self.offset();
        &mut self.data[offset..offset + len]
    }

    fn values(&self) -> &[f32] {
        let offset = self.offset();
        &self.data[offset..offset + self.len]
    }

    fn values_mut(&mut self) -> &mut [f32] {
        let offset = self.offset();
        &mut self.data[offset..offset + self.len]
    }

    fn reserve(&mut self, len: usize) {
        self.data
            .reserve((len + ALIGN - 1).saturating_sub(self.data.len()));
    }
}

/// An operand of [`gemm_packed`]: a view, packed on the way, or a matrix packed once for many
/// products ([`Prepacked`], a layer's weight shared by every sample of a batch).
#[derive(Clone, Copy)]
pub(crate) enum Operand<'a> {
    View(ArrayView2<'a, f32>),
    Packed(&'a Prepacked),
}

impl Operand<'_> {
    fn dim(&self) -> (usize, usize) {
        match self {
            Operand::View(v) => v.dim(),
            Operand::Packed(p) => (p.rows, p.cols),
        }
    }
}

/// A whole matrix in the order a product walks it as its `A` ([`Prepacked::pack_a`]) or its
/// `B` ([`Prepacked::pack_b`]): kept by the caller, so that repacking allocates nothing.
#[derive(Default, Debug)]
pub(crate) struct Prepacked {
    data: Aligned,
    rows: usize,
    cols: usize,
    /// The tile side it was packed for; the product checks it.
    width: usize,
    side: Side,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Side {
    #[default]
    A,
    B,
}

impl Prepacked {
    /// Packs `a` for use as the left operand: for each 256-deep pass, panels of tile-height
    /// rows over all of `a`'s rows.
    pub fn pack_a(&mut self, a: ArrayView2<'_, f32>) {
        let (m, k) = a.dim();
        let m_pad = m.div_ceil(MR) * MR;
        (self.rows, self.cols, self.width, self.side) = (m, k, MR, Side::A);
        let data = self.data.resize(m_pad * k);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let pass = &mut data[a_pass_start(m_pad, p0)..][..m_pad * kc];
            for (ip, dst) in pass.chunks_exact_mut(MR * kc).enumerate() {
                let i = ip * MR;
                let block = a.slice(s![i..(i + MR).min(m), p0..p0 + kc]);
                pack::<MR>(block, dst);
            }
        }
    }

    /// Packs `b` for use as the right operand: for each block of 1024 columns and each
    /// 256-deep pass, panels of tile-width columns.
    pub fn pack_b(&mut self, b: ArrayView2<'_, f32>) {
        let nr = kernel_class().nr();
        let (k, n) = b.dim();
        let n_pad = n.div_ceil(nr) * nr;
        (self.rows, self.cols, self.width, self.side) = (k, n, nr, Side::B);
        let data = self.data.resize(n_pad * k);
        for j0 in (0..n).step_by(NC) {
            let nc = NC.min(n - j0);
            let nc_pad = nc.div_ceil(nr) * nr;
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                let dst = &mut data[b_pass_start(k, j0, p0, nc_pad)..][..nc_pad * kc];
                let block = b.slice(s![p0..p0 + kc, j0..j0 + nc]);
                match nr {
                    32 => pack_b::<32>(block, dst),
                    _ => pack_b::<8>(block, dst),
                }
            }
        }
    }
}

/// Where pass `p0` of a packed left operand starts: every earlier pass holds `m_pad` rows
/// (`m` padded to whole tiles) of [`KC`] columns.
fn a_pass_start(m_pad: usize, p0: usize) -> usize {
    p0 * m_pad
}

/// Where pass `p0` of column block `j0` of a packed `k`-row right operand starts: every
/// earlier block is [`NC`] columns (whole tiles) by `k` rows, and every earlier pass of this
/// block `nc_pad` columns by [`KC`] rows.
fn b_pass_start(k: usize, j0: usize, p0: usize, nc_pad: usize) -> usize {
    j0 * k + p0 * nc_pad
}

/// [`Prepacked::pack_b`] row by row, for a matrix that is produced a row at a time (a
/// sample's transposed im2col matrix), so that it is written straight into the packed order
/// rather than written whole, then read again to be packed.
pub(crate) struct PackRows<'a> {
    dst: &'a mut Prepacked,
    /// The rows in flight, each padded to whole groups.
    row: &'a mut Vec<f32>,
}

/// Rows [`PackRows`] holds before it moves them into place: moving each as soon as it is
/// written would load values just stored in pieces (a few at a time by im2col), which the
/// processor cannot forward to a vector load and stalls on.
const ROWS_PER_MOVE: usize = 8;

impl<'a> PackRows<'a> {
    /// Prepares `dst` for a `k x n` right operand, with `rows` as the buffer for the rows in
    /// flight. Rows must come in order, `0` to `k - 1`.
    pub fn new(dst: &'a mut Prepacked, rows: &'a mut Vec<f32>, k: usize, n: usize) -> Self {
        let nr = kernel_class().nr();
        let n_pad = n.div_ceil(nr) * nr;
        dst.data.resize(n_pad * k);
        (dst.rows, dst.cols, dst.width, dst.side) = (k, n, nr, Side::B);
        // Rows are moved in whole groups, padding columns included: those lanes of a tile are
        // never stored (a tile's lanes do not mix), so whatever the padding holds is harmless.
        rows.resize(n_pad * ROWS_PER_MOVE, 0.0);
        Self { dst, row: rows }
    }

    fn n_pad(&self) -> usize {
        self.dst.cols.div_ceil(self.dst.width) * self.dst.width
    }
}

impl crate::kernels::im2col::Rows for PackRows<'_> {
    #[inline(always)]
    fn row(&mut self, r: usize) -> &mut [f32] {
        let (n, n_pad) = (self.dst.cols, self.n_pad());
        &mut self.row[(r % ROWS_PER_MOVE) * n_pad..][..n]
    }

    #[inline(always)]
    fn finish(&mut self, r: usize) {
        if r % ROWS_PER_MOVE != ROWS_PER_MOVE - 1 && r + 1 != self.dst.rows {
            return;
        }
        let n_pad = self.n_pad();
        let first = r - r % ROWS_PER_MOVE;
        for (q, row) in (first..=r).zip(self.row.chunks_exact(n_pad)) {
            match self.dst.width {
                32 => scatter_row::<32>(self.dst, q, row),
                _ => scatter_row::<8>(self.dst, q, row),
            }
        }
    }
}

/// Writes row `r` of a right operand (padded to whole groups) into its place in `dst`'s
/// panels.
#[inline(always)]
fn scatter_row<const NR: usize>(dst: &mut Prepacked, r: usize, row: &[f32]) {
    let (k, n) = (dst.rows, dst.cols);
    let data = dst.data.values_mut();
    let (p0, kc) = ((r / KC) * KC, KC.min(k - (r / KC) * KC));
    let (groups, _) = row.as_chunks::<NR>();
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        let nc_pad = nc.div_ceil(NR) * NR;
        let base = b_pass_start(k, j0, p0, nc_pad) + (r - p0) * NR;
        for (jp, values) in groups[j0 / NR..][..nc_pad / NR].iter().enumerate() {
            let group: &mut [f32; NR] = (&mut data[base + jp * NR * kc..][..NR])
                .try_into()
                .unwrap_or_else(|_| unreachable!("a slice of NR values"));
            *group = *values;
        }
    }
}

impl Packing {
    /// Grows both buffers to the most a product packs, so that no later product allocates.
    pub fn reserve(&mut self) {
        self.a.reserve(MC * KC);
        self.b.reserve(KC * NC);
    }
}

impl Prepacked {
    /// Grows the buffer to hold a `k x n` right operand.
    pub fn reserve_b(&mut self, k: usize, n: usize) {
        let nr = kernel_class().nr();
        self.data.reserve(n.div_ceil(nr) * nr * k);
    }
}

/// `C <- A B + beta * C`, packing into `buf` what is not packed yet. `beta = 0` does not read
/// `C`.
pub(crate) fn gemm_packed(
    a: Operand<'_>,
    b: Operand<'_>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
    buf: &mut Packing,
) {
    debug_assert_eq!(a.dim().1, b.dim().0);
    debug_assert_eq!(c.dim(), (a.dim().0, b.dim().1));
    match kernel_class() {
        Class::Avx512 => fused_8x32(a, b, beta, c, buf),
        Class::Fused => fused_8x8(a, b, beta, c, buf),
        Class::Unfused => unfused_8x8(a, b, beta, c, buf),
    }
}

#[derive(Clone, Copy)]
enum Class {
    /// Fused multiply-adds on 16-lane vectors.
    Avx512,
    /// Fused multiply-adds.
    Fused,
    /// A multiply then an add, each rounded.
    Unfused,
}

impl Class {
    /// The tile's columns (its rows are [`MR`] everywhere).
    fn nr(self) -> usize {
        match self {
            Class::Avx512 => 32,
            Class::Fused | Class::Unfused => 8,
        }
    }
}

/// The arithmetic matrixmultiply's dispatch would use on this processor.
fn kernel_class() -> Class {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            Class::Avx512
        } else if std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("avx2")
        {
            Class::Fused
        } else {
            Class::Unfused
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        Class::Fused
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Class::Unfused
    }
}

#[multiversion::multiversion(targets(
    "x86_64+avx+avx2+fma+avx512f+avx512vl+avx512bw+avx512dq",
    "x86+avx+avx2+fma+avx512f+avx512vl+avx512bw+avx512dq"
))]
fn fused_8x32(
    a: Operand<'_>,
    b: Operand<'_>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
    buf: &mut Packing,
) {
    product::<MR, 32, Fused8x32>(a, b, beta, c, buf);
}

#[multiversion::multiversion(targets("x86_64+avx+avx2+fma", "x86+avx+avx2+fma"))]
fn fused_8x8(
    a: Operand<'_>,
    b: Operand<'_>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
    buf: &mut Packing,
) {
    product::<MR, 8, Fused8>(a, b, beta, c, buf);
}

#[multiversion::multiversion(targets("x86_64+avx", "x86+avx"))]
fn unfused_8x8(
    a: Operand<'_>,
    b: Operand<'_>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
    buf: &mut Packing,
) {
    product::<MR, 8, Unfused8>(a, b, beta, c, buf);
}

/// A tile kernel: `MR x NR` sums of a pass over packed panels.
///
/// A trait rather than a function value: a function passed by value is called through a shim
/// that LLVM need not inline, and outside the caller's target features its multiply-adds
/// would compile to library calls.
trait Tile<const MR: usize, const NR: usize> {
    fn tile(a: &[f32], b: &[f32]) -> [[f32; NR]; MR];
}

/// AVX-512: 8 rows of two 16-lane vectors (16 running sums, enough to cover the latency of
/// two fused multiply-add units; 8 sums of one vector each run at 85-90% of it).
struct Fused8x32;
/// AVX2 with FMA, or aarch64: 8 rows of 8 lanes.
struct Fused8;
/// Without FMA: 8 rows of 8 lanes, a multiply then an add.
struct Unfused8;

impl Tile<8, 32> for Fused8x32 {
    #[inline(always)]
    fn tile(a: &[f32], b: &[f32]) -> [[f32; 32]; 8] {
        tile_8::<32, true>(a, b)
    }
}

impl Tile<8, 8> for Fused8 {
    #[inline(always)]
    fn tile(a: &[f32], b: &[f32]) -> [[f32; 8]; 8] {
        tile_8::<8, true>(a, b)
    }
}

impl Tile<8, 8> for Unfused8 {
    #[inline(always)]
    fn tile(a: &[f32], b: &[f32]) -> [[f32; 8]; 8] {
        tile_8::<8, false>(a, b)
    }
}

/// The blocked product with `MR x NR` tiles computed by `T`.
#[inline(always)]
fn product<const MR: usize, const NR: usize, T: Tile<MR, NR>>(
    a: Operand<'_>,
    b: Operand<'_>,
    beta: f32,
    mut c: ArrayViewMut2<'_, f32>,
    buf: &mut Packing,
) {
    let (m, k) = a.dim();
    let n = b.dim().1;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // No pass: C <- beta C, as sgemm does.
        if beta == 0.0 {
            c.fill(0.0);
        } else {
            c.map_inplace(|v| *v *= beta);
        }
        return;
    }
    let (ldc, col_stride) = (c.strides()[0], c.strides()[1]);
    let mut out = match c.as_slice_mut() {
        Some(data) if col_stride == 1 && ldc >= 0 => Out::Rows(data, ldc.unsigned_abs()),
        _ => Out::View(c),
    };
    let m_pad = m.div_ceil(MR) * MR;
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        let panels_b = nc.div_ceil(NR);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let beta = if p0 == 0 { beta } else { 1.0 };
            let b_pass: &[f32] = match b {
                Operand::View(b) => {
                    let dst = buf.b.resize(panels_b * NR * kc);
                    pack_b::<NR>(b.slice(s![p0..p0 + kc, j0..j0 + nc]), dst);
                    buf.b.values()
                }
                Operand::Packed(p) => {
                    assert!(
                        p.width == NR && p.side == Side::B,
                        "packed for another tile"
                    );
                    let start = b_pass_start(k, j0, p0, panels_b * NR);
                    &p.data.values()[start..][..panels_b * NR * kc]
                }
            };
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                let panels_a = mc.div_ceil(MR);
                let a_block: &[f32] = match a {
                    Operand::View(a) => {
                        let dst = buf.a.resize(panels_a * MR * kc);
                        for (ip, dst) in dst.chunks_exact_mut(MR * kc).enumerate() {
                            let i = i0 + ip * MR;
                            let rows = MR.min(i0 + mc - i);
                            pack::<MR>(a.slice(s![i..i + rows, p0..p0 + kc]), dst);
                        }
                        buf.a.values()
                    }
                    Operand::Packed(p) => {
                        assert!(
                            p.width == MR && p.side == Side::A,
                            "packed for another tile"
                        );
                        let start = a_pass_start(m_pad, p0) + i0 * kc;
                        &p.data.values()[start..][..panels_a * MR * kc]
                    }
                };
                for (jp, bp) in b_pass.chunks_exact(NR * kc).enumerate() {
                    let j = j0 + jp * NR;
                    let cols = NR.min(j0 + nc - j);
                    for (ip, ap) in a_block.chunks_exact(MR * kc).enumerate() {
                        let i = i0 + ip * MR;
                        let rows = MR.min(i0 + mc - i);
                        out.store(&T::tile(ap, bp), i, j, rows, cols, beta);
                    }
                }
            }
        }
    }
}

/// `C`, as rows of a slice when it has that layout.
enum Out<'a, 'b> {
    /// Row `i` starts at `i * ldc`.
    Rows(&'a mut [f32], usize),
    View(ArrayViewMut2<'b, f32>),
}

impl Out<'_, '_> {
    /// `C[i.., j..] <- tile + beta C` over `rows x cols` (`tile` alone when `beta` is 0).
    #[inline(always)]
    fn store<const MR: usize, const NR: usize>(
        &mut self,
        tile: &[[f32; NR]; MR],
        i: usize,
        j: usize,
        rows: usize,
        cols: usize,
        beta: f32,
    ) {
        match self {
            Out::Rows(data, ldc) if rows == MR && cols == NR => {
                // A whole tile: rows of a fixed length, which vectorize.
                for (r, t) in tile.iter().enumerate() {
                    let c: &mut [f32; NR] = (&mut data[(i + r) * *ldc + j..][..NR])
                        .try_into()
                        .unwrap_or_else(|_| unreachable!("a slice of NR values"));
                    add_row(t, beta, c);
                }
            }
            Out::Rows(data, ldc) => {
                for (r, t) in tile.iter().take(rows).enumerate() {
                    let c = &mut data[(i + r) * *ldc + j..][..cols];
                    add_row(&t[..cols], beta, c);
                }
            }
            Out::View(c) => {
                let mut c = c.slice_mut(s![i..i + rows, j..j + cols]);
                for (t, mut c) in tile.iter().zip(c.axis_iter_mut(Axis(0))) {
                    for (&t, v) in t.iter().zip(c.iter_mut()) {
                        *v = if beta == 0.0 { t } else { t + beta * *v };
                    }
                }
            }
        }
    }
}

/// `c <- t + beta c`, or `c <- t` when `beta` is 0.
#[inline(always)]
fn add_row(t: &[f32], beta: f32, c: &mut [f32]) {
    if beta == 0.0 {
        c.copy_from_slice(t);
    } else if beta == 1.0 {
        c.iter_mut().zip(t).for_each(|(v, &t)| *v += t);
    } else {
        c.iter_mut().zip(t).for_each(|(v, &t)| *v = t + beta * *v);
    }
}

/// Packs `src` (`kc x nc`) as panels of `NR` columns, each `kc` groups of `NR` values, the
/// columns past `nc` zero.
#[inline(always)]
fn pack_b<const NR: usize>(src: ArrayView2<'_, f32>, dst: &mut [f32]) {
    let (kc, nc) = src.dim();
    for (jp, panel) in dst.chunks_exact_mut(NR * kc).enumerate() {
        let j = jp * NR;
        let cols = NR.min(nc - j);
        // Panel by panel, so that the writes run in order.
        pack::<NR>(src.slice(s![.., j..j + cols]).t(), panel);
    }
}

/// Copies `src` (`rows <= W` by `kc`) into `dst` as `kc` groups of `W` values, column
/// `p` of `src` in group `p`, the rows past `rows` zero.
#[inline(always)]
fn pack<const W: usize>(src: ArrayView2<'_, f32>, dst: &mut [f32]) {
    let (rows, kc) = src.dim();
    debug_assert_eq!(dst.len(), W * kc);
    if rows < W {
        dst.fill(0.0);
    }
    if let Some(cols) = (src.strides()[0] == 1 || rows == 1).then(|| src.axis_iter(Axis(1))) {
        // Columns of unit stride: each is a group.
        for (group, col) in dst.chunks_exact_mut(W).zip(cols) {
            match col.to_slice() {
                // A whole group as one fixed-size copy: `copy_from_slice` would call `memmove`
                // for every 16 values.
                Some(col) if rows == W => {
                    let group: &mut [f32; W] = group.try_into().unwrap_or_else(|_| unreachable!());
                    let col: &[f32; W] = col.try_into().unwrap_or_else(|_| unreachable!());
                    *group = *col;
                }
                Some(col) => group[..rows].copy_from_slice(col),
                None => group.iter_mut().zip(col).for_each(|(d, &v)| *d = v),
            }
        }
    } else {
        // Rows of any stride, read side by side so that the writes run in order.
        let mut lines = [&[][..]; 16];
        let lines = &mut lines[..rows.min(16)];
        if rows <= 16 && src.axis_iter(Axis(0)).all(|r| r.to_slice().is_some()) {
            for (line, row) in lines.iter_mut().zip(src.axis_iter(Axis(0))) {
                *line = row.to_slice().unwrap_or_default();
            }
            let mut done = 0;
            if W <= 16 && rows > 0 {
                // A partial panel's missing rows read row 0 again: padding rows of `A` only
                // reach rows of a tile that are never stored.
                let mut full = [lines[0]; 16];
                full[..rows].copy_from_slice(lines);
                let lines = &full[..W];
                // Whole `W x W` blocks, transposed through fixed-size arrays that LLVM turns
                // into vector loads and shuffles rather than one load and store per value.
                let (groups, _) = dst.as_chunks_mut::<W>();
                for (blocks, p) in groups.chunks_exact_mut(W).zip((0..kc).step_by(W)) {
                    let mut block = [[0.0f32; W]; W];
                    for (b, line) in block.iter_mut().zip(lines.iter()) {
                        *b = line[p..p + W].try_into().unwrap_or_else(|_| unreachable!());
                    }
                    for (q, group) in blocks.iter_mut().enumerate() {
                        for (d, b) in group.iter_mut().zip(&block) {
                            *d = b[q];
                        }
                    }
                    done = p + W;
                }
            }
            for (p, group) in dst.chunks_exact_mut(W).enumerate().skip(done) {
                for (d, line) in group.iter_mut().zip(lines.iter()) {
                    *d = line[p];
                }
            }
        } else {
            for (i, row) in src.axis_iter(Axis(0)).enumerate() {
                for (group, &v) in dst.chunks_exact_mut(W).zip(row.iter()) {
                    group[i] = v;
                }
            }
        }
    }
}

/// `acc[j] <- acc[j] + a b[j]`, fused or not.
#[inline(always)]
fn multiply_add<const NR: usize, const FUSED: bool>(acc: &mut [f32; NR], a: f32, b: &[f32; NR]) {
    for (v, &bj) in acc.iter_mut().zip(b) {
        *v = if FUSED {
            a.mul_add(bj, *v)
        } else {
            *v + a * bj
        };
    }
}

/// Defines `$name`, one tile of `$mr` rows of a pass: `sum_p a[p][i] * b[p][j]`, in order
/// from zero.
///
/// Each row's sums are a local of their own: held in one array, LLVM keeps the tile in memory
/// past 64 values and vectorizes across the inner dimension with gathers instead, 20 to 40
/// times slower.
macro_rules! tile_kernel {
    ($name:ident, $mr:literal, $(($row:ident $i:literal))*) => {
        #[inline(always)]
        fn $name<const NR: usize, const FUSED: bool>(a: &[f32], b: &[f32]) -> [[f32; NR]; $mr] {
            let (a, _) = a.as_chunks::<$mr>();
            let (b, _) = b.as_chunks::<NR>();
            $(let mut $row = [0.0f32; NR];)*
            // Two steps per iteration, so that the loop's own bookkeeping is paid half as often.
            let (a2, a1) = a.as_chunks::<2>();
            let (b2, b1) = b.as_chunks::<2>();
            for ([a, a_next], [b, b_next]) in a2.iter().zip(b2) {
                // One load of the whole group: used in place, LLVM assembles it from pieces.
                let b = *b;
                $(multiply_add::<NR, FUSED>(&mut $row, a[$i], &b);)*
                let b = *b_next;
                $(multiply_add::<NR, FUSED>(&mut $row, a_next[$i], &b);)*
            }
            for (a, b) in a1.iter().zip(b1) {
                let b = *b;
                $(multiply_add::<NR, FUSED>(&mut $row, a[$i], &b);)*
            }
            [$($row),*]
        }
    };
}

tile_kernel!(tile_8, 8, (r0 0) (r1 1) (r2 2) (r3 3) (r4 4) (r5 5) (r6 6) (r7 7));
#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use ndarray::linalg::general_mat_mul;

    /// sgemm's own bits, on shapes with edge tiles on every side, inner dimensions of one pass,
    /// of several and of a partial one, operands in both memory orders, and both `beta`s.
    #[test]
    fn gives_sgemm_bits() {
        let mut rng = crate::init::rng(4);
        let mut buf = Packing::default();
        for (m, k, n) in [
            (1, 1, 1),
            (7, 3, 5),
            (32, 25, 576),
            (64, 800, 64),
            (37, 513, 41),
            (70, 256, 1030),
            (20, 600, 2100),
            (17, 257, 9),
        ] {
            let a = crate::init::uniform(&[m, k], 1.0, &mut rng);
            let at = crate::init::uniform(&[k, m], 1.0, &mut rng);
            let b = crate::init::uniform(&[k, n], 1.0, &mut rng);
            let c0 = crate::init::uniform(&[m, n], 1.0, &mut rng);
            for a in [a.matrix(), at.matrix().reversed_axes()] {
                for beta in [0.0, 1.0, 0.5] {
                    let mut want = c0.clone();
                    general_mat_mul(1.0, &a, &b.matrix(), beta, &mut want.matrix_mut());
                    let (mut pa, mut pb) = (Prepacked::default(), Prepacked::default());
                    pa.pack_a(a);
                    pb.pack_b(b.matrix());
                    for (name, a, b) in [
                        ("views", Operand::View(a), Operand::View(b.matrix())),
                        ("A packed", Operand::Packed(&pa), Operand::View(b.matrix())),
                        ("B packed", Operand::View(a), Operand::Packed(&pb)),
                        ("both packed", Operand::Packed(&pa), Operand::Packed(&pb)),
                    ] {
                        let mut got = c0.clone();
                        gemm_packed(a, b, beta, got.matrix_mut(), &mut buf);
                        assert!(
                            want.data()
                                .iter()
                                .zip(got.data())
                                .all(|(x, y)| x.to_bits() == y.to_bits()),
                            "{m}x{k}x{n}, beta {beta}, {name}"
                        );
                    }
                }
            }
        }
    }

    /// A right operand written row by row lands where [`Prepacked::pack_b`] puts it, with
    /// column blocks and passes of every kind.
    #[test]
    fn rows_pack_like_the_whole_matrix() {
        use crate::kernels::im2col::Rows;
        let mut rng = crate::init::rng(5);
        for (k, n) in [(1, 1), (25, 576), (300, 37), (513, 2100)] {
            let b = crate::init::uniform(&[k, n], 1.0, &mut rng);
            let mut whole = Prepacked::default();
            whole.pack_b(b.matrix());
            let (mut by_rows, mut row) = (Prepacked::default(), Vec::new());
            let mut sink = PackRows::new(&mut by_rows, &mut row, k, n);
            for r in 0..k {
                sink.row(r)
                    .copy_from_slice(b.matrix().row(r).as_slice().unwrap());
                sink.finish(r);
            }
            let a = crate::init::uniform(&[19, k], 1.0, &mut rng);
            let mut want = Array2::zeros((19, n));
            let mut got = Array2::zeros((19, n));
            let mut buf = Packing::default();
            let op = Operand::View(a.matrix());
            gemm_packed(
                op,
                Operand::View(b.matrix()),
                0.0,
                want.view_mut(),
                &mut buf,
            );
            gemm_packed(op, Operand::Packed(&by_rows), 0.0, got.view_mut(), &mut buf);
            assert!(
                want.iter()
                    .zip(&got)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{k}x{n}"
            );
        }
    }

    #[test]
    fn beta_zero_ignores_what_c_held() {
        let a = ndarray::Array2::from_elem((3, 4), 1.0f32);
        let b = ndarray::Array2::from_elem((4, 2), 2.0f32);
        let mut c = ndarray::Array2::from_elem((3, 2), f32::NAN);
        gemm_packed(
            Operand::View(a.view()),
            Operand::View(b.view()),
            0.0,
            c.view_mut(),
            &mut Packing::default(),
        );
        assert!(c.iter().all(|&v| v == 8.0));
    }
}
