//! The options the model-loading commands share (`--model`, `--revision`, the swap, device,
//! dtype, threads) and the help texts of the commands.

use clap::Args;

use crate::model::load::{load_files, LoadOptions, Loaded};
use crate::model::plan::{ActivationMap, LayerSpec};
use crate::runtime::{DeviceSpec, Precision};
use crate::weights::CheckpointFiles;

pub(super) const INSPECT_EXAMPLE: &str = "\
Examples:
  gpt-ablate inspect --model models/shakespeare-gpt2
  gpt-ablate inspect --model openai-community/gpt2 --revision main --json
Hub ids use the Hugging Face cache and environment: HF_HOME, HF_HUB_CACHE, HF_TOKEN,
HF_ENDPOINT, HF_HUB_OFFLINE=1 (cache only).";

pub(super) const RUN_EXAMPLE: &str = "\
Examples:
  gpt-ablate run configs/default.toml
  gpt-ablate run configs/gpt2.toml --out runs/gpt2 --device cuda
  gpt-ablate run configs/gpt2.toml --out runs/gpt2-shard0 --shard 0/4

Re-running with the same --out resumes: finished cells are skipped.
Settings: command-line flag > environment (GPT_ABLATE_DEVICE, GPT_ABLATE_DTYPE,
GPT_ABLATE_THREADS) > config file > default.";

pub(super) const GENERATE_EXAMPLE: &str = "\
Examples:
  gpt-ablate generate --model models/shakespeare-gpt2 --prompt 'ROMEO:' --seed 1
  gpt-ablate generate --model models/shakespeare-gpt2 --prompt 'ROMEO:' \\
      --activation sigmoid --compare --temperature 0
  echo 'KING HENRY:' | gpt-ablate generate --model DIR --prompt-file - --stop '\\n\\n' --json

Generation stops at --max-new-tokens, at <|endoftext|> (unless --ignore-eos), at a --stop
string (not printed), or when the model's context (n_positions) is full.";

pub(super) const DIAGNOSE_EXAMPLE: &str = "\
Examples:
  gpt-ablate diagnose --model models/shakespeare-gpt2 --data data/shakespeare-val.txt \\
      --activation sigmoid --max-tokens 4096 --out runs/diagnose-sigmoid
  gpt-ablate diagnose --model DIR --data FILE --json

With --activation, the original model is diagnosed too and the report compares them.
Windows are non-overlapping; statistics cover every position, window and MLP unit.";

pub(super) const MERGE_EXAMPLE: &str = "\
Example:
  gpt-ablate merge runs/gpt2-shard0 runs/gpt2-shard1 --out runs/gpt2";

pub(super) const PERPLEXITY_EXAMPLE: &str = "\
Examples:
  gpt-ablate perplexity --model tests/fixtures/tiny-gpt2 --data tests/fixtures/sample.txt
  gpt-ablate perplexity --model DIR --data data/wikitext-2-raw-test.txt \\
      --activation sigmoid --layers 0-5 --context 1024 --stride 512 --json
  gpt-ablate perplexity --model gpt2 --protocol lm-eval --text-field page \\
      --data hf:EleutherAI/wikitext_document_level/wikitext-2-raw-v1/test-00000-of-00001.parquet
  gpt-ablate perplexity --model DIR --data wiki.test.raw --protocol llama-cpp --context 512
  gpt-ablate perplexity --model DIR --data FILE --save-nll tokens.parquet

