//! A grid's cells — one per model × dataset × variant, a layer sweep expanding to one cell
//! per layer — and the shards that split them between runs.

use std::str::FromStr;

use crate::grid::config::{Grid, Variant};
use crate::grid::training::Finetune;
use crate::model::plan::{ActivationPlan, LayerSpec};

/// One unit of work: a model, a dataset and the activation of every layer.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Position in the full expansion (shards take index mod N).
    pub index: usize,
    pub model: usize,
    pub dataset: usize,
    /// Variant name (`relu`, `sigmoid sweep@L3`, or the baseline's name).
    pub name: String,
    pub is_baseline: bool,
    /// For sweep cells: the sweep's name and the layer.
    pub sweep: Option<(String, usize)>,
    pub plan: ActivationPlan,
    /// Add per-layer diagnostics to this cell's row.
    pub diagnose: bool,
    /// Fine-tune after the swap and score again.
    pub finetune: Option<Finetune>,
    /// Calibrate the swap on the dataset before scoring.
    pub calibrate: bool,
}

/// A cell before it is placed in the grid (index, model and dataset).
struct CellSpec {
    name: String,
    is_baseline: bool,
    sweep: Option<(String, usize)>,
    plan: ActivationPlan,
    diagnose: bool,
    finetune: Option<Finetune>,
    calibrate: bool,
}

impl Grid {
    /// Every cell, in order: per model, per dataset, the baseline then each variant (sweeps
    /// expanded layer by layer).
    pub fn cells(&self) -> Vec<Cell> {
        let mut out = Vec::new();
        for (mi, cfg) in self.model_configs.iter().enumerate() {
            // Validated in `parse`, so the config's own activation is known.
            let specs = self.cells_of_model(cfg.plan());
            for di in 0..self.datasets.len() {
                for s in &specs {
                    out.push(Cell {
                        index: out.len(),
                        model: mi,
                        dataset: di,
                        name: s.name.clone(),
                        is_baseline: s.is_baseline,
                        sweep: s.sweep.clone(),
                        plan: s.plan.clone(),
                        diagnose: s.diagnose,
                        finetune: s.finetune.clone(),
                        calibrate: s.calibrate,
                    });
                }
            }
        }
        out
    }

    /// The cells of one model on one dataset: the baseline, then each variant.
    fn cells_of_model(&self, base_plan: ActivationPlan) -> Vec<CellSpec> {
        let mut specs = vec![CellSpec {
            name: self.baseline_name.clone(),
            is_baseline: true,
            sweep: None,
            plan: base_plan.clone(),
            diagnose: self.baseline_diagnose,
            finetune: None,
            calibrate: false,
        }];
        for v in &self.variants {
            if v.sweep_layers {
                specs.extend(sweep_cells(v, &base_plan));
            } else {
                let plan = v
                    .map
                    .apply(base_plan.clone())
                    .unwrap_or_else(|_| base_plan.clone());
                specs.push(CellSpec {
                    name: v.name.clone(),
                    is_baseline: false,
                    sweep: None,
                    plan,
                    diagnose: v.diagnose,
                    finetune: v.finetune.clone(),
                    calibrate: v.calibrate,
                });
            }
        }
        specs
    }
}

/// A sweep variant's cells: its activation in one layer at a time, over the layers its map
/// names (every layer, or those of `layers = "…"`).
fn sweep_cells(v: &Variant, base_plan: &ActivationPlan) -> Vec<CellSpec> {
    let (layers, act) = &v.map.0[0];
    let act = *act;
    // Validated against every model in `parse`.
    let layers = layers
        .resolve(base_plan.per_layer.len())
        .unwrap_or_default();
    layers
        .into_iter()
        .map(|layer| {
            let spec = LayerSpec::Some([layer].into());
            let plan = base_plan
                .clone()
                .swap(act, &spec)
                .unwrap_or_else(|_| base_plan.clone());
            CellSpec {
                name: format!("{}@L{layer}", v.name),
                is_baseline: false,
                sweep: Some((v.name.clone(), layer)),
                plan,
                diagnose: v.diagnose,
                finetune: v.finetune.clone(),
                calibrate: v.calibrate,
            }
        })
        .collect()
}

/// Run only the cells whose index ≡ K (mod N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl Shard {
    /// Whether the cell with this index belongs to the shard.
    pub fn contains(&self, index: usize) -> bool {
        index % self.n == self.k
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("shard '{s}': expected K/N with 0 ≤ K < N, e.g. 0/4");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || k >= n {
            return Err(bad());
        }
        Ok(Self { k, n })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::config::tests::{parse, HEAD};

    #[test]
    fn expands_variants_and_sweeps_into_cells() {
        let g = parse(&format!(
            "{HEAD}context = 64\n[[variants]]\nname = \"relu\"\nactivation = \"relu\"\n\
             [[variants]]\nname = \"mixed\"\nactivation = \"0-1:relu,2-3:sigmoid\"\n\
             [[variants]]\nname = \"sig\"\nactivation = \"sigmoid\"\nsweep_layers = true\n\
             [[variants]]\nname = \"late\"\nactivation = \"tanh\"\nlayers = \"2-3\"\n\
             [[variants]]\nname = \"few\"\nactivation = \"relu\"\nlayers = \"0,3\"\nsweep_layers = true\n"
        ))
        .unwrap();
        let cells = g.cells();
        let names: Vec<&str> = cells.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "baseline", "relu", "mixed", "sig@L0", "sig@L1", "sig@L2", "sig@L3", "late",
                "few@L0", "few@L3"
            ]
        );
        assert_eq!(cells[7].plan.describe(), "tanh@2-3");
        assert_eq!(cells[9].plan.swapped_layers(), vec![3]);
        assert!(cells[0].is_baseline && cells[0].plan.swapped_layers().is_empty());
        assert_eq!(cells[2].plan.describe(), "relu@0-1,sigmoid@2-3");
        assert_eq!(cells[5].plan.swapped_layers(), vec![2]);
        assert_eq!(cells[5].sweep, Some(("sig".to_string(), 2)));
        assert_eq!(
            cells.iter().map(|c| c.index).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn parses_shards() {
        assert_eq!("1/4".parse::<Shard>().unwrap(), Shard { k: 1, n: 4 });
        for bad in ["4/4", "1", "a/b", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert!(Shard { k: 1, n: 3 }.contains(4) && !Shard { k: 1, n: 3 }.contains(3));
    }
}
