//! Reading a data file in strict UTF-8 as documents — a text file as one, a `.jsonl` file as
//! one `{"text": …}` per line, a `.parquet` file as one per row — and [`TextError`], the error
//! of everything in [`crate::data`].

use std::path::{Path, PathBuf};

use super::documents::{DocFormat, Documents};
use super::parquet_docs::read_parquet_column;

/// The field (JSONL) or column (Parquet) documents are read from unless one is named.
pub const DEFAULT_TEXT_FIELD: &str = "text";

/// Why a text or tokenizer cannot be used. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("data file {0} does not exist")]
    Missing(PathBuf),
    #[error("data file {0} does not exist and is not a named dataset (`gpt-ablate datasets` lists them: {names})", names = named_list())]
    MissingData(PathBuf),
    #[error(transparent)]
    Read(#[from] crate::fsio::ReadError),
    #[error("data file {0} is empty")]
    Empty(PathBuf),
    #[error("{path}: invalid UTF-8 at byte offset {offset}")]
    Utf8 { path: PathBuf, offset: usize },
    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{path} line {line}: {msg}")]
    Jsonl {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: {what} files are not supported; use a UTF-8 text file, JSONL (one {{\"text\": ...}} per line) or Parquet")]
    Format { path: PathBuf, what: String },
    #[error("{path}: {msg}")]
    Parquet { path: PathBuf, msg: String },
    #[error("{path} is a plain text file, read as one document: a text field applies to .jsonl and .parquet data only")]
    TextField { path: PathBuf },
    #[error("data {spec}: {msg}")]
    Hub { spec: String, msg: String },
}

/// Reads a whole data file as one text, which must be non-empty UTF-8: the documents of
/// [`read_documents_file`] (with their `text` field) joined with a blank line (`"\n\n"`).
pub fn read_text(path: &Path) -> Result<String, TextError> {
    Ok(read_documents_file(path, None)?.joined())
}

/// Reads a data file as documents: a `.parquet` file's rows and a `.jsonl` file's lines
/// (their `field`, default `text`; blank lines skipped), or a text file as one document
/// (naming a field is then an error).
pub fn read_documents_file(path: &Path, field: Option<&str>) -> Result<Documents, TextError> {
    if !path.exists() {
        return Err(TextError::Missing(path.to_path_buf()));
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ["arrow", "gz", "zst", "bz2", "xz", "zip"].contains(&ext.as_str()) {
        return Err(TextError::Format {
            path: path.to_path_buf(),
            what: format!(".{ext}"),
        });
    }
    let (docs, format) = match ext.as_str() {
        "parquet" => (
            read_parquet_column(path, field.unwrap_or(DEFAULT_TEXT_FIELD))?,
            DocFormat::Parquet,
        ),
        "jsonl" => {
            let content = read_utf8(path)?;
            let field = field.unwrap_or(DEFAULT_TEXT_FIELD);
            (jsonl_docs(path, &content, field)?, DocFormat::Jsonl)
        }
        _ if field.is_some() => {
            return Err(TextError::TextField {
                path: path.to_path_buf(),
            })
        }
        _ => return Ok(Documents::one(read_utf8(path)?)),
    };
    let documents = Documents { docs, format };
    if documents.joined().is_empty() {
        return Err(TextError::Empty(path.to_path_buf()));
    }
    Ok(documents)
}

/// The `field` values of a JSONL file's lines; blank lines are skipped.
fn jsonl_docs(path: &Path, content: &str, field: &str) -> Result<Vec<String>, TextError> {
    let mut docs = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |msg: String| TextError::Jsonl {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        match value.get(field) {
            Some(serde_json::Value::String(t)) => docs.push(t.as_str().to_owned()),
            Some(_) => return Err(bad(format!("\"{field}\" is not a string"))),
            None => return Err(bad(format!("no \"{field}\" field"))),
        }
    }
    Ok(docs)
}

/// The named datasets, comma-separated.
fn named_list() -> String {
    super::named::NAMED_DATASETS
        .iter()
        .map(|d| d.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A regular file of at most the data limit (`GPT_ABLATE_MAX_DATA_BYTES`, default 1 GiB),
/// in strict UTF-8.
fn read_utf8(path: &Path) -> Result<String, TextError> {
    let bytes = crate::fsio::read_limited(path, crate::fsio::read::data_limit()?)?;
    if bytes.is_empty() {
        return Err(TextError::Empty(path.to_path_buf()));
    }
    String::from_utf8(bytes).map_err(|e| TextError::Utf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_names_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.txt");
        std::fs::write(&p, b"hello \xff world").unwrap();
        let err = read_text(&p).unwrap_err().to_string();
        assert!(err.contains("byte offset 6"), "{err}");
        std::fs::write(&p, b"").unwrap();
        assert!(read_text(&p).unwrap_err().to_string().contains("is empty"));
        assert!(read_text(&dir.path().join("nope"))
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
    }
}
