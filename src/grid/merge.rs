//! Merging shard directories (`gpt-ablate merge`): their rows, one per cell, in cell order,
//! with the first shard's manifest marked as merged.
//!
//! Shards merge only when their manifests say they ran the same grid on the same inputs:
//! the same config, model files, data, precision and windowing (device and threads may
//! differ). The first difference is named.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;

use crate::fsio::{read_limited_to_string, DirLock, LockError, SMALL_FILE_LIMIT};
use crate::grid::cells::Shard as CellShard;
use crate::grid::charts::write_charts;
use crate::grid::config::SortOrder;
use crate::grid::results::{self, Row};
use crate::grid::runner::lock_output;
use crate::provenance;

/// The cell counts of a merged manifest (replacing a shard's).
#[derive(Serialize)]
struct MergedCells {
    done: usize,
    total: u64,
}

/// What a merge produced.
pub struct Merged {
    /// Every row, deduplicated, in cell order.
    pub rows: Vec<Row>,
    /// The order the grid's config asks tables to be printed in.
    pub sort: SortOrder,
}

/// A shard directory's manifest, read and checked to be one.
struct Shard {
    dir: PathBuf,
    manifest: Value,
}

/// Combines shard directories into `out`: one row per cell, in cell order. Fails before
/// writing anything when the shards ran different grids or inputs, when a row is not one of
/// its shard's cells or two rows differ for one cell, when a shard is still being written,
/// or when `out` is one of them or holds a run of its own.
pub fn merge(dirs: &[PathBuf], out: &Path) -> anyhow::Result<Merged> {
    if dirs.is_empty() {
        bail!("merge needs at least one shard directory");
    }
    check_out(dirs, out)?;
    let _shard_locks = dirs
        .iter()
        .map(|d| lock_shard(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shards = dirs
        .iter()
        .map(|d| read_shard(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let first = &shards[0];
    let sort = sort_order(first)?;
    for s in &shards[1..] {
        same_inputs(first, s)?;
    }
    let mut rows: Vec<Row> = Vec::new();
    for s in &shards {
        let path = s.dir.join("results.jsonl");
        for r in results::read_jsonl(&path)? {
            check_row(s, &path, &r)?;
            add_row(&mut rows, r, &path)?;
        }
    }
    rows.sort_by_key(|r| r.index);
    let _out_lock = lock_output(out)?;
    write_merged(dirs, out, &rows, &first.manifest)?;
    copy_nll_files(dirs, out, &rows)?;
    Ok(Merged { rows, sort })
}

/// A shard's row must be one of the cells its manifest describes: inside the grid
/// (`cells.total`) and, for a shard run (`shard = "K/N"`), one of that shard's cells.
fn check_row(s: &Shard, path: &Path, r: &Row) -> anyhow::Result<()> {
    let total = s.manifest["cells"]["total"].as_u64();
    if let Some(total) = total.filter(|&t| r.index as u64 >= t) {
        bail!(
            "{}: cell {} ('{}') is outside the grid of {total} cells that manifest.json describes",
            path.display(),
            r.index,
            r.variant
        );
    }
    let shard = s.manifest["shard"].as_str().map(str::parse::<CellShard>);
    if let Some(Ok(shard)) = shard {
        if !shard.contains(r.index) {
            bail!(
                "{}: cell {} ('{}') is not one of shard {shard}'s cells, which manifest.json names",
                path.display(),
                r.index,
                r.variant
            );
        }
    }
    Ok(())
}

/// Adds `r` unless its cell is there already; a second, different result for one cell (a
/// row of another key at the same index) is an error, not a cell listed twice.
fn add_row(rows: &mut Vec<Row>, r: Row, path: &Path) -> anyhow::Result<()> {
    match rows.iter().find(|x| x.index == r.index) {
        None => rows.push(r),
        Some(x) if x.key == r.key => {}
        Some(x) => bail!(
            "{}: cell {} ('{}') has key {} where a row read before has {}: the shards hold different results for one cell; rerun the shard that is stale",
            path.display(),
            r.index,
            r.variant,
            r.key,
            x.key
        ),
    }
    Ok(())
}

/// `out` must not be a shard directory, nor hold the results of a run (a merge's may be
/// replaced).
fn check_out(dirs: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    for (i, d) in dirs.iter().enumerate() {
        if dirs[..i].iter().any(|e| canon(e) == canon(d)) {
            bail!("shard directory {} is given twice", d.display());
        }
    }
    if dirs.iter().any(|d| canon(d) == canon(out)) {
        bail!(
            "the output directory {} is one of the shard directories; merge into a new directory",
            out.display()
        );
    }
    let manifest = out.join("manifest.json");
    if manifest.exists() {
        let m = read_manifest(&manifest)?;
        if m.get("merged_from").is_none() {
            bail!(
                "{} holds the results of a run, not of a merge; merge into a new directory",
                out.display()
            );
        }
    }
    Ok(())
}

/// Locks a shard directory for the merge, so that a run still writing to it is detected.
/// A directory that cannot hold a lock file (read-only) is read as it is.
fn lock_shard(dir: &Path) -> anyhow::Result<Option<DirLock>> {
    if !dir.is_dir() {
        bail!("shard directory {} does not exist", dir.display());
    }
    match DirLock::acquire(dir) {
        Ok(lock) => Ok(Some(lock)),
        Err(e @ LockError::Held { .. }) => Err(e).context("a run is still writing this shard"),
        Err(LockError::Io { .. }) => Ok(None),
    }
}

fn read_manifest(path: &Path) -> anyhow::Result<Value> {
    let text = read_limited_to_string(path, SMALL_FILE_LIMIT)?;
    let m: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not valid JSON: {e}", path.display()))?;
    if !m.is_object() {
        bail!(
            "{} is not a run manifest (not a JSON object)",
            path.display()
        );
    }
    Ok(m)
}

fn read_shard(dir: &Path) -> anyhow::Result<Shard> {
    let path = dir.join("manifest.json");
    let manifest = read_manifest(&path)?;
    identity(&manifest).with_context(|| format!("{} is not a run manifest", path.display()))?;
    Ok(Shard {
        dir: dir.to_path_buf(),
        manifest,
    })
}

/// What must agree between shards, as (name, value) pairs in a fixed order: the config's
/// hash, the cell count, precision and windowing, every model file's hash and every
/// dataset's hash.
fn identity(m: &Value) -> anyhow::Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    let mut take = |name: String, v: &Value| out.push((name, v.clone()));
    let sha = &m["config"]["sha256"];
    if !sha.is_string() {
        bail!("it has no config.sha256");
    }
    take("config.sha256".into(), sha);
    take("cells.total".into(), &m["cells"]["total"]);
    for key in ["dtype", "context", "stride", "max_tokens"] {
        take(format!("settings.{key}"), &m["settings"][key]);
    }
    let list = |v: &Value, name: &str| -> anyhow::Result<Vec<Value>> {
        match v {
            Value::Array(a) => Ok(a.clone()),
            _ => bail!("it has no {name} list"),
        }
    };
    let models = list(&m["models"], "models")?;
    take("models (count)".into(), &Value::from(models.len()));
    for (i, model) in models.iter().enumerate() {
        let files = list(&model["files"], &format!("models[{i}].files"))?;
        take(
            format!("models[{i}].files (count)"),
            &Value::from(files.len()),
        );
        for (j, f) in files.iter().enumerate() {
            take(format!("models[{i}].files[{j}].sha256"), &f["sha256"]);
        }
    }
    let datasets = list(&m["datasets"], "datasets")?;
    take("datasets (count)".into(), &Value::from(datasets.len()));
    for (i, d) in datasets.iter().enumerate() {
        take(format!("datasets[{i}].sha256"), &d["sha256"]);
    }
    Ok(out)
}

/// Fails naming the first field where shard `b`'s manifest differs from shard `a`'s.
fn same_inputs(a: &Shard, b: &Shard) -> anyhow::Result<()> {
    let (ia, ib) = (identity(&a.manifest)?, identity(&b.manifest)?);
    let differ = ia.iter().zip(&ib).find(|(x, y)| x != y);
    let Some(((name, va), (_, vb))) = differ else {
        return Ok(());
    };
    let name = if name.ends_with("(count)") || !name.contains('[') {
        name.clone()
    } else {
        describe(&a.manifest, name)
    };
    bail!(
        "{} and {} ran on different inputs: {name} is {} in one and {} in the other; merge only shards of the same grid and inputs",
        a.dir.display(),
        b.dir.display(),
        short(va),
        short(vb)
    )
}

/// `datasets[0].sha256 (data/val.txt)`: the field with the path it belongs to.
fn describe(m: &Value, name: &str) -> String {
    let parse = |prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|r| r.split(']').next())
            .and_then(|i| i.parse::<usize>().ok())
    };
    let path = if let Some(i) = parse("datasets[") {
        m["datasets"][i]["path"].as_str().map(str::to_string)
    } else if let Some(i) = parse("models[") {
        let j = name
            .split("files[")
            .nth(1)
            .and_then(|r| r.split(']').next())
            .and_then(|j| j.parse::<usize>().ok());
        j.and_then(|j| {
            m["models"][i]["files"][j]["file"]
                .as_str()
                .map(str::to_string)
        })
    } else {
        None
    };
    match path {
        Some(p) => format!("{name} ({p})"),
        None => name.to_string(),
    }
}

/// A value for a message: hashes cut to 12 characters.
fn short(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() > 16 => format!("{}…", &s[..12]),
        Value::String(s) => s.clone(),
        Value::Null => "absent".into(),
        other => other.to_string(),
    }
}

