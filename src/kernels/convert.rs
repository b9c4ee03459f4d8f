//! Slices in the three compute dtypes (f32, bf16, f16) and their conversion to and from f32,
//! vectorised per [`Isa`]: bf16 by bit shifts (round to nearest even on the way down, as
//! `half` and PyTorch do), f16 with the F16C instructions where the CPU has them.

use candle_core::{DType, Device, Layout, Result, Shape, Storage, Tensor};
use half::{bf16, f16};

use super::isa::Isa;

/// A read-only run of elements in one of the compute dtypes.
#[derive(Debug, Clone, Copy)]
pub enum Src<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

impl<'a> Src<'a> {
    pub fn len(&self) -> usize {
        match self {
            Src::F32(s) => s.len(),
            Src::Bf16(s) => s.len(),
            Src::F16(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `start..start + len`.
    pub fn slice(&self, start: usize, len: usize) -> Src<'a> {
        match *self {
            Src::F32(s) => Src::F32(&s[start..start + len]),
            Src::Bf16(s) => Src::Bf16(&s[start..start + len]),
            Src::F16(s) => Src::F16(&s[start..start + len]),
        }
    }

    /// Bytes per element.
    pub fn elem_size(&self) -> usize {
        match self {
            Src::F32(_) => 4,
            _ => 2,
        }
    }
}

/// A raw output buffer in one of the compute dtypes, shared by tasks that write disjoint
/// elements of it.
#[derive(Debug, Clone, Copy)]
pub enum Out {
    F32(*mut f32),
    Bf16(*mut bf16),
    F16(*mut f16),
}

// SAFETY: an `Out` is only a pointer; the kernels that share one write disjoint elements.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// A contiguous CPU tensor's elements, when they are f32, bf16 or f16.
pub fn cpu_slice<'a>(storage: &'a Storage, layout: &Layout) -> Option<Src<'a>> {
    let (a, b) = layout.contiguous_offsets()?;
    match storage {
        Storage::Cpu(candle_core::CpuStorage::F32(v)) => Some(Src::F32(&v[a..b])),
        Storage::Cpu(candle_core::CpuStorage::BF16(v)) => Some(Src::Bf16(&v[a..b])),
        Storage::Cpu(candle_core::CpuStorage::F16(v)) => Some(Src::F16(&v[a..b])),
        _ => None,
    }
}

/// A new CPU tensor of `dtype` (f32, bf16 or f16) and `shape`, filled by `fill`.
///
/// # Safety
/// `fill` must write every element of the buffer it is given.
pub unsafe fn new_tensor(dtype: DType, shape: Shape, fill: impl FnOnce(Out)) -> Result<Tensor> {
    unsafe fn make<T: candle_core::WithDType>(
        shape: Shape,
        fill: impl FnOnce(*mut T),
    ) -> Result<Tensor> {
        let len = shape.elem_count();
        let mut v = Vec::<T>::with_capacity(len);
        fill(v.as_mut_ptr());
        v.set_len(len);
        Tensor::from_vec(v, shape, &Device::Cpu)
    }
    match dtype {
        DType::F32 => make::<f32>(shape, |p| fill(Out::F32(p))),
        DType::BF16 => make::<bf16>(shape, |p| fill(Out::Bf16(p))),
        DType::F16 => make::<f16>(shape, |p| fill(Out::F16(p))),
        other => candle_core::bail!("unsupported dtype {other:?}"),
    }
}

/// bf16 bits of `x`, rounded to nearest even; NaN stays a (quiet) NaN. Branch-free, so that
/// loops over it vectorise.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    let quiet = ((b >> 16) | 0x40) as u16;
    if x.is_nan() {
        quiet
    } else {
        rounded
    }
}

/// The f32 value of bf16 bits.
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Each value rounded to `dtype` and back to f32, as a cast to the compute dtype and back
/// gives (f32 and other dtypes leave the values as they are).
pub fn round_through(isa: Isa, dtype: DType, x: &mut [f32]) {
    match dtype {
        DType::BF16 => x.iter_mut().for_each(|v| *v = bf16_to_f32(bf16_bits(*v))),
        DType::F16 => {
            let mut tmp = [f16::ZERO; 64];
            for chunk in x.chunks_mut(64) {
                let t = &mut tmp[..chunk.len()];
                // SAFETY: `t` holds chunk.len() values.
                unsafe { store(isa, chunk, Out::F16(t.as_mut_ptr()), 0) };
                load(isa, Src::F16(t), 0, chunk);
            }
        }
        _ => {}
    }
}

/// `dst[i] = src[start + i]` as f32.
pub fn load(isa: Isa, src: Src, start: usize, dst: &mut [f32]) {
    let n = dst.len();
    match src {
        Src::F32(s) => dst.copy_from_slice(&s[start..start + n]),
        Src::Bf16(s) => bf16_load(isa, &s[start..start + n], dst),
        Src::F16(s) => f16_load(isa, &s[start..start + n], dst),
    }
}

