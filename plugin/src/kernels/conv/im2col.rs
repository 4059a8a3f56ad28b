//! The im2col tiles and the GEMM over them on f32 slices ([`conv2d_f32`]): per-axis input index
//! maps (zero or circular padding), a thread-local column buffer, bands of output rows in parallel.

use super::*;

/// For each kernel tap `t` and output position `o`: the input index read (`-1` = zero padding).
pub(crate) fn axis_map(n: usize, out: usize, k: usize, stride: usize, p: AxisPad) -> Vec<isize> {
    let mut m = Vec::with_capacity(k * out);
    for t in 0..k {
        for o in 0..out {
            let i = (o * stride + t) as isize - p.before as isize;
            m.push(if (0..n as isize).contains(&i) {
                i
            } else if p.circular {
                i.rem_euclid(n as isize)
            } else {
                -1
            });
        }
    }
    m
}

thread_local! {
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Which path 3x3 stride-1 convolutions take: `BEVY_DIFFUSION_WINOGRAD=off` keeps every
/// convolution on im2col + GEMM, unset or `f4` (the default) Winograd F(4x4, 3x3) (the A/B switch
/// of the bench); any other value (e.g. `f2`, whose F(2x2) kernel was removed) warns once and
/// runs F(4x4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WinogradMode {
    /// im2col + GEMM only.
    Off,
    /// F(4x4, 3x3): 4x fewer products.
    F4,
}

/// The [`WinogradMode`] chosen by `BEVY_DIFFUSION_WINOGRAD` (read once).
pub fn winograd_mode() -> WinogradMode {
    static MODE: std::sync::OnceLock<WinogradMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(
        || match std::env::var("BEVY_DIFFUSION_WINOGRAD").as_deref() {
            Ok("off" | "0" | "false") => WinogradMode::Off,
            Ok("" | "on" | "1" | "true" | "f4") | Err(_) => WinogradMode::F4,
            Ok(other) => {
                // `f2` selected the F(2x2, 3x3) kernel until it was removed (session 6).
                tracing::warn!(
                    "BEVY_DIFFUSION_WINOGRAD={other:?} is not a known value (off | f4); using F(4x4, 3x3)"
                );
                WinogradMode::F4
            }
        },
    )
}

/// Whether 3x3 stride-1 convolutions take the Winograd path (see [`winograd_mode`]).
pub fn winograd_enabled() -> bool {
    winograd_mode() != WinogradMode::Off
}

/// One padded input row: `dst[q] = src[map[q]]` (zero where `map[q] < 0`) outside `direct`
/// = `[lo, hi)`, and inside it the unpadded read `src[(first + (q - lo) * stride) / up]` (a
/// memcpy at stride 1 without upsampling). `map` covers `dst`; `first` is the input column of
/// `lo` (in the upsampled row when `up` is 2). Serves the im2col tiles and the Winograd
/// kernel's input rows.
pub(crate) fn gather_row(
    src: &[f32],
    map: &[isize],
    (lo, hi): (usize, usize),
    first: usize,
    stride: usize,
    up: usize,
    dst: &mut [f32],
) {
    let n = dst.len();
    for q in (0..lo).chain(hi.max(lo)..n) {
        let i = map[q];
        dst[q] = if i < 0 { 0.0 } else { src[i as usize] };
    }
    if hi > lo {
        let d = &mut dst[lo..hi];
        if stride == 1 && up == 1 {
            d.copy_from_slice(&src[first..first + d.len()]);
        } else if stride == 1 && up == 2 {
            // Each stored value twice: an odd first column, the pairs, an odd last column.
            let len = d.len();
            let j = first % 2;
            d[0] = src[first / 2];
            let pairs = (len - j) / 2;
            let s0 = (first + j) / 2;
            let body = d[j..j + 2 * pairs].chunks_exact_mut(2);
            for (pair, &v) in body.zip(&src[s0..s0 + pairs]) {
                pair[0] = v;
                pair[1] = v;
            }
            d[len - 1] = src[(first + len - 1) / 2];
        } else {
            for (j, v) in d.iter_mut().enumerate() {
                *v = src[(first + j * stride) / up];
            }
        }
    }
}

/// The convolution on slices: `x` `[b, cin, h, w]`, `wt` `[cout, cin*kh*kw]`, `bias`
/// `[b, cout]` (optional), `residual` `[b, cout, oh, ow]` (optional), then a ReLU when `relu`;
/// `out` `[b, cout, oh, ow]`. 3x3 stride-1 convolutions of at least 8 input channels and 256
/// output pixels go through the Winograd F(4x4, 3x3) kernel (`kernels::winograd`) unless
/// [`winograd_mode`] is off.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_f32(
    g: &ConvGeom,
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    let (oh, ow) = g.out_hw().expect("geometry checked by the caller");
    if winograd_enabled() && super::super::winograd::applies(g, oh, ow) {
        assert_eq!(wt.len(), g.cout * g.cin * 9);
        super::super::winograd::conv3x3(g, 1, oh, ow, x, wt, bias, residual, relu, out);
        return;
    }
    im2col_gemm(g, x, Weights::F32(wt), bias, residual, relu, out);
}

