//! Reading a text file in strict UTF-8 (a `.jsonl` file as one `{"text": …}` document per
//! line), and [`TextError`], the error of everything in [`crate::data`].

use std::path::{Path, PathBuf};

/// Why a text or tokenizer cannot be used. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("data file {0} does not exist")]
    Missing(PathBuf),
    #[error("data file {0} does not exist and is not a named dataset (`gpt-ablate datasets` lists them: wikitext-2, shakespeare-val)")]
    MissingData(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
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
    #[error("{path}: {what} files are not supported; use a UTF-8 text file or JSONL (one {{\"text\": ...}} per line)")]
    Format { path: PathBuf, what: String },
    #[error("data {spec}: {msg}")]
    Hub { spec: String, msg: String },
}

/// Reads a whole text file, which must be non-empty UTF-8. A `.jsonl` file is read as JSON
/// lines: each line's `text` field, documents joined with a blank line (`"\n\n"`).
pub fn read_text(path: &Path) -> Result<String, TextError> {
    if !path.exists() {
        return Err(TextError::Missing(path.to_path_buf()));
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ["parquet", "arrow", "gz", "zst", "bz2", "xz", "zip"].contains(&ext.as_str()) {
        return Err(TextError::Format {
            path: path.to_path_buf(),
            what: format!(".{ext}"),
        });
    }
    let text = read_utf8(path)?;
    if ext == "jsonl" {
        return jsonl_text(path, &text);
    }
    Ok(text)
}

/// The `text` fields of a JSONL file, joined with `"\n\n"`; blank lines are skipped.
fn jsonl_text(path: &Path, content: &str) -> Result<String, TextError> {
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
        match value.get("text") {
            Some(serde_json::Value::String(t)) => docs.push(t.as_str().to_owned()),
            Some(_) => return Err(bad("\"text\" is not a string".into())),
            None => return Err(bad("no \"text\" field".into())),
        }
    }
    let text = docs.join("\n\n");
    if text.is_empty() {
        return Err(TextError::Empty(path.to_path_buf()));
    }
    Ok(text)
}

fn read_utf8(path: &Path) -> Result<String, TextError> {
    let bytes = std::fs::read(path).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })?;
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
