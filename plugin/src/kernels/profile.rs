//! Per-op-kind timing registry for the bench: off by default, one relaxed atomic load per op
//! when off.
//!
//! Model code wraps each op in [`timed`] with its [`OpKind`]; when [`set_enabled`] turned the
//! registry on, the wall time of the outermost wrapped op on the calling thread is added to that
//! kind's total (nested wraps, e.g. the matmuls inside an attention, count only once, under the
//! outer kind). [`snapshot`] reads the totals, [`reset`] clears them.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What kind of work an op is, for the breakdown table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// 2-D convolutions (bias, time embedding and residual adds fused into them included).
    Conv,
    /// GroupNorm (with its fused SiLU).
    GroupNorm,
    /// LayerNorm (transformer blocks, CLIP).
    LayerNorm,
    /// Scaled dot-product attention (scores, softmax, weighted sum), projections excluded.
    Attention,
    /// Linear layers / matmuls outside attention.
    Matmul,
    /// Elementwise ops, activations, adds, concatenations and layout copies.
    Elementwise,
    /// Nearest-neighbour upsampling.
    Upsample,
}

impl OpKind {
    /// Every kind, in table order.
    pub const ALL: [OpKind; 7] = [
        OpKind::Conv,
        OpKind::GroupNorm,
        OpKind::LayerNorm,
        OpKind::Attention,
        OpKind::Matmul,
        OpKind::Elementwise,
        OpKind::Upsample,
    ];

    /// Short lower-case name for tables (`conv`, `group_norm`, ...).
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Conv => "conv",
            OpKind::GroupNorm => "group_norm",
            OpKind::LayerNorm => "layer_norm",
            OpKind::Attention => "attention",
            OpKind::Matmul => "matmul",
            OpKind::Elementwise => "elementwise/copies",
            OpKind::Upsample => "upsample",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
static COUNTS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Turns the registry on or off (process-wide).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the registry is recording.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Clears every total.
pub fn reset() {
    for i in 0..OpKind::ALL.len() {
        NANOS[i].store(0, Ordering::Relaxed);
        COUNTS[i].store(0, Ordering::Relaxed);
    }
}

/// Runs `f`, adding its wall time to `kind` when recording and no outer op is being timed on
/// this thread.
#[inline]
pub fn timed<T>(kind: OpKind, f: impl FnOnce() -> T) -> T {
    if !enabled() || INSIDE.with(|c| c.get()) {
        return f();
    }
    INSIDE.with(|c| c.set(true));
    let start = Instant::now();
    let out = f();
    let nanos = start.elapsed().as_nanos() as u64;
    INSIDE.with(|c| c.set(false));
    NANOS[kind.index()].fetch_add(nanos, Ordering::Relaxed);
    COUNTS[kind.index()].fetch_add(1, Ordering::Relaxed);
    out
}

/// One row of [`snapshot`]: total time and number of calls of one kind.
#[derive(Debug, Clone, Copy)]
pub struct OpTotal {
    /// The op kind.
    pub kind: OpKind,
    /// Wall time summed over the calls.
    pub time: Duration,
    /// Number of calls.
    pub calls: u64,
}

/// The totals since the last [`reset`], in [`OpKind::ALL`] order.
pub fn snapshot() -> Vec<OpTotal> {
    OpKind::ALL
        .iter()
        .map(|&kind| OpTotal {
            kind,
            time: Duration::from_nanos(NANOS[kind.index()].load(Ordering::Relaxed)),
            calls: COUNTS[kind.index()].load(Ordering::Relaxed),
        })
        .collect()
}
