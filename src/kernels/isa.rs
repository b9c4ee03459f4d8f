//! Which instruction set the CPU kernels run with, decided once at run time.
//!
//! Levels, each including the ones below it:
//! - [`Isa::Portable`]: plain Rust (whatever the compiler's baseline target gives);
//! - [`Isa::Avx2`]: AVX2 + FMA + F16C (bf16 and f16 are converted to f32 while packing);
//! - [`Isa::Avx512`]: AVX-512 F/BW/VL (f32 compute on 16 lanes);
//! - [`Isa::Avx512Bf16`]: AVX-512 with `avx512_bf16` (`vdpbf16ps`: bf16 products, f32 sums).
//!
//! `GPT_ABLATE_KERNELS=portable|avx2|avx512|avx512bf16` caps the level (to measure or test
//! the paths another machine would take); `GPT_ABLATE_LOG_KERNELS=1` names the level chosen on
//! standard error, once.

use std::fmt;
use std::sync::OnceLock;

/// An instruction-set level of the CPU kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
    Avx512Bf16,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16];

    /// The level the kernels use: the best this CPU has, capped by `GPT_ABLATE_KERNELS`.
    pub fn get() -> Isa {
        static CHOSEN: OnceLock<Isa> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let hw = Isa::hardware();
            let isa = std::env::var("GPT_ABLATE_KERNELS")
                .ok()
                .and_then(|s| s.parse::<Isa>().ok())
                .map_or(hw, |cap| cap.min(hw));
            if std::env::var_os("GPT_ABLATE_LOG_KERNELS").is_some_and(|v| v != "0") {
                eprintln!("gpt-ablate kernels: {isa} (CPU supports up to {hw})");
            }
            isa
        })
    }

    /// The best level this CPU supports.
    pub fn hardware() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            let avx512 = avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl");
            if avx512 && has!("avx512bf16") {
                return Isa::Avx512Bf16;
            }
            if avx512 {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every level this CPU can run, lowest first (what the tests compare).
    pub fn supported() -> Vec<Isa> {
        let hw = Isa::hardware();
        Isa::ALL.into_iter().filter(|&i| i <= hw).collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase().replace(['-', '_'], "");
        Isa::ALL.into_iter().find(|i| i.name() == s).ok_or_else(|| {
            format!("unknown kernel level '{s}' (portable, avx2, avx512, avx512bf16)")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!("AVX512-BF16".parse::<Isa>().unwrap(), Isa::Avx512Bf16);
        assert_eq!("portable".parse::<Isa>().unwrap(), Isa::Portable);
        assert!("sse".parse::<Isa>().is_err());
        assert!(Isa::Avx2 < Isa::Avx512);
        assert!(Isa::supported().contains(&Isa::Portable));
        assert!(Isa::get() <= Isa::hardware());
    }
}