fn bf16_load(isa: Isa, src: &[bf16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: the level implies the CPU has AVX2.
        unsafe { bf16_load_avx2(src, dst) };
        return;
    }
    let _ = isa;
    bf16_load_generic(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bf16_load_avx2(src: &[bf16], dst: &mut [f32]) {
    bf16_load_generic(src, dst)
}

#[inline(always)]
fn bf16_load_generic(src: &[bf16], dst: &mut [f32]) {
    for (d, h) in dst.iter_mut().zip(src) {
        *d = bf16_to_f32(h.to_bits());
    }
}

/// `out[start + i] = src[i]`, rounded to the output dtype.
///
/// # Safety
/// `out` must be valid for writes of `start + src.len()` elements, none of which another
/// thread accesses meanwhile.
pub unsafe fn store(isa: Isa, src: &[f32], out: Out, start: usize) {
    let n = src.len();
    match out {
        Out::F32(p) => std::ptr::copy_nonoverlapping(src.as_ptr(), p.add(start), n),
        Out::Bf16(p) => {
            let d = std::slice::from_raw_parts_mut(p.add(start) as *mut u16, n);
            bf16_store(isa, src, d);
        }
        Out::F16(p) => {
            let d = std::slice::from_raw_parts_mut(p.add(start), n);
            f16_store(isa, src, d);
        }
    }
}

fn bf16_store(isa: Isa, src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: the level implies the CPU has AVX2.
        unsafe { bf16_store_avx2(src, dst) };
        return;
    }
    let _ = isa;
    bf16_store_generic(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bf16_store_avx2(src: &[f32], dst: &mut [u16]) {
    bf16_store_generic(src, dst)
}

#[inline(always)]
fn bf16_store_generic(src: &[f32], dst: &mut [u16]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = bf16_bits(x);
    }
}

fn f16_load(isa: Isa, src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: the level implies the CPU has AVX2 and F16C.
        unsafe { f16_load_f16c(src, dst) };
        return;
    }
    let _ = isa;
    for (d, h) in dst.iter_mut().zip(src) {
        *d = h.to_f32_const();
    }
}

fn f16_store(isa: Isa, src: &[f32], dst: &mut [f16]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: the level implies the CPU has AVX2 and F16C.
        unsafe { f16_store_f16c(src, dst) };
        return;
    }
    let _ = isa;
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = f16::from_f32_const(x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_load_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = dst.len().min(src.len());
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
    for j in i..n {
        dst[j] = src[j].to_f32_const();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_store_f16c(src: &[f32], dst: &mut [f16]) {
    use std::arch::x86_64::*;
    let n = dst.len().min(src.len());
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_loadu_ps(src.as_ptr().add(i));
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
        _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
        i += 8;
    }
    for j in i..n {
        dst[j] = f16::from_f32_const(src[j]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<f32> {
        let mut v: Vec<f32> = (0..3000)
            .map(|i| ((i as f32) * 0.37).sin() * 1e3 / (1 + i % 97) as f32)
            .collect();
        v.extend([
            0.0,
            -0.0,
            1e-40,
            65504.0,
            7e4,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3.0e38,
        ]);
        v.extend([
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
            f32::NAN,
        ]);
        v
    }

    #[test]
    fn conversions_round_like_half_on_every_level() {
        let xs = samples();
        for isa in Isa::supported() {
            let mut b = vec![bf16::ZERO; xs.len()];
            let mut h = vec![f16::ZERO; xs.len()];
            // SAFETY: the buffers hold xs.len() elements.
            unsafe {
                store(isa, &xs, Out::Bf16(b.as_mut_ptr()), 0);
                store(isa, &xs, Out::F16(h.as_mut_ptr()), 0);
            }
            for (i, &x) in xs.iter().enumerate() {
                let (wb, wh) = (bf16::from_f32(x), f16::from_f32(x));
                assert!(
                    b[i] == wb || (x.is_nan() && b[i].is_nan()),
                    "{isa} bf16({x})"
                );
                assert!(
                    h[i] == wh || (x.is_nan() && h[i].is_nan()),
                    "{isa} f16({x})"
                );
            }
            let mut back = vec![0f32; xs.len()];
            load(isa, Src::F16(&h), 0, &mut back);
            for (i, v) in back.iter().enumerate() {
                assert!(*v == h[i].to_f32() || v.is_nan(), "{isa} f16 load");
            }
            load(isa, Src::Bf16(&b), 0, &mut back);
            for (i, v) in back.iter().enumerate() {
                assert!(*v == b[i].to_f32() || v.is_nan(), "{isa} bf16 load");
            }
        }
    }
}
