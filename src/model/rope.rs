//! Rotary position embeddings: the inverse frequencies for each `rope_scaling` type
//! transformers implements for the supported families, the cos/sin tables, and their
//! application (fast kernel or differentiable composition).

use candle_core::{DType, Device, Result, Tensor};

use crate::kernels::rope as kernel;
use crate::model::decoder::Mode;

/// How the rotary frequencies are scaled (`rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Unscaled: `inv_freq_i = base^(−2i/rot)`.
    Default,
    /// Positions divided by `factor` (`"linear"`).
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling (`"llama3"`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

impl std::fmt::Display for RopeScaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("unscaled"),
            Self::Linear { factor } => write!(f, "linear scaling ×{factor}"),
            Self::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => write!(
                f,
                "llama3 scaling ×{factor} (low {low_freq_factor}, high {high_freq_factor}, original length {original_max_position_embeddings})"
            ),
        }
    }
}

/// Rotary embedding of the first `rot` dimensions of each head.
#[derive(Debug, Clone)]
pub struct Rope {
    /// (max positions, rot/2) f32
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// Tables for positions `0..max_positions`, computed as transformers does: inverse
    /// frequencies and angles in f32, cos/sin in f32.
    pub fn new(
        rot: usize,
        base: f64,
        scaling: &RopeScaling,
        max_positions: usize,
        device: &Device,
    ) -> Result<Self> {
        let inv_freq = inv_freq(rot, base, scaling);
        let (half, n) = (inv_freq.len(), max_positions);
        let mut angles = Vec::with_capacity(n * half);
        for p in 0..n {
            angles.extend(inv_freq.iter().map(|&f| p as f32 * f));
        }
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        Ok(Self {
            cos: Tensor::from_vec(cos, (n, half), device)?,
            sin: Tensor::from_vec(sin, (n, half), device)?,
        })
    }

    /// `x` (b, t, H·d) at positions `start..start + t`, rotated; contiguous.
    pub fn apply(&self, x: &Tensor, n_head: usize, start: usize, mode: Mode) -> Result<Tensor> {
        let t = x.dim(1)?;
        let cos = self.cos.narrow(0, start, t)?;
        let sin = self.sin.narrow(0, start, t)?;
        match mode {
            Mode::Fast => kernel::apply(x, n_head, &cos, &sin),
            Mode::Differentiable => kernel::apply_composed(x, n_head, &cos, &sin),
        }
    }

    pub fn dtype(&self) -> DType {
        self.cos.dtype()
    }
}

/// The inverse frequencies (rot/2 of them), in f32 as transformers computes them.
pub fn inv_freq(rot: usize, base: f64, scaling: &RopeScaling) -> Vec<f32> {
    let base = base as f32;
    let plain = (0..rot / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / rot as f32));
    match *scaling {
        RopeScaling::Default => plain.collect(),
        RopeScaling::Linear { factor } => plain.map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => plain
            .map(|f| llama3(f as f64, factor, low_freq_factor, high_freq_factor, old) as f32)
            .collect(),
    }
}

/// `_compute_llama3_parameters`: long wavelengths divided by `factor`, short ones kept, and
/// a smooth blend between.
fn llama3(f: f64, factor: f64, low: f64, high: f64, old: f64) -> f64 {
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    let wavelen = 2.0 * std::f64::consts::PI / f;
    if wavelen > low_wavelen {
        f / factor
    } else if wavelen < high_wavelen {
        f
    } else {
        let smooth = (old / wavelen - low) / (high - low);
        (1.0 - smooth) * f / factor + smooth * f
    }
}

/// The rotary settings a config gives, wherever it gives them: transformers 5's
/// `rope_parameters`, the older `rope_scaling` with a top-level `rope_theta`, or GPT-NeoX's
/// `rotary_emb_base` / `rotary_pct`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RopeFields {
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    #[serde(default)]
    pub rotary_emb_base: Option<f64>,
    #[serde(default)]
    pub rotary_pct: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
}

/// Resolved rotary settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    /// Fraction of each head that rotates.
    pub partial: f64,
    pub scaling: RopeScaling,
}

impl RopeFields {
    /// Resolves the settings as transformers does, with the family's default fraction
    /// (GPT-NeoX: 0.25, others 1.0) and `max_positions` as the default original length.
    pub fn resolve(
        &self,
        default_partial: f64,
        max_positions: usize,
    ) -> std::result::Result<RopeSpec, String> {
        let empty = serde_json::Map::new();
        let dict = match self.rope_scaling.as_ref().or(self.rope_parameters.as_ref()) {
            None | Some(serde_json::Value::Null) => &empty,
            Some(serde_json::Value::Object(m)) => m,
            Some(_) => return Err("rope_parameters must be an object".into()),
        };
        let num = |key: &str| -> std::result::Result<Option<f64>, String> {
            match dict.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| format!("rope_parameters.{key} must be a number")),
            }
        };
        let theta = num("rope_theta")?
            .or(self.rope_theta)
            .or(self.rotary_emb_base)
            .unwrap_or(10_000.0);
        let partial = num("partial_rotary_factor")?
            .or(self.partial_rotary_factor)
            .or(self.rotary_pct)
            .unwrap_or(default_partial);
        let kind = dict
            .get("rope_type")
            .or_else(|| dict.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let need = |key: &str| num(key)?.ok_or_else(|| format!("rope_parameters.{key} is missing"));
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: need("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position_embeddings: self
                    .original_max_position_embeddings
                    .or(num("original_max_position_embeddings")?)
                    .unwrap_or(max_positions as f64),
            },
            other => {
                return Err(format!(
                    "rope type '{other}' is not supported (supported: default, linear, llama3)"
                ))
            }
        };
        if !(theta > 0.0 && theta.is_finite()) {
            return Err(format!("rope_theta must be a positive number, got {theta}"));
        }
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(format!(
                "partial_rotary_factor must be in (0, 1], got {partial}"
            ));
        }
        Ok(RopeSpec {
            theta,
            partial,
            scaling,
        })
    }
}

/// The shared tables of a rotary family, or the config's rope error as a load error.
pub fn shared(
    spec: std::result::Result<RopeSpec, String>,
    head_dim: usize,
    max_positions: usize,
    device: &Device,
) -> std::result::Result<std::sync::Arc<Rope>, crate::weights::LoadError> {
    let rope = spec.and_then(|r| {
        r.build(head_dim, max_positions, device)
            .map_err(|e| e.to_string())
    });
    rope.map(std::sync::Arc::new)
        .map_err(|msg| crate::weights::LoadError::Config { msg })
}

impl RopeSpec {
    /// Rotated dimensions of a head of `head_dim` (`int(head_dim · partial)`), made even.
    pub fn rot_dims(&self, head_dim: usize) -> usize {
        let r = (head_dim as f64 * self.partial) as usize;
        r - r % 2
    }

    /// The tables for a model of `max_positions` positions.
    pub fn build(&self, head_dim: usize, max_positions: usize, device: &Device) -> Result<Rope> {
        Rope::new(
            self.rot_dims(head_dim),
            self.theta,
            &self.scaling,
            max_positions,
            device,
        )
    }
}
