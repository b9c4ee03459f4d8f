//! Text in, token ids out: reading a dataset (a file in strict UTF-8, a named dataset shipped
//! with the tool, or a text/JSONL file of a Hub dataset repo) and the checkpoint's tokenizer
//! (`tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`).
//!
//! - `resolve`: `--data` — a file, an `hf:` path or a named dataset ([`read_data`]).
//! - `text`: text and JSONL files ([`read_text`]) and [`TextError`].
//! - `named`: the datasets built into the binary ([`NAMED_DATASETS`]).
//! - `hub_data`: `hf:ORG/NAME[@REV]/path` specs ([`parse_hub_data`]).
//! - `tokenizer`: [`TextTokenizer`].

mod hub_data;
mod named;
mod resolve;
mod text;
mod tokenizer;

pub use hub_data::parse_hub_data;
pub use named::{NamedDataset, NAMED_DATASETS};
pub use resolve::{is_data_name, read_data};
pub use text::{read_text, TextError};
pub use tokenizer::TextTokenizer;
