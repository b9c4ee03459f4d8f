//! The named datasets: texts shipped inside the binary (the files under `data/`, embedded at
//! build time), usable as `--data NAME`.

/// A text shipped inside the binary, usable as `--data NAME`.
pub struct NamedDataset {
    pub name: &'static str,
    pub description: &'static str,
    pub licence: &'static str,
    /// Token counts with the tokenizers it is usually scored with.
    pub tokens: &'static str,
    pub text: &'static str,
}

/// The named datasets (the files under `data/`, embedded at build time).
pub const NAMED_DATASETS: [NamedDataset; 2] = [
    NamedDataset {
        name: "wikitext-2",
        description: "WikiText-2 raw test split, rows joined with \"\\n\\n\" as in the Hugging Face perplexity guide",
        licence: "CC BY-SA 3.0 (Merity et al., 2016)",
        tokens: "287,644 GPT-2 tokens",
        text: include_str!("../../data/wikitext-2-raw-test.txt"),
    },
    NamedDataset {
        name: "shakespeare-val",
        description: "the held-out last 10 % of Tiny Shakespeare (the default model's validation text)",
        licence: "public domain",
        tokens: "43,568 tokens of models/shakespeare-gpt2",
        text: include_str!("../../data/shakespeare-val.txt"),
    },
];
