//! Per-token output (`--save-nll FILE`, `save_nll` in grids): one record per scored token —
//! document, position, token id, token text, NLL (and in grids the baseline's NLL) — as
//! JSONL, or Parquet when the file name ends in `.parquet`.
//!
//! Written as scoring goes (JSONL line by line through a buffer, Parquet one row group per
//! 65,536 records), so memory stays flat however long the text. Records go to `FILE.partial`,
//! renamed to `FILE` when complete: an interrupted run leaves any earlier `FILE` untouched.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde::Serialize;

/// Records per Parquet row group.
const ROW_GROUP: usize = 64 * 1024;

/// One scored token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenRecord {
    /// Index of the document (0 when the text is scored as one).
    pub document: usize,
    /// Index of the token in the document's tokens (the whole text's, when scored as one).
    pub position: i64,
    /// Token id.
    pub token: u32,
    /// The text the token adds (see [`crate::data::TextTokenizer::token_text`]).
    pub text: String,
    /// −ln p(token | context), nats.
    pub nll: f64,
    /// The unmodified model's NLL of the same token (grids).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_nll: Option<f64>,
}

/// Why per-token output failed; names the file.
#[derive(Debug, thiserror::Error)]
pub enum NllOutputError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {msg}")]
    Parquet { path: PathBuf, msg: String },
}

/// JSONL or Parquet, by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NllFormat {
    Jsonl,
    Parquet,
}

impl NllFormat {
    /// Parquet when the name ends in `.parquet`, else JSONL.
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("parquet") => Self::Parquet,
            _ => Self::Jsonl,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Parquet => "parquet",
        }
    }
}

/// A per-token output file being written.
pub struct NllWriter {
    path: PathBuf,
    partial: PathBuf,
    sink: Option<Sink>,
    records: u64,
}

enum Sink {
    Jsonl(BufWriter<File>),
    Parquet(Box<ParquetSink>),
}

impl NllWriter {
    /// Starts `path` (as `path.partial`); `with_baseline` adds the baseline's NLL.
    pub fn create(path: &Path, with_baseline: bool) -> Result<Self, NllOutputError> {
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let io = |source| NllOutputError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(&partial).map_err(io)?;
        let sink = match NllFormat::of(path) {
            NllFormat::Jsonl => Sink::Jsonl(BufWriter::new(file)),
            NllFormat::Parquet => Sink::Parquet(Box::new(
                ParquetSink::new(file, with_baseline).map_err(|msg| parquet_err(path, msg))?,
            )),
        };
        Ok(Self {
            path: path.to_path_buf(),
            partial,
            sink: Some(sink),
            records: 0,
        })
    }

    pub fn write(&mut self, r: &TokenRecord) -> Result<(), NllOutputError> {
        self.records += 1;
        let path = &self.path;
        match self.sink.as_mut() {
            Some(Sink::Jsonl(w)) => {
                let line = serde_json::to_string(r).expect("a record serializes");
                writeln!(w, "{line}").map_err(|source| NllOutputError::Io {
                    path: path.clone(),
                    source,
                })
            }
            Some(Sink::Parquet(p)) => p.push(r).map_err(|msg| parquet_err(path, msg)),
            None => Ok(()),
        }
    }

    /// Flushes everything and puts the file in place; returns the records written.
    pub fn finish(mut self) -> Result<u64, NllOutputError> {
        let io = |source| NllOutputError::Io {
            path: self.path.clone(),
            source,
        };
        match self.sink.take() {
            Some(Sink::Jsonl(w)) => {
                let file = w.into_inner().map_err(|e| io(e.into_error()))?;
                file.sync_all().map_err(io)?;
            }
            Some(Sink::Parquet(p)) => p.close().map_err(|msg| parquet_err(&self.path, msg))?,
            None => {}
        }
        std::fs::rename(&self.partial, &self.path).map_err(io)?;
        Ok(self.records)
    }
}