Protocols: hf (sliding windows, the default), lm-eval (lm-evaluation-harness's
loglikelihood_rolling per document: word_perplexity, byte_perplexity, bits_per_byte),
llama-cpp (llama-perplexity's chunks: PPL = X +/- U), disjoint (non-overlapping windows).";

pub(super) const TRAIN_EXAMPLE: &str = "\
Examples:
  gpt-ablate train --init models/shakespeare-gpt2 --activation sigmoid \\
      --data shakespeare-train --eval-data shakespeare-val --steps 200 --out runs/recover-sigmoid
  gpt-ablate train --from-scratch configs/scratch-default.toml --activation relu \\
      --data shakespeare-train --eval-data shakespeare-val --steps 300 --out runs/scratch-relu --json

Running the same command again with the same --out resumes from the last checkpoint (and
ends with the same weights as an uninterrupted run); a finished run only reports.";

/// `--data` of the commands that score text.
pub(super) const DATA_HELP: &str =
    "UTF-8 text file (one document), .jsonl file (a document per line) or .parquet file (a \
    document per row), a named dataset (wikitext-2, shakespeare-val, shakespeare-train) or hf:ORG/NAME/path (a file \
    of a Hub dataset repo). Documents are joined with a blank line, except under --protocol \
    lm-eval, which scores each apart.";

/// Which checkpoint: `--model` and `--revision`.
#[derive(Debug, Args)]
pub struct ModelRefArgs {
    /// Checkpoint directory in Hugging Face format (config.json; model.safetensors, a sharded
    /// index or pytorch_model.bin; tokenizer.json or vocab.json + merges.txt), or a Hub id such
    /// as gpt2 or openai-community/gpt2-medium (fetched into the Hugging Face cache; ID@REV
    /// pins a revision).
    #[arg(long, value_name = "DIR|ID")]
    pub model: String,
    /// Hub revision (branch, tag or commit) of a Hub --model.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
}

impl ModelRefArgs {
    /// Finds (local) or fetches (Hub) the checkpoint's files.
    pub fn files(&self) -> anyhow::Result<CheckpointFiles> {
        CheckpointFiles::resolve(&self.model, self.revision.as_deref())
    }
}

/// `--activation`'s help: every activation name, from the list the parser accepts.
fn activation_help() -> String {
    format!(
        "Activation to put in the MLPs at load time: one of {}; or a per-layer map such as \
         0-1:relu,2-3:sigmoid (each layer once). Default: the checkpoint's own.",
        crate::model::activation::valid_names()
    )
}

/// Options shared by every command that loads a model.
#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub source: ModelRefArgs,
    #[arg(long, value_name = "NAME|MAP", help = activation_help())]
    pub activation: Option<ActivationMap>,
    /// Layers to swap: `all`, or indices and inclusive ranges such as `0,3,5-7`.
    #[arg(long, value_name = "SPEC", default_value = "all")]
    pub layers: LayerSpec,
    /// Compute device: cpu, cuda, cuda:N or metal.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Compute precision (weights are converted at load).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
    /// CPU threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

impl ModelArgs {
    /// Finds or fetches the checkpoint and loads it with the swap.
    pub(super) fn load(&self) -> anyhow::Result<Loaded> {
        load_files(self.source.files()?, &self.load_options()?)
    }

    /// The swap, precision and (opened) device to load with.
    pub(super) fn load_options(&self) -> anyhow::Result<LoadOptions> {
        let (activation, per_layer) = match &self.activation {
            None if self.layers != LayerSpec::All => anyhow::bail!(
                "--layers needs --activation (which activation to put in those layers)"
            ),
            None => (None, None),
            Some(map) => match map.single() {
                Some(act) => (Some(act), None),
                None if self.layers != LayerSpec::All => anyhow::bail!(
                    "--layers cannot be combined with a per-layer --activation map (the map names its layers)"
                ),
                None => (None, Some(map.clone())),
            },
        };
        Ok(LoadOptions {
            activation,
            layers: self.layers.clone(),
            per_layer,
            dtype: self.dtype.dtype(),
            device: self.device.open()?,
        })
    }
}

/// Library errors name options neutrally (`batch_size`); on the command line they are flags
/// (`--batch-size`).
pub(super) fn at_flags(e: anyhow::Error) -> anyhow::Error {
    use crate::eval::{diagnose::ContextOutOfRange, generate::GenError, perplexity::PplError};
    use crate::eval::{respell, FieldError};
    fn flag(field: &str) -> String {
        format!("--{}", field.replace('_', "-"))
    }
    fn spelled<E: FieldError + std::fmt::Display>(e: &E) -> Option<String> {
        e.field().map(|_| respell(e, flag))
    }
    let msg = (e.downcast_ref::<PplError>().and_then(spelled))
        .or_else(|| e.downcast_ref::<GenError>().and_then(spelled))
        .or_else(|| e.downcast_ref::<ContextOutOfRange>().and_then(spelled));
    match msg {
        Some(m) => anyhow::anyhow!(m),
        None => e,
    }
}
