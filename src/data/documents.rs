//! A dataset as documents: a plain text file is one document, a JSONL file one per line, a
//! Parquet file one per row. Protocols that score one text join them with a blank line.

/// Where the documents came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocFormat {
    /// A text file or named dataset: one document.
    Text,
    Jsonl,
    Parquet,
}

/// A dataset's documents, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documents {
    pub docs: Vec<String>,
    pub format: DocFormat,
}

impl Documents {
    /// A whole text as one document.
    pub fn one(text: String) -> Self {
        Self {
            docs: vec![text],
            format: DocFormat::Text,
        }
    }

    /// The documents as one text, joined with a blank line (`"\n\n"`): what the protocols
    /// that score a single text read.
    pub fn joined(&self) -> String {
        self.docs.join("\n\n")
    }

    /// UTF-8 bytes over all documents (separators not counted).
    pub fn bytes(&self) -> usize {
        self.docs.iter().map(String::len).sum()
    }
}
