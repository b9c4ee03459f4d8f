//! The linear layer every block uses: `y = x·Wᵀ + b` with W stored (out, in). One type so
//! that the matrix-multiply path (dtype- and CPU-feature-specific kernels) is chosen in one
//! place.

use candle_core::{Module, Result, Tensor};

#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// `weight` (out, in), `bias` (out,).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            inner: candle_nn::Linear::new(weight, bias),
        }
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    /// `x`: (…, in) → (…, out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }
}