/// [`conv2d_f32`]'s im2col + GEMM with a bf16 weight (`[cout, cin * kh * kw]` bf16 bits, an even
/// `cin * kh * kw`) through the bf16 kernel (`kernels::bf16::gemm_cols_on_this_thread`: the
/// im2col columns rounded to bf16, f32 accumulation), for a bf16 load's convolutions. No
/// Winograd here (its transformed weights are f32): the caller widens the weight for those.
/// Errors when `cin * kh * kw` is odd.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_bf16(
    g: &ConvGeom,
    kernel: Bf16Kernel,
    x: &[f32],
    wt: &[u16],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) -> Result<()> {
    let k = g.cin * g.kh * g.kw;
    if !k.is_multiple_of(2) {
        candle_core::bail!("bf16 conv2d: cin * kh * kw = {k} is odd");
    }
    im2col_gemm(g, x, Weights::Bf16(kernel, wt), bias, residual, relu, out);
    Ok(())
}

/// The weight of [`im2col_gemm`]: `[cout, cin * kh * kw]` f32, or bf16 bits with the kernel.
#[derive(Clone, Copy)]
enum Weights<'a> {
    F32(&'a [f32]),
    Bf16(Bf16Kernel, &'a [u16]),
}

/// The im2col + GEMM convolution of [`conv2d_f32`] (no Winograd), with either weight.
#[allow(clippy::too_many_arguments)]
fn im2col_gemm(
    g: &ConvGeom,
    x: &[f32],
    weights: Weights,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    let (oh, ow) = g.out_hw().expect("geometry checked by the caller");
    let k = g.cin * g.kh * g.kw;
    let ohw = oh * ow;
    assert_eq!(x.len(), g.batch * g.cin * g.h * g.w);
    match weights {
        Weights::F32(wt) => assert_eq!(wt.len(), g.cout * k),
        Weights::Bf16(_, wt) => assert!(wt.len() == g.cout * k && k.is_multiple_of(2)),
    }
    assert_eq!(out.len(), g.batch * g.cout * ohw);
    let pointwise = g.kh == 1
        && g.kw == 1
        && g.stride == 1
        && g.pad_x == AxisPad::default()
        && g.pad_y == AxisPad::default();
    let threads = rayon::current_num_threads().max(1);
    // Rows of output per tile: as many as the im2col budget allows, then split further (down to
    // MIN_TILE pixels) until there are a few tiles per thread.
    let max_rows = if pointwise {
        oh
    } else {
        (COL_BUDGET / k / ow.max(1)).clamp(1, oh)
    };
    let min_tiles = oh.div_ceil(max_rows);
    let want = (4 * threads).div_ceil(g.batch).max(min_tiles);
    let min_rows = MIN_TILE.div_ceil(ow.max(1)).clamp(1, oh);
    let rows = oh.div_ceil(want).clamp(min_rows.min(max_rows), max_rows);
    let tiles_per_image = oh.div_ceil(rows);
    let total = g.batch * tiles_per_image;
    let ymap = axis_map(g.h, oh, g.kh, g.stride, g.pad_y);
    let xmap = axis_map(g.w, ow, g.kw, g.stride, g.pad_x);
    // Per tap kx: the output range [lo, hi) read directly (no padding, no wrap).
    let xrange: Vec<(usize, usize)> = (0..g.kw)
        .map(|kx| {
            let direct = |ox: usize| {
                let i = (ox * g.stride + kx) as isize - g.pad_x.before as isize;
                (0..g.w as isize).contains(&i)
            };
            let lo = (0..ow).find(|&o| direct(o)).unwrap_or(ow);
            let hi = (lo..ow).find(|&o| !direct(o)).unwrap_or(ow);
            (lo, hi)
        })
        .collect();
    let out_ptr = SendPtr(out.as_mut_ptr());
    let parallel_tiles = total >= threads && threads > 1;
    let run = |tile: usize, par: gemm::Parallelism| {
        let (bi, ti) = (tile / tiles_per_image, tile % tiles_per_image);
        let row0 = ti * rows;
        let nrows = rows.min(oh - row0);
        let t = nrows * ow;
        let dst_off = bi * g.cout * ohw + row0 * ow;
        let dst = out_ptr;
        // Prefill with bias (+ residual) so that the GEMM accumulates onto it; the bf16 kernel
        // always adds onto its output, so its tile is zeroed where there is neither.
        let read_dst = bias.is_some() || residual.is_some();
        if read_dst || matches!(weights, Weights::Bf16(..)) {
            for co in 0..g.cout {
                let off = dst_off + co * ohw;
                // SAFETY: [off, off + t) lies inside `out` and belongs to this tile only.
                let d = unsafe { std::slice::from_raw_parts_mut(dst.0.add(off), t) };
                match residual {
                    Some(r) => d.copy_from_slice(&r[off..off + t]),
                    None => d.fill(0.0),
                }
                if let Some(b) = bias {
                    let bv = b[bi * g.cout + co];
                    d.iter_mut().for_each(|v| *v += bv);
                }
            }
        }
        let x_img = &x[bi * g.cin * g.h * g.w..(bi + 1) * g.cin * g.h * g.w];
        let gemm_call = |rhs: &[f32], rhs_rs: usize| {
            let wt = match weights {
                Weights::F32(wt) => wt,
                Weights::Bf16(kernel, wb) => {
                    // The output is prefilled (above): the kernel adds onto it. Parallel
                    // over strips of output channels where the tiles alone are too few.
                    let strips = match par {
                        gemm::Parallelism::None => 1,
                        _ => (2 * threads).min(g.cout.div_ceil(12)).max(1),
                    };
                    let strip = g.cout.div_ceil(strips);
                    let task = |sj: usize| {
                        let c0 = sj * strip;
                        let c1 = (c0 + strip).min(g.cout);
                        if c0 >= c1 {
                            return;
                        }
                        // SAFETY: channels [c0, c1) of this tile's columns [dst_off, + t) of
                        // every plane (stride ohw) lie inside `out` and belong to this task.
                        unsafe {
                            super::super::bf16::gemm_cols_on_this_thread(
                                kernel,
                                t,
                                k,
                                c1 - c0,
                                rhs,
                                rhs_rs,
                                &wb[c0 * k..],
                                k,
                                dst.get().add(dst_off + c0 * ohw),
                                ohw,
                            )
                        }
                        .expect("bf16 conv: shapes checked above");
                    };
                    if strips > 1 {
                        (0..strips).into_par_iter().for_each(task);
                    } else {
                        task(0);
                    }
                    return;
                }
            };
            let rhs_rs = rhs_rs as isize;
            let rhs = rhs.as_ptr();
            // SAFETY: lhs is [cout, k] row-major, rhs [k, t] with row stride rhs_rs, dst
            // [cout, t] with row stride ohw inside this tile's disjoint columns.
            unsafe {
                gemm::gemm(
                    g.cout,
                    t,
                    k,
                    dst.0.add(dst_off),
                    1,
                    ohw as isize,
                    read_dst,
                    wt.as_ptr(),
                    1,
                    k as isize,
                    rhs,
                    1,
                    rhs_rs,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    par,
                )
            }
        };
        let relu_tile = || {
            if relu {
                for co in 0..g.cout {
                    // SAFETY: as for the prefill above: this tile's own output columns.
                    let d =
                        unsafe { std::slice::from_raw_parts_mut(dst.0.add(dst_off + co * ohw), t) };
                    d.iter_mut().for_each(|v| *v = v.max(0.0));
                }
            }
        };
        if pointwise {
            gemm_call(&x_img[row0 * ow..], g.h * g.w);
            relu_tile();
            return;
        }
        COL.with(|col| {
            let mut col = col.borrow_mut();
            if col.len() < k * t {
                col.resize(k * t, 0.0);
            }
            fill_col(
                g,
                x_img,
                row0,
                nrows,
                oh,
                ow,
                &ymap,
                &xmap,
                &xrange,
                &mut col[..k * t],
            );
            gemm_call(&col[..k * t], t);
        });
        relu_tile();
    };
    if parallel_tiles {
        (0..total)
            .into_par_iter()
            .for_each(|tile| run(tile, gemm::Parallelism::None));
    } else {
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        (0..total).for_each(|tile| run(tile, par));
    }
}

/// Writes the im2col tile of output rows `[row0, row0 + nrows)` of one image:
/// `col[(ci * kh + ky) * kw + kx][r * ow + ox] = x[ci][ymap(ky, oy)][xmap(kx, ox)]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn fill_col(
    g: &ConvGeom,
    x_img: &[f32],
    row0: usize,
    nrows: usize,
    oh: usize,
    ow: usize,
    ymap: &[isize],
    xmap: &[isize],
    xrange: &[(usize, usize)],
    col: &mut [f32],
) {
    let t = nrows * ow;
    let (h, w, s) = (g.h, g.w, g.stride);
    for ci in 0..g.cin {
        let plane = &x_img[ci * h * w..(ci + 1) * h * w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let kidx = (ci * g.kh + ky) * g.kw + kx;
                let dst = &mut col[kidx * t..(kidx + 1) * t];
                let xm = &xmap[kx * ow..(kx + 1) * ow];
                let (lo, hi) = xrange[kx];
                for r in 0..nrows {
                    let d = &mut dst[r * ow..(r + 1) * ow];
                    let iy = ymap[ky * oh + row0 + r];
                    if iy < 0 {
                        d.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    let first = (lo * s + kx).saturating_sub(g.pad_x.before);
                    gather_row(src, xm, (lo, hi), first, s, 1, d);
                }
            }
        }
    }
}
