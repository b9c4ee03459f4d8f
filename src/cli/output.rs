//! What several commands print the same way: JSON objects and result tables.

use serde::Serialize;

use crate::grid::config::SortOrder;
use crate::grid::results::Row;

/// `out` as the JSON the commands print and write.
///
/// Going through [`serde_json::Value`] sorts object keys at every depth (serde_json's map,
/// without its `preserve_order` feature) and widens f32 numbers to f64 (`1.1f32` prints as
/// `1.100000023841858`): the exact text of the `json!` literals these outputs were first
/// built with, which scripts may rely on. Serializing the structs directly would follow their
/// field order instead.
pub(super) fn json_value(out: &impl Serialize) -> serde_json::Result<serde_json::Value> {
    serde_json::to_value(out)
}

/// Prints `out` as one line of JSON on stdout (see [`json_value`]).
pub(super) fn print_json(out: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", json_value(out)?);
    Ok(())
}

/// Prints grid result rows in `order`: one JSON array, or the table.
pub(super) fn print_rows(rows: &[Row], order: SortOrder, json: bool) -> anyhow::Result<()> {
    let rows = crate::grid::table::sorted(rows, order);
    if json {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        print!("{}", crate::grid::table::table(&rows));
    }
    Ok(())
}