impl Drop for NllWriter {
    /// An unfinished file is removed (`FILE` itself was never touched).
    fn drop(&mut self) {
        if self.sink.is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

fn parquet_err(path: &Path, msg: String) -> NllOutputError {
    NllOutputError::Parquet {
        path: path.to_path_buf(),
        msg,
    }
}

/// Columns buffered for the next row group.
#[derive(Default)]
struct Columns {
    document: Vec<i64>,
    position: Vec<i64>,
    token: Vec<i64>,
    text: Vec<ByteArray>,
    nll: Vec<f64>,
    baseline_nll: Vec<f64>,
}

struct ParquetSink {
    writer: SerializedFileWriter<File>,
    cols: Columns,
    with_baseline: bool,
}

impl ParquetSink {
    fn new(file: File, with_baseline: bool) -> Result<Self, String> {
        let schema = format!(
            "message token_nll {{ REQUIRED INT64 document; REQUIRED INT64 position; \
             REQUIRED INT64 token; REQUIRED BYTE_ARRAY text (UTF8); REQUIRED DOUBLE nll; {} }}",
            if with_baseline {
                "REQUIRED DOUBLE baseline_nll;"
            } else {
                ""
            }
        );
        let schema = Arc::new(parse_message_type(&schema).map_err(|e| e.to_string())?);
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let writer =
            SerializedFileWriter::new(file, schema, Arc::new(props)).map_err(|e| e.to_string())?;
        Ok(Self {
            writer,
            cols: Columns::default(),
            with_baseline,
        })
    }

    fn push(&mut self, r: &TokenRecord) -> Result<(), String> {
        let c = &mut self.cols;
        c.document.push(r.document as i64);
        c.position.push(r.position);
        c.token.push(i64::from(r.token));
        c.text.push(ByteArray::from(r.text.as_str()));
        c.nll.push(r.nll);
        c.baseline_nll.push(r.baseline_nll.unwrap_or(f64::NAN));
        if c.nll.len() >= ROW_GROUP {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered records as one row group.
    fn flush(&mut self) -> Result<(), String> {
        if self.cols.nll.is_empty() {
            return Ok(());
        }
        let cols = std::mem::take(&mut self.cols);
        let e = |e: parquet::errors::ParquetError| e.to_string();
        let mut group = self.writer.next_row_group().map_err(e)?;
        let mut column = 0;
        while let Some(mut w) = group.next_column().map_err(e)? {
            match column {
                0 => w
                    .typed::<Int64Type>()
                    .write_batch(&cols.document, None, None),
                1 => w
                    .typed::<Int64Type>()
                    .write_batch(&cols.position, None, None),
                2 => w.typed::<Int64Type>().write_batch(&cols.token, None, None),
                3 => w
                    .typed::<ByteArrayType>()
                    .write_batch(&cols.text, None, None),
                4 => w.typed::<DoubleType>().write_batch(&cols.nll, None, None),
                _ => w
                    .typed::<DoubleType>()
                    .write_batch(&cols.baseline_nll, None, None),
            }
            .map_err(e)?;
            w.close().map_err(e)?;
            column += 1;
        }
        group.close().map_err(e)?;
        debug_assert_eq!(column, 5 + usize::from(self.with_baseline));
        Ok(())
    }

    fn close(mut self) -> Result<(), String> {
        self.flush()?;
        self.writer.close().map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The records of one scored chunk: `nlls` per target, and the baseline's when comparing.
pub fn chunk_records(
    chunk: &super::perplexity::ScoredChunk<'_>,
    nlls: &[f64],
    baseline: Option<&[f64]>,
    tok: &crate::data::TextTokenizer,
) -> Result<Vec<TokenRecord>, crate::data::TextError> {
    let seq = chunk.seq;
    (0..nlls.len())
        .map(|i| {
            let t = chunk.first_target + i;
            let prev = (t > 0).then(|| seq.tokens[t - 1]);
            Ok(TokenRecord {
                document: seq.document,
                position: seq.position(t),
                token: seq.tokens[t],
                text: tok.token_text(prev, seq.tokens[t])?,
                nll: nlls[i],
                baseline_nll: baseline.map(|b| b[i]),
            })
        })
        .collect()
}