/// The order the original config asked for (`sort = "perplexity"`), read back from the
/// config text the manifest copies.
fn sort_order(shard: &Shard) -> anyhow::Result<SortOrder> {
    let text = shard.manifest["config"]["text"]
        .as_str()
        .unwrap_or_default();
    let table: toml::Table = text.parse().map_err(|_| {
        anyhow::anyhow!(
            "{}: config.text is not the TOML of a grid config",
            shard.dir.join("manifest.json").display()
        )
    })?;
    Ok(match table.get("sort").and_then(|v| v.as_str()) {
        Some("perplexity") => SortOrder::Perplexity,
        _ => SortOrder::Config,
    })
}

/// Writes the merged rows, CSV, manifest and charts into `out`; warns when cells are missing.
fn write_merged(dirs: &[PathBuf], out: &Path, rows: &[Row], first: &Value) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(data_sha: &str) -> Value {
        json!({
            "config": {"sha256": "c0ffee", "text": "sort = \"perplexity\"\n"},
            "cells": {"total": 8},
            "settings": {"dtype": "f32", "context": [64], "stride": [32], "max_tokens": null,
                         "device": "cpu", "threads": 2},
            "models": [{"files": [{"file": "m/model.safetensors", "sha256": "aa"}]}],
            "datasets": [{"path": "data/val.txt", "sha256": data_sha}],
        })
    }

    fn shard(dir: &str, manifest: Value) -> Shard {
        Shard {
            dir: dir.into(),
            manifest,
        }
    }

    #[test]
    fn shards_of_different_inputs_are_refused_naming_the_first_difference() {
        let a = shard("s0", manifest("d1"));
        let mut other_device = manifest("d1");
        other_device["settings"]["device"] = json!("cuda:0");
        assert!(same_inputs(&a, &shard("s1", other_device)).is_ok());
        let err = same_inputs(&a, &shard("s1", manifest("d2"))).unwrap_err();
        assert!(
            err.to_string()
                .contains("datasets[0].sha256 (data/val.txt) is d1 in one and d2"),
            "{err}"
        );
        let mut other_dtype = manifest("d1");
        other_dtype["settings"]["dtype"] = json!("bf16");
        let err = same_inputs(&a, &shard("s1", other_dtype)).unwrap_err();
        assert!(err.to_string().contains("settings.dtype"), "{err}");
        assert_eq!(sort_order(&a).unwrap(), SortOrder::Perplexity);
    }

    #[test]
    fn manifests_without_a_config_hash_are_not_manifests() {
        let mut m = manifest("d1");
        m["config"] = json!({});
        assert!(identity(&m)
            .unwrap_err()
            .to_string()
            .contains("no config.sha256"));
        assert!(identity(&json!([1, 2])).is_err());
    }
}
