//! The environment the Hub client follows: `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN`,
//! `HF_ENDPOINT` and `HF_HUB_OFFLINE`, read with the defaults of Python's huggingface_hub.

use std::path::PathBuf;

/// Where the Hub is and what the environment asks for.
#[derive(Debug, Clone)]
pub struct HubEnv {
    /// Base URL, no trailing slash (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
    /// The hub cache (`HF_HUB_CACHE`, default `$HF_HOME/hub`).
    pub cache: PathBuf,
    /// `HF_TOKEN`, else the token file huggingface-cli login writes (`$HF_HOME/token`).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE=1`: use the cache only.
    pub offline: bool,
}

impl HubEnv {
    /// Reads the same variables, with the same defaults, as Python's huggingface_hub.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// [`HubEnv::from_env`] over any variable lookup (for tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let cache = var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
                var("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_default()
                    .join(".cache")
            });
            cache.join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let file = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| home.join("token"));
                std::fs::read_to_string(file).ok()
            })
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| "https://huggingface.co".into())
            .trim()
            .trim_end_matches('/')
            .to_string();
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "on" | "yes" | "true"
            )
        });
        Self {
            endpoint,
            cache,
            token,
            offline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn environment_follows_huggingface_hub() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let env = HubEnv::from_vars(vars(&[("HOME", "/home/u")]));
        assert_eq!(env.cache, Path::new("/home/u/.cache/huggingface/hub"));
        assert_eq!(env.endpoint, "https://huggingface.co");
        assert!(!env.offline);
        let env = HubEnv::from_vars(vars(&[
            ("HF_HOME", "/h"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_HUB_OFFLINE", "True"),
            ("HF_TOKEN", " hf_x \n"),
        ]));
        assert_eq!(env.cache, Path::new("/h/hub"));
        assert_eq!(env.endpoint, "http://127.0.0.1:9");
        assert!(env.offline);
        assert_eq!(env.token.as_deref(), Some("hf_x"));
        let env = HubEnv::from_vars(vars(&[
            ("HF_HOME", "/h"),
            ("HF_HUB_CACHE", "/c"),
            ("HF_HUB_OFFLINE", "0"),
        ]));
        assert_eq!(env.cache, Path::new("/c"));
        assert!(!env.offline);
    }
}
