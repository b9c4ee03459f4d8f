//! Text in, token ids out: reading a dataset (a file in strict UTF-8, a named dataset shipped
//! with the tool, or a text/JSONL file of a Hub dataset repo) and the checkpoint's tokenizer
//! (`tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`).
//!
//! - `resolve`: `--data` — a file, an `hf:` path or a named dataset ([`read_data`]).
//! - `text`: text, JSONL and Parquet files ([`read_documents_file`], [`read_text`]) and
//!   [`TextError`]; `documents`: [`Documents`]; `parquet_docs`: the Parquet column reader.
//! - `special_tokens`: the model's BOS / EOS / prefix tokens, for protocols.
//! - `named`: the datasets built into the binary ([`NAMED_DATASETS`]).
//! - `hub_data`: `hf:ORG/NAME[@REV]/path` specs ([`parse_hub_data`]).
//! - `tokenizer`: [`TextTokenizer`].

mod documents;
mod hub_data;
mod named;
mod parquet_docs;
mod resolve;
mod special_tokens;
mod text;
mod tokenizer;

pub use documents::{DocFormat, Documents};
pub use hub_data::parse_hub_data;
pub use named::{NamedDataset, NAMED_DATASETS};
pub use resolve::{is_data_name, read_data, read_documents};
pub use special_tokens::{special_tokens, SpecialTokens};
pub use text::{read_documents_file, read_text, TextError, DEFAULT_TEXT_FIELD};
pub use tokenizer::TextTokenizer;
