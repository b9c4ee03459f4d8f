//! The results table printed on stdout: rows in display order, as an aligned,
//! markdown-compatible table.

use std::collections::BTreeSet;

use crate::grid::config::SortOrder;
use crate::grid::results::{short_name, Row, RowDiagnostics};

/// Orders rows for display: grouped by model then dataset (in index order), and within a
/// group either as configured or by ascending perplexity.
pub fn sorted(rows: &[Row], order: SortOrder) -> Vec<Row> {
    let mut rows = rows.to_vec();
    rows.sort_by_key(|r| r.index);
    if order == SortOrder::Perplexity {
        let group_of = |r: &Row| (r.model.clone(), r.dataset.clone());
        let mut groups: Vec<(String, String)> = Vec::new();
        for r in &rows {
            if !groups.contains(&group_of(r)) {
                groups.push(group_of(r));
            }
        }
        rows.sort_by(|a, b| {
            let (ga, gb) = (
                groups.iter().position(|g| *g == group_of(a)),
                groups.iter().position(|g| *g == group_of(b)),
            );
            ga.cmp(&gb).then(a.perplexity.total_cmp(&b.perplexity))
        });
    }
    rows
}

/// Which optional columns a table has.
struct Columns {
    /// Model and dataset columns appear only when the rows span more than one.
    model: bool,
    dataset: bool,
    /// Diagnostic columns appear when any row has diagnostics.
    diagnostics: bool,
    /// Training columns appear when any row trained.
    training: bool,
}

/// Headers of the numeric (right-aligned) columns that every table has.
const NUMERIC: [&str; 9] = [
    "perplexity",
    "Δ ppl",
    "× base",
    "mean NLL",
    "Δ NLL [95% CI]",
    "bits/byte",
    "KL(base‖var)",
    "top-1 agree",
    "tokens",
];

/// Headers of the diagnostic columns.
const DIAGNOSTIC: [&str; 4] = ["mean |f′|", "|f′|<0.01", "mean f(h)", "‖∂L/∂x₀‖"];

/// An aligned, markdown-compatible table. Model and dataset columns appear only when the
/// rows span more than one.
pub fn table(rows: &[Row]) -> String {
    let many = |f: fn(&Row) -> &str| rows.iter().map(f).collect::<BTreeSet<_>>().len() > 1;
    let cols = Columns {
        model: many(|r| r.model.as_str()),
        dataset: many(|r| r.dataset.as_str()),
        diagnostics: rows.iter().any(|r| r.diagnostics.is_some()),
        training: rows.iter().any(|r| r.training.is_some()),
    };
    let header = header(&cols);
    let numeric_from = header.len()
        - NUMERIC.len()
        - cols.diagnostics as usize * DIAGNOSTIC.len()
        - cols.training as usize * TRAINING.len();
    let body: Vec<Vec<String>> = rows.iter().map(|r| cells(r, &cols)).collect();
    let mut out = layout(&header, &body, numeric_from);
    if rows.iter().any(|r| r.delta_nll_ci95.is_some()) {
        out.push_str(SIGNIFICANCE_NOTE);
    }
    out
}

/// Printed under a table with intervals.
const SIGNIFICANCE_NOTE: &str = "* the 95% interval of Δ NLL (variant − baseline, nats/token; \
paired block bootstrap over windows) excludes 0\n";

/// `+0.1234 [+0.1100, +0.1350] *`: Δ mean NLL, its interval, and `*` when the interval
/// excludes 0; empty for rows without one.
fn delta_cell(r: &Row) -> String {
    match (r.delta_nll, r.delta_nll_ci95) {
        (Some(d), Some([lo, hi])) => {
            let mark = if r.delta_is_significant() == Some(true) {
                " *"
            } else {
                "  "
            };
            format!("{} [{}, {}]{mark}", signed(d), signed(lo), signed(hi))
        }
        (Some(d), None) => signed(d),
        _ => String::new(),
    }
}

/// `+0.1234`, or `+2.1e-5` when four decimals would show a non-zero value as zero.
fn signed(x: f64) -> String {
    if x != 0.0 && x.abs() < 5e-5 {
        format!("{x:+.1e}")
    } else {
        format!("{x:+.4}")
    }
}

fn header(cols: &Columns) -> Vec<String> {
    let mut header = Vec::new();
    if cols.model {
        header.push("model");
    }
    if cols.dataset {
        header.push("dataset");
    }
    header.extend(["variant", "activation"]);
    header.extend(NUMERIC);
    if cols.diagnostics {
        header.extend(DIAGNOSTIC);
    }
    if cols.training {
        header.extend(TRAINING);
    }
    header.into_iter().map(str::to_string).collect()
}

