//! Which layers an activation swap touches: the `--layers` spec (`all`, or `0,3,5-7`) and the
//! per-layer activation plan the model is built from.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::model::activation::Activation;

/// A set of layer indices, as written on the command line. Parsing checks the syntax;
/// [`LayerSpec::resolve`] checks the indices against a model's depth.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LayerSpec {
    #[default]
    All,
    Some(BTreeSet<usize>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayerSpecError {
    #[error("layer spec '{spec}': {msg} (expected 'all' or a comma list of indices and ranges, e.g. '0,3,5-7')")]
    Syntax { spec: String, msg: String },
    #[error("layer {index} is out of range: the model has {n_layer} layers (0-{})", n_layer - 1)]
    OutOfRange { index: usize, n_layer: usize },
}

impl FromStr for LayerSpec {
    type Err = LayerSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let syntax = |msg: String| LayerSpecError::Syntax {
            spec: spec.to_string(),
            msg,
        };
        let trimmed = spec.trim();
        if trimmed.eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        if trimmed.is_empty() {
            return Err(syntax("empty".into()));
        }
        let index = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| syntax(format!("'{}' is not a layer index", s.trim())))
        };
        let mut set = BTreeSet::new();
        for part in trimmed.split(',') {
            match part.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (index(lo)?, index(hi)?);
                    if lo > hi {
                        return Err(syntax(format!("range {lo}-{hi} is backwards")));
                    }
                    set.extend(lo..=hi);
                }
                None => {
                    set.insert(index(part)?);
                }
            }
        }
        Ok(Self::Some(set))
    }
}

impl LayerSpec {
    /// The indices this spec names in a model with `n_layer` layers.
    pub fn resolve(&self, n_layer: usize) -> Result<Vec<usize>, LayerSpecError> {
        match self {
            Self::All => Ok((0..n_layer).collect()),
            Self::Some(set) => {
                if let Some(&index) = set.iter().find(|&&i| i >= n_layer) {
                    return Err(LayerSpecError::OutOfRange { index, n_layer });
                }
                Ok(set.iter().copied().collect())
            }
        }
    }
}

impl fmt::Display for LayerSpec {
    /// The canonical spelling: `all`, or sorted indices with runs folded into ranges.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Some(set) => f.write_str(&format_indices(set.iter().copied())),
        }
    }
}

