//! The linear-layer kernels against their f64 reference, on every instruction-set level this
//! machine supports, in every compute dtype, for the blocked (many rows) and streaming (few
//! rows) paths, with every epilogue.

use gpt_ablate::kernels::convert::{Out, Src};
use gpt_ablate::kernels::gemm::{self, Combine, Dims, Epilogue};
use gpt_ablate::kernels::Isa;
use half::{bf16, f16};

/// Deterministic values in about [-1, 1].
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ty {
    F32,
    Bf16,
    F16,
}

/// The same values in one dtype, kept alive for `Src`s to borrow.
enum Buf {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Buf {
    fn new(ty: Ty, v: &[f32]) -> Buf {
        match ty {
            Ty::F32 => Buf::F32(v.to_vec()),
            Ty::Bf16 => Buf::Bf16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            Ty::F16 => Buf::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
        }
    }
    fn src(&self) -> Src<'_> {
        match self {
            Buf::F32(v) => Src::F32(v),
            Buf::Bf16(v) => Src::Bf16(v),
            Buf::F16(v) => Src::F16(v),
        }
    }
    fn out(&mut self) -> Out {
        match self {
            Buf::F32(v) => Out::F32(v.as_mut_ptr()),
            Buf::Bf16(v) => Out::Bf16(v.as_mut_ptr()),
            Buf::F16(v) => Out::F16(v.as_mut_ptr()),
        }
    }
    fn f32s(&self) -> Vec<f32> {
        match self {
            Buf::F32(v) => v.clone(),
            Buf::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Buf::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }
}

fn tanh_in_place(xs: &mut [f32]) {
    xs.iter_mut().for_each(|x| *x = x.tanh());
}

/// One product on `isa` against the reference, with the given epilogue parts.
fn check(isa: Isa, ty: Ty, d: Dims, bias: bool, act: bool, with: Option<Combine>) {
    let x = Buf::new(ty, &values(d.n * d.k, 1 + d.n as u64));
    let w = Buf::new(ty, &values(d.m * d.k, 2 + d.k as u64));
    let b = Buf::new(ty, &values(d.m, 3));
    let r = Buf::new(ty, &values(d.n * d.m, 4));
    let epi = Epilogue {
        bias: bias.then(|| b.src()),
        act: act.then_some(tanh_in_place as fn(&mut [f32])),
        with: with.map(|op| (op, r.src())),
    };
    let (mut got, mut want) = (
        Buf::new(ty, &vec![f32::NAN; d.n * d.m]),
        Buf::new(ty, &vec![0.0; d.n * d.m]),
    );
    // SAFETY: both outputs hold n·m elements.
    unsafe {
        gemm::linear(isa, x.src(), w.src(), d, &epi, got.out());
        gemm::linear_reference(x.src(), w.src(), d, &epi, want.out());
    }
    // Sums of k products of values ≤ 1: f32 reassociation error ~ k·2⁻²⁴; outputs rounded
    // to bf16/f16 may differ by one unit in the last place of the output.
    let ulp = match ty {
        Ty::F32 => 0.0,
        Ty::Bf16 => 1.0 / 128.0,
        Ty::F16 => 1.0 / 1024.0,
    };
    let (got, want) = (got.f32s(), want.f32s());
    for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
        let tol = 4e-7 * d.k as f32 + ulp * w.abs().max(1.0);
        assert!(
            (g - w).abs() <= tol,
            "{isa} {ty:?} {d:?} bias={bias} act={act} with={with:?}: [{}, {}] {g} vs {w}",
            idx / d.m,
            idx % d.m
        );
    }
}

const SHAPES: [(usize, usize, usize); 15] = [
    (1, 7, 5),
    (2, 33, 70),
    (3, 64, 129),
    (4, 300, 67),
    (5, 17, 33),
    (13, 300, 97),
    (37, 513, 260),
    (100, 64, 600),
    (250, 1000, 70),
    // Rows 4 KiB apart (f32) crowd one L1 set: read in place all the same.
    (20, 1024, 70),
    (6, 1024, 1000),
    // W over the 8 MiB packing budget in f32: packed and multiplied in two slabs.
    (100, 2100, 1100),
    // x over the staging/packing budget (an odd k: bf16 is staged too): blocks of rows; and
    // the reduction in two blocks, the last of an odd length.
    (1100, 1031, 40),
    // Few rows, many columns: the product runs with the operands swapped.
    (6, 96, 3000),
    (7, 64, 9000),
];

#[test]
fn linear_matches_reference_on_every_level_and_dtype() {
    for isa in Isa::supported() {
        for ty in [Ty::F32, Ty::Bf16, Ty::F16] {
            for (n, k, m) in SHAPES {
                check(isa, ty, Dims { n, k, m }, false, false, None);
            }
        }
    }
}

#[test]
fn fused_epilogues_match_reference() {
    for isa in Isa::supported() {
        for ty in [Ty::F32, Ty::Bf16, Ty::F16] {
            for (n, k, m) in [(3, 40, 50), (30, 70, 90), (5, 40, 700)] {
                let d = Dims { n, k, m };
                check(isa, ty, d, true, false, None);
                check(isa, ty, d, true, true, None);
                check(isa, ty, d, true, false, Some(Combine::Add));
                check(isa, ty, d, false, true, Some(Combine::Mul));
            }
        }
    }
}

/// `m` rows of `cols` stored transposed: (cols, rows).
fn transposed(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows)
        .map(|i| v[(i % rows) * cols + i / rows])
        .collect()
}

#[test]
fn transposed_operands_give_the_same_product_on_every_level() {
    use gemm::Trans;
    for isa in Isa::supported() {
        for (n, k, m) in SHAPES {
            let d = Dims { n, k, m };
            let (x, w, b) = (values(n * k, 5), values(m * k, 6), values(m, 7));
            let epi = Epilogue {
                bias: Some(Src::F32(&b)),
                ..Epilogue::default()
            };
            let mut want = vec![0f32; n * m];
            // SAFETY: the output holds n·m elements.
            unsafe {
                gemm::linear_reference(
                    Src::F32(&x),
                    Src::F32(&w),
                    d,
                    &epi,
                    Out::F32(want.as_mut_ptr()),
                )
            };
            let (xt, wt) = (transposed(&x, n, k), transposed(&w, m, k));
            for (tx, tw) in [(true, false), (false, true), (true, true)] {
                let xs = if tx { &xt } else { &x };
                let ws = if tw { &wt } else { &w };
                let mut got = vec![f32::NAN; n * m];
                let trans = Trans { x: tx, w: tw };
                // SAFETY: as above.
                unsafe {
                    gemm::linear_transposed(
                        isa,
                        Src::F32(xs),
                        Src::F32(ws),
                        d,
                        trans,
                        &epi,
                        Out::F32(got.as_mut_ptr()),
                    )
                };
                for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 4e-7 * k as f32 + 1e-6,
                        "{isa} {d:?} {trans:?}: [{}, {}] {g} vs {w}",
                        idx / m,
                        idx % m
                    );
                }
            }
        }
    }
}
