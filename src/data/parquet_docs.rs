//! Parquet datasets (how `datasets` stores nearly every dataset on the Hub): one document per
//! row, from a top-level string column. Read with the `parquet` crate's column reader, without
//! Arrow; snappy and zstd pages are supported.

use std::path::Path;

use parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use parquet::column::reader::{get_typed_column_reader, ColumnReader};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::ColumnDescriptor;

use super::text::TextError;

/// Rows read per call of the column reader.
const BATCH: usize = 1024;

/// The `field` column of every row, in order: each a document.
pub fn read_parquet_column(path: &Path, field: &str) -> Result<Vec<String>, TextError> {
    let bad = |msg: String| TextError::Parquet {
        path: path.to_path_buf(),
        msg,
    };
    let file = crate::fsio::open_regular(path)?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| bad(format!("not a readable Parquet file ({})", one_line(&e))))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let index = (0..schema.num_columns())
        .find(|&i| schema.column(i).path().parts() == [field])
        .ok_or_else(|| {
            bad(no_column(
                field,
                &schema
                    .columns()
                    .iter()
                    .map(|c| c.path().string())
                    .collect::<Vec<_>>(),
            ))
        })?;
    let column = schema.column(index);
    check_string_column(&column, field).map_err(bad)?;
    let mut docs = Vec::with_capacity(reader.metadata().file_metadata().num_rows().max(0) as usize);
    for g in 0..reader.num_row_groups() {
        let group = reader
            .get_row_group(g)
            .map_err(|e| bad(format!("row group {g}: {}", one_line(&e))))?;
        let column_reader = group
            .get_column_reader(index)
            .map_err(|e| bad(format!("row group {g}: {}", one_line(&e))))?;
        read_strings(column_reader, column.max_def_level(), &mut docs)
            .map_err(|msg| bad(format!("row group {g}: {msg}")))?;
    }
    Ok(docs)
}

fn no_column(field: &str, columns: &[String]) -> String {
    format!(
        "no column '{field}' (columns: {}); choose one with --text-field",
        columns.join(", ")
    )
}

/// A top-level, non-repeated UTF-8 string column.
fn check_string_column(c: &ColumnDescriptor, field: &str) -> Result<(), String> {
    let utf8 = matches!(c.logical_type_ref(), Some(LogicalType::String))
        || c.converted_type() == ConvertedType::UTF8;
    if c.max_rep_level() > 0 {
        return Err(format!("column '{field}' is a list, not a string column"));
    }
    if c.physical_type() != PhysicalType::BYTE_ARRAY || !utf8 {
        let what = match c.physical_type() {
            PhysicalType::BYTE_ARRAY => "binary".to_string(),
            other => other.to_string(),
        };
        return Err(format!("column '{field}' holds {what} values, not strings"));
    }
    Ok(())
}

/// Appends the column's values to `out` (whose length numbers rows in errors).
fn read_strings(reader: ColumnReader, max_def: i16, out: &mut Vec<String>) -> Result<(), String> {
    let mut reader = get_typed_column_reader::<ByteArrayType>(reader);
    let (mut values, mut defs) = (Vec::<ByteArray>::new(), Vec::<i16>::new());
    loop {
        values.clear();
        defs.clear();
        let (records, _, _) = reader
            .read_records(BATCH, (max_def > 0).then_some(&mut defs), None, &mut values)
            .map_err(|e| one_line(&e))?;
        if records == 0 {
            return Ok(());
        }
        if max_def > 0 && defs.iter().any(|&d| d < max_def) {
            let i = defs.iter().position(|&d| d < max_def).unwrap_or(0);
            return Err(format!("row {} is null", out.len() + i));
        }
        for v in &values {
            let s = std::str::from_utf8(v.data())
                .map_err(|e| format!("row {}: invalid UTF-8 ({e})", out.len()))?;
            out.push(s.to_owned());
        }
    }
}

/// A parquet error on one line.
fn one_line(e: &parquet::errors::ParquetError) -> String {
    e.to_string().replace('\n', " ")
}
