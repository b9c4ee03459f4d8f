//! `--data`: an existing file, else an `hf:` path, else a named dataset.

use std::path::Path;

use super::hub_data::{parse_hub_data, read_hub_data};
use super::named::NAMED_DATASETS;
use super::text::{read_text, TextError};

/// Reads `--data`: an existing file, a named dataset, or `hf:ORG/NAME[@REV]/path/in/repo` (a
/// text or JSONL file of a Hub dataset repo, fetched into the Hugging Face cache).
pub fn read_data(arg: &Path) -> Result<String, TextError> {
    if arg.exists() {
        return read_text(arg);
    }
    if let Some(spec) = arg.to_str().filter(|s| s.starts_with("hf:")) {
        return read_hub_data(spec);
    }
    match NAMED_DATASETS.iter().find(|d| arg.as_os_str() == d.name) {
        Some(d) => Ok(d.text.to_string()),
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
