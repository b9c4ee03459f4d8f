//! Merging shard directories (`gpt-ablate merge`): their rows, deduplicated by key, in cell
//! order, with the first shard's manifest marked as merged.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;

use crate::grid::charts::write_charts;
use crate::grid::results::{self, Row};
use crate::provenance;

/// The cell counts of a merged manifest (replacing a shard's).
#[derive(Serialize)]
struct MergedCells {
    done: usize,
    total: u64,
}

/// Combines shard directories into `out`: rows deduplicated by key, in cell order.
pub fn merge(dirs: &[PathBuf], out: &Path) -> anyhow::Result<Vec<Row>> {
    if dirs.is_empty() {
        bail!("merge needs at least one shard directory");
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut config_sha: Option<String> = None;
    let mut manifests = Vec::new();
    for d in dirs {
        let m = read_manifest(d)?;
        let sha = m["config"]["sha256"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match &config_sha {
            None => config_sha = Some(sha),
            Some(s) if *s != sha => bail!(
                "{} comes from a different config than {}",
                d.display(),
                dirs[0].display()
            ),
            _ => {}
        }
        for r in results::read_jsonl(&d.join("results.jsonl"))? {
            if !rows.iter().any(|x| x.key == r.key) {
                rows.push(r);
            }
        }
        manifests.push(m);
    }
    rows.sort_by_key(|r| r.index);
    write_merged(dirs, out, &rows, &manifests[0])?;
    copy_nll_files(dirs, out, &rows)?;
    Ok(rows)
}

/// Copies the per-token files the merged rows name (`nll/…`, `save_nll`) from the shard
/// that has each into `out`.
fn copy_nll_files(dirs: &[PathBuf], out: &Path, rows: &[Row]) -> anyhow::Result<()> {
    for name in rows.iter().filter_map(|r| r.nll_file.as_deref()) {
        let target = out.join(name);
        let Some(source) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) else {
            eprintln!("warning: {name} is in no shard directory");
            continue;
        };
        if source == target {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::copy(&source, &target)
            .with_context(|| format!("copying {} to {}", source.display(), target.display()))?;
    }
    Ok(())
}

fn read_manifest(dir: &Path) -> anyhow::Result<Value> {
    let path = dir.join("manifest.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Writes the merged rows, CSV, manifest and charts into `out`; warns when cells are missing.
fn write_merged(dirs: &[PathBuf], out: &Path, rows: &[Row], first: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut lines = String::new();
    for r in rows {
        lines.push_str(&serde_json::to_string(r)?);
        lines.push('\n');
    }
    results::write_atomic(&out.join("results.jsonl"), lines.as_bytes())?;
    results::write_atomic(&out.join("results.csv"), results::to_csv(rows).as_bytes())?;
    let total = first["cells"]["total"].as_u64().unwrap_or(0);
    let merged = merged_manifest(first, dirs, rows.len(), total)?;
    results::write_atomic(
        &out.join("manifest.json"),
        serde_json::to_string_pretty(&merged)?.as_bytes(),
    )?;
    if (rows.len() as u64) < total {
        eprintln!(
            "warning: {} of {total} cells present; some shards are missing or unfinished",
            rows.len()
        );
    }
    write_charts(rows, out)?;
    Ok(())
}

/// The first shard's manifest (kept as read, whatever version wrote it), with no shard, the
/// directories merged, the merged cell counts and a new finishing time.
fn merged_manifest(
    first: &Value,
    dirs: &[PathBuf],
    done: usize,
    total: u64,
) -> anyhow::Result<Value> {
    let from: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let mut merged = first.clone();
    merged["shard"] = Value::Null;
    merged["merged_from"] = serde_json::to_value(from)?;
    merged["cells"] = serde_json::to_value(MergedCells { done, total })?;
    merged["finished_at"] = Value::String(provenance::now_rfc3339());
    Ok(merged)
}
