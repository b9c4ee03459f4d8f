//! `--data`: an existing file, else an `hf:` path, else a named dataset.

use std::path::Path;

use super::documents::Documents;
use super::hub_data::{parse_hub_data, read_hub_documents};
use super::named::NAMED_DATASETS;
use super::text::{read_documents_file, TextError};

/// Reads `--data` as one text: an existing file, a named dataset, or
/// `hf:ORG/NAME[@REV]/path/in/repo` (a text, JSONL or Parquet file of a Hub dataset repo,
/// fetched into the Hugging Face cache); documents are joined with a blank line.
pub fn read_data(arg: &Path) -> Result<String, TextError> {
    Ok(read_documents(arg, None)?.joined())
}

/// Reads `--data` as documents, JSONL and Parquet ones from `field` (default `text`); a
/// named dataset is one document.
pub fn read_documents(arg: &Path, field: Option<&str>) -> Result<Documents, TextError> {
    if arg.exists() {
        return read_documents_file(arg, field);
    }
    if let Some(spec) = arg.to_str().filter(|s| s.starts_with("hf:")) {
        return read_hub_documents(spec, field);
    }
    match NAMED_DATASETS.iter().find(|d| arg.as_os_str() == d.name) {
        Some(_) if field.is_some() => Err(TextError::TextField {
            path: arg.to_path_buf(),
        }),
        Some(d) => Ok(Documents::one(d.text.to_string())),
        None => Err(TextError::MissingData(arg.to_path_buf())),
    }
}

/// Whether `arg` names data without being a file: a named dataset or a well-formed `hf:` path.
pub fn is_data_name(arg: &str) -> bool {
    NAMED_DATASETS.iter().any(|d| d.name == arg) || parse_hub_data(arg).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_datasets_resolve_and_unknown_names_are_explained() {
        let wiki = read_data(Path::new("wikitext-2")).unwrap();
        assert_eq!(wiki.len(), 1_296_370);
        assert_eq!(
            read_data(Path::new("shakespeare-val")).unwrap().len(),
            111_558
        );
        let err = read_data(Path::new("no-such-set")).unwrap_err().to_string();
        assert!(
            err.contains("not a named dataset") && err.contains("wikitext-2"),
            "{err}"
        );
    }
}
