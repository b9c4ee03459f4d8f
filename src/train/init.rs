//! Weights for a model trained from scratch, as transformers' `_init_weights` makes them:
//! matrices and embeddings drawn from N(0, initializer_range²) (GPT-2's residual projections
//! `c_proj` from N(0, (initializer_range / √(2·n_layer))²)), biases 0, norm weights 1. Each
//! tensor has its own stream of the seed, so the weights do not depend on the order they
//! are made in or on the device.

use candle_core::{Device, Tensor};

use crate::train::rng::SplitMix64;
use crate::weights::TensorMaker;

/// How to draw the initial weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Init {
    pub seed: u64,
    /// Standard deviation of the matrices (`initializer_range`, OPT's `init_std`).
    pub std: f64,
    /// GPT-2's depth scaling of `c_proj` weights: the number of layers.
    pub gpt2_layers: Option<usize>,
}

impl Init {
    /// The standard deviation of the tensor `key`.
    fn std_of(&self, key: &str) -> f64 {
        match self.gpt2_layers {
            Some(n) if key.ends_with("c_proj.weight") => self.std / (2.0 * n as f64).sqrt(),
            _ => self.std,
        }
    }

    /// The tensor `key` of `shape`, in f32 on the CPU.
    pub fn make(&self, key: &str, shape: &[usize]) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        if key.ends_with(".bias") {
            return Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu);
        }
        if shape.len() == 1 {
            return Tensor::ones(shape, candle_core::DType::F32, &Device::Cpu);
        }
        let std = self.std_of(key);
        let mut g = SplitMix64::derived(self.seed, &format!("init {key}"));
        let values: Vec<f32> = (0..n).map(|_| (g.normal() * std) as f32).collect();
        Tensor::from_vec(values, shape, &Device::Cpu)
    }

    /// The maker of a [`crate::weights::TensorStore::generated`] store.
    pub fn maker(self) -> TensorMaker {
        Box::new(move |key, shape| self.make(key, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_per_tensor_streams_with_the_hf_rules() {
        let init = Init {
            seed: 3,
            std: 0.02,
            gpt2_layers: Some(8),
        };
        let w = init.make("h.0.mlp.c_fc.weight", &[64, 256]).unwrap();
        let v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let std =
            (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(
            mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3,
            "{mean} {std}"
        );
        let p = init.make("h.0.mlp.c_proj.weight", &[256, 64]).unwrap();
        let pv: Vec<f32> = p.flatten_all().unwrap().to_vec1().unwrap();
        let pstd = (pv.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / pv.len() as f64).sqrt();
        assert!((pstd - 0.005).abs() < 3e-4, "{pstd}");
        let again: Vec<f32> = init
            .make("h.0.mlp.c_fc.weight", &[64, 256])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(v, again);
        let b: Vec<f32> = init.make("h.0.ln_1.bias", &[4]).unwrap().to_vec1().unwrap();
        let g: Vec<f32> = init
            .make("h.0.ln_1.weight", &[4])
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!((b, g), (vec![0.0; 4], vec![1.0; 4]));
    }
}
