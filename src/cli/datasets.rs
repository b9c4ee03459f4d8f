//! `gpt-ablate datasets`: the named datasets `--data` accepts.

use crate::data::NAMED_DATASETS;

pub(super) fn run() -> anyhow::Result<()> {
    for d in &NAMED_DATASETS {
        println!(
            "{:<16} {:>9} bytes  {:<40} {}\n{:<16} {}",
            d.name,
            d.text.len(),
            d.tokens,
            d.licence,
            "",
            d.description
        );
    }
    println!(
        "\nAlso: any UTF-8 text file; a .jsonl file (one {{\"text\": ...}} per line); or\n\
         hf:ORG/NAME[@REV]/path/in/repo, a text or JSONL file of a Hub dataset repo."
    );
    Ok(())
}