/// `[0, 1, 2, 5]` → `"0-2,5"`.
pub fn format_indices(indices: impl IntoIterator<Item = usize>) -> String {
    let mut parts = Vec::new();
    let mut run: Option<(usize, usize)> = None;
    for i in indices {
        run = match run {
            Some((lo, hi)) if i == hi + 1 => Some((lo, i)),
            Some(r) => {
                parts.push(r);
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    parts.extend(run);
    parts
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The activation each layer's MLP uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationPlan {
    pub original: Activation,
    pub per_layer: Vec<Activation>,
}

impl ActivationPlan {
    /// Every layer keeps the checkpoint's activation.
    pub fn original(original: Activation, n_layer: usize) -> Self {
        Self {
            original,
            per_layer: vec![original; n_layer],
        }
    }

    /// Swaps `activation` into the layers `spec` names.
    pub fn swap(
        mut self,
        activation: Activation,
        spec: &LayerSpec,
    ) -> Result<Self, LayerSpecError> {
        for i in spec.resolve(self.per_layer.len())? {
            self.per_layer[i] = activation;
        }
        Ok(self)
    }

    /// Indices of the layers whose activation differs from the checkpoint's.
    pub fn swapped_layers(&self) -> Vec<usize> {
        (0..self.per_layer.len())
            .filter(|&i| self.per_layer[i] != self.original)
            .collect()
    }

    /// A short description: `gelu_new` when unchanged, `relu@0-3` or
    /// `relu@0-1,sigmoid@2` otherwise.
    pub fn describe(&self) -> String {
        let swapped = self.swapped_layers();
        if swapped.is_empty() {
            return self.original.to_string();
        }
        let mut by_act: Vec<(Activation, Vec<usize>)> = Vec::new();
        for i in swapped {
            let a = self.per_layer[i];
            match by_act.iter_mut().find(|(b, _)| *b == a) {
                Some((_, v)) => v.push(i),
                None => by_act.push((a, vec![i])),
            }
        }
        let all_same = by_act.len() == 1 && by_act[0].1.len() == self.per_layer.len();
        if all_same {
            return by_act[0].0.to_string();
        }
        by_act
            .iter()
            .map(|(a, v)| format!("{a}@{}", format_indices(v.iter().copied())))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_indices_and_ranges() {
        let s: LayerSpec = "0,3,5-7".parse().unwrap();
        assert_eq!(s.resolve(8).unwrap(), vec![0, 3, 5, 6, 7]);
        assert_eq!(s.to_string(), "0,3,5-7");
        assert_eq!(" ALL ".parse::<LayerSpec>().unwrap(), LayerSpec::All);
        assert_eq!(
            "2, 1 ,2".parse::<LayerSpec>().unwrap().resolve(3).unwrap(),
            vec![1, 2]
        );
        assert_eq!(LayerSpec::All.resolve(3).unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn rejects_malformed_and_out_of_range() {
        for bad in ["", "x", "1,,2", "3-1", "-1", "1-", "1.5", "0-2-4"] {
            let err = bad.parse::<LayerSpec>().unwrap_err();
            assert!(matches!(err, LayerSpecError::Syntax { .. }), "{bad}: {err}");
        }
        let err = "0,12"
            .parse::<LayerSpec>()
            .unwrap()
            .resolve(12)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer 12 is out of range: the model has 12 layers (0-11)"
        );
    }

    #[test]
    fn plan_swaps_only_chosen_layers_and_describes_itself() {
        let plan = ActivationPlan::original(Activation::GeluNew, 4);
        assert_eq!(plan.describe(), "gelu_new");
        let p = plan
            .clone()
            .swap(Activation::Relu, &"1-2".parse().unwrap())
            .unwrap();
        assert_eq!(p.per_layer[0], Activation::GeluNew);
        assert_eq!(p.per_layer[1], Activation::Relu);
        assert_eq!(p.swapped_layers(), vec![1, 2]);
        assert_eq!(p.describe(), "relu@1-2");
        let all = plan
            .clone()
            .swap(Activation::Tanh, &LayerSpec::All)
            .unwrap();
        assert_eq!(all.describe(), "tanh");
        let same = plan.swap(Activation::GeluNew, &LayerSpec::All).unwrap();
        assert!(same.swapped_layers().is_empty());
    }
}

/// Activations for chosen layers, as written in a grid config: one name for every layer
/// (`"relu"`), or per-layer entries `"0-1:relu,2-3:sigmoid"` (indices and ranges before each
/// `:`, as in `--layers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationMap(pub Vec<(LayerSpec, Activation)>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivationMapError {
    #[error(transparent)]
    Activation(#[from] crate::model::activation::UnknownActivation),
    #[error(transparent)]
    Layers(#[from] LayerSpecError),
    #[error("'{0}': expected an activation name or entries like '0-1:relu,2-3:sigmoid'")]
    Syntax(String),
    #[error(
        "'{map}': {layers} given two activations ({first} and {second}); name each layer once"
    )]
    Overlap {
        map: String,
        /// `layer 2` or `layers 1-2`, or `all layers`.
        layers: String,
        first: Activation,
        second: Activation,
    },
}

impl FromStr for ActivationMap {
    type Err = ActivationMapError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.contains(':') {
            return Ok(Self(vec![(LayerSpec::All, s.parse()?)]));
        }
        // Indices accumulate until an entry carries `:name`. Commas inside parentheses belong
        // to an `affine(NAME, a, b)`.
        let mut entries = Vec::new();
        let mut pending: Vec<&str> = Vec::new();
        for part in split_outside_parens(s) {
            match part.split_once(':') {
                Some((layers, name)) => {
                    pending.push(layers);
                    let spec: LayerSpec = pending.join(",").parse()?;
                    entries.push((spec, name.parse()?));
                    pending.clear();
                }
                None => pending.push(part),
            }
        }
        if !pending.is_empty() {
            return Err(ActivationMapError::Syntax(s.to_string()));
        }
        check_overlaps(s, &entries)?;
        Ok(Self(entries))
    }
}

/// Fails when two entries of a per-layer map name the same layer (or one names all).
fn check_overlaps(
    map: &str,
    entries: &[(LayerSpec, Activation)],
) -> Result<(), ActivationMapError> {
    for (i, (a, act_a)) in entries.iter().enumerate() {
        for (b, act_b) in &entries[i + 1..] {
            let shared: Vec<usize> = match (a, b) {
                (LayerSpec::Some(x), LayerSpec::Some(y)) => x.intersection(y).copied().collect(),
                (LayerSpec::Some(x), LayerSpec::All) | (LayerSpec::All, LayerSpec::Some(x)) => {
                    x.iter().copied().collect()
                }
                (LayerSpec::All, LayerSpec::All) => {
                    return Err(overlap(map, "all layers".into(), *act_a, *act_b))
                }
            };
            if !shared.is_empty() {
                let noun = if shared.len() == 1 { "layer" } else { "layers" };
                let layers = format!("{noun} {}", format_indices(shared));
                return Err(overlap(map, layers, *act_a, *act_b));
            }
        }
    }
    Ok(())
}

fn overlap(map: &str, layers: String, first: Activation, second: Activation) -> ActivationMapError {
    ActivationMapError::Overlap {
        map: map.to_string(),
        layers,
        first,
        second,
    }
}

/// `s` split at the commas that are not inside parentheses.
fn split_outside_parens(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

impl ActivationMap {
    /// The activation of a map that puts one activation in every layer (`"relu"`).
    pub fn single(&self) -> Option<Activation> {
        match &self.0[..] {
            [(LayerSpec::All, act)] => Some(*act),
            _ => None,
        }
    }

    /// Applies every entry, in order, to `plan`.
    pub fn apply(&self, mut plan: ActivationPlan) -> Result<ActivationPlan, LayerSpecError> {
        for (spec, act) in &self.0 {
            plan = plan.swap(*act, spec)?;
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod map_tests {
    use super::*;

    #[test]
    fn parses_single_and_per_layer_maps() {
        let plan = ActivationPlan::original(Activation::GeluNew, 4);
        let m: ActivationMap = "relu".parse().unwrap();
        assert_eq!(
            m.apply(plan.clone()).unwrap().per_layer,
            vec![Activation::Relu; 4]
        );
        let m: ActivationMap = "0-1:relu,3:sigmoid".parse().unwrap();
        let p = m.apply(plan.clone()).unwrap();
        use Activation::*;
        assert_eq!(p.per_layer, vec![Relu, Relu, GeluNew, Sigmoid]);
        let m: ActivationMap = "0:affine(sigmoid, 4, -2),1-2:relu".parse().unwrap();
        let p = m.apply(plan.clone()).unwrap();
        assert_eq!(p.per_layer[0], Activation::affine(Sigmoid, 4.0, -2.0));
        assert_eq!(p.describe(), "affine(sigmoid,4,-2)@0,relu@1-2");
        let m: ActivationMap = "0,2:tanh".parse().unwrap();
        assert_eq!(
            m.apply(plan.clone()).unwrap().per_layer,
            vec![Tanh, GeluNew, Tanh, GeluNew]
        );
        assert!(matches!(
            "0:relu,2".parse::<ActivationMap>(),
            Err(ActivationMapError::Syntax(_))
        ));
        assert!("0:nope"
            .parse::<ActivationMap>()
            .unwrap_err()
            .to_string()
            .contains("unknown activation 'nope'"));
        let err = "0-2:relu,1-3:sigmoid".parse::<ActivationMap>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "'0-2:relu,1-3:sigmoid': layers 1-2 given two activations (relu and sigmoid); name each layer once"
        );
        let err = "0:relu,all:tanh".parse::<ActivationMap>().unwrap_err();
        assert!(err.to_string().contains("layer 0 given two"), "{err}");
        assert!("0,1:relu,2:relu".parse::<ActivationMap>().is_ok());
        assert_eq!(
            "relu".parse::<ActivationMap>().unwrap().single(),
            Some(Relu)
        );
        assert_eq!("0:relu".parse::<ActivationMap>().unwrap().single(), None);
        let err = "7:relu"
            .parse::<ActivationMap>()
            .unwrap()
            .apply(plan)
            .unwrap_err();
        assert!(err.to_string().contains("layer 7 is out of range"));
    }
}
