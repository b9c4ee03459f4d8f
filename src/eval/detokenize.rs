//! lm-evaluation-harness's `wikitext` task scores each page after its
//! `wikitext_detokenizer` (lm_eval/tasks/wikitext/preprocess_wikitext.py) undoes WikiText's
//! tokenization (` @-@ `, ` , `, spaced brackets and quotes, `= = =` headings); its words and
//! bytes are still counted on the page as stored. Reproduced rule by rule, in its order.

use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Text clean-ups a protocol can apply before scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Detokenizer {
    /// lm-eval's `wikitext_detokenizer`.
    Wikitext,
}

impl Detokenizer {
    pub fn apply(self, text: &str) -> String {
        match self {
            Self::Wikitext => wikitext_detokenize(text),
        }
    }
}

/// Python's `\s` (Unicode whitespace plus U+001C..U+001F), for patterns.
const SPACE: &str = r"[\s\x1c-\x1f]";

/// The bracket and quote rules: `\(\s*([^\)]*?)\s*\)` → `(\1)` and the like.
fn bracket_rules() -> &'static [(Regex, &'static str)] {
    static RULES: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    RULES.get_or_init(|| {
        [
            (r"\(", r"[^\)]", r"\)", "(${1})"),
            (r"\[", r"[^\]]", r"\]", "[${1}]"),
            (r"\{", r"[^}]", r"\}", "{${1}}"),
            ("\"", "[^\"]", "\"", "\"${1}\""),
            ("'", "[^']", "'", "'${1}'"),
        ]
        .into_iter()
        .map(|(open, inner, close, with)| {
            let pattern = format!("{open}{SPACE}*({inner}*?){SPACE}*{close}");
            (Regex::new(&pattern).expect("a valid pattern"), with)
        })
        .collect()
    })
}

/// `wikitext_detokenizer(doc)`, on the page's text.
pub fn wikitext_detokenize(page: &str) -> String {
    let mut s = page.replace("s '", "s'");
    // re.sub(r"/' [0-9]/", r"/'[0-9]/", string): a literal replacement, as written there.
    static SLASH: OnceLock<Regex> = OnceLock::new();
    let slash = SLASH.get_or_init(|| Regex::new(r"/' [0-9]/").expect("a valid pattern"));
    s = slash.replace_all(&s, "/'[0-9]/").into_owned();
    for (from, to) in [
        (" @-@ ", "-"),
        (" @,@ ", ","),
        (" @.@ ", "."),
        (" : ", ": "),
        (" ; ", "; "),
        (" . ", ". "),
        (" ! ", "! "),
        (" ? ", "? "),
        (" , ", ", "),
    ] {
        s = s.replace(from, to);
    }
    for (re, with) in bracket_rules() {
        s = re.replace_all(&s, *with).into_owned();
    }
    for (from, to) in [
        ("= = = =", "===="),
        ("= = =", "==="),
        ("= =", "=="),
        (" \u{b0} ", "\u{b0}"),
        (" \n", "\n"),
        ("\n ", "\n"),
        (" N ", " 1 "),
        (" 's", "'s"),
    ] {
        s = s.replace(from, to);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undoes_wikitext_tokenization() {
        let page = " = Title = \n The 1 @,@ 000 @-@ year ( old ) record 's \" best \" . \n = = Note = = \n";
        assert_eq!(
            wikitext_detokenize(page),
            " = Title =\nThe 1,000-year (old) record's \"best\".\n== Note ==\n"
        );
    }
}