/// One row's cells, formatted.
fn cells(r: &Row, cols: &Columns) -> Vec<String> {
    let mut cells = Vec::new();
    if cols.model {
        cells.push(short_name(&r.model));
    }
    if cols.dataset {
        cells.push(short_name(&r.dataset));
    }
    cells.extend([
        r.variant.clone(),
        r.activation.clone(),
        format!("{:.3}", r.perplexity),
        format!("{:+.3}", r.delta_perplexity),
        format!("{:.3}", r.ratio_perplexity),
        format!("{:.4}", r.mean_nll),
        delta_cell(r),
        format!("{:.4}", r.bits_per_byte),
        format!("{:.4}", r.kl_mean),
        format!("{:.2}%", 100.0 * r.top1_agreement),
        r.tokens_scored.to_string(),
    ]);
    if cols.diagnostics {
        cells.extend(diagnostic_cells(r.diagnostics.as_ref()));
    }
    if cols.training {
        cells.extend(training_cells(r.training.as_ref()));
    }
    cells
}

/// Headers of the training columns: after fine-tuning, perplexity and × base; steps and
/// final training loss; steps to the target loss (from-scratch grids).
const TRAINING: [&str; 5] = [
    "ppl trained",
    "× trained",
    "steps",
    "final loss",
    "steps→target",
];

/// The training cells of a row (empty when it did not train). A from-scratch row's own
/// perplexity is the trained model's, so its "trained" columns are `-`.
fn training_cells(t: Option<&crate::grid::training::RowTraining>) -> [String; 5] {
    let Some(t) = t else {
        return Default::default();
    };
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    [
        opt(t.perplexity_after, 3),
        opt(t.ratio_after, 3),
        t.steps.to_string(),
        opt(t.final_loss, 4),
        match (t.target_loss, t.steps_to_target) {
            (None, _) => "-".into(),
            (Some(_), Some(s)) => s.to_string(),
            (Some(target), None) => format!("> {} (loss {target})", t.steps),
        },
    ]
}

/// The diagnostic cells of a row (empty when it has none).
fn diagnostic_cells(d: Option<&RowDiagnostics>) -> [String; 4] {
    match d {
        Some(d) => [
            format!("{:.4}", d.deriv_mean),
            format!("{:.2}%", 100.0 * d.saturated_frac),
            format!("{:.4}", d.post_mean),
            format!("{:.4}", d.grad_norm_first),
        ],
        None => Default::default(),
    }
}

/// Pads every column to its widest cell: text left-aligned, columns from `numeric_from` on
/// right-aligned (and marked so in the rule under the header).
fn layout(header: &[String], body: &[Vec<String>], numeric_from: usize) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            body.iter()
                .map(|row| row[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(c, s)| {
                let pad = " ".repeat(widths[c] - s.chars().count());
                if c >= numeric_from {
                    format!("{pad}{s}")
                } else {
                    format!("{s}{pad}")
                }
            })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(c, &w)| {
            if c >= numeric_from {
                format!("{}:", "-".repeat(w + 1))
            } else {
                "-".repeat(w + 2)
            }
        })
        .collect();
    let mut out = line(header);
    out.push_str(&format!("|{}|\n", rule.join("|")));
    for row in body {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::results::sample_row;

    #[test]
    fn table_is_aligned_and_sortable() {
        let rows = vec![
            sample_row(0, "baseline", 10.0),
            sample_row(1, "sigmoid", 40.0),
            sample_row(2, "relu", 11.0),
        ];
        let t = table(&sorted(&rows, SortOrder::Perplexity));
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() == lines[0].chars().count()),
            "{t}"
        );
        assert!(
            lines[2].contains("baseline")
                && lines[3].contains("relu")
                && lines[4].contains("sigmoid"),
            "{t}"
        );
        assert!(lines[1].contains("---:"), "{t}");
    }

    #[test]
    fn intervals_that_exclude_zero_are_marked() {
        let mut rows = vec![
            sample_row(0, "baseline", 10.0),
            sample_row(1, "sigmoid", 40.0),
        ];
        rows[1].delta_nll = Some(1.3863);
        rows[1].delta_nll_ci95 = Some([1.2, 1.5]);
        let mut same = sample_row(2, "gelu", 10.0);
        same.delta_nll = Some(0.0001);
        same.delta_nll_ci95 = Some([-0.001, 0.002]);
        rows.push(same);
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[3].contains("+1.3863 [+1.2000, +1.5000] *"), "{t}");
        assert!(lines[4].contains("+0.0001 [-0.0010, +0.0020]  "), "{t}");
        assert!(lines[5].starts_with("* the 95% interval"), "{t}");
    }
}
