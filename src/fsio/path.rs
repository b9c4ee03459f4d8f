//! [`clean`]: a path with `.` and `dir/..` pairs removed, as written in result files and
//! manifests (`configs/../models/m` → `models/m`).

use std::path::{Component, Path, PathBuf};

/// `path` with `.` components dropped and each `name/..` pair removed, without touching the
/// file system. A leading `..` stays; `/..` is `/`. (Like Go's `filepath.Clean`: through a
/// symbolic link `a/link/..` is not `a`, which config-relative paths do not rely on.)
pub fn clean(path: &Path) -> PathBuf {
    let mut parts: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match parts.last() {
                Some(Component::Normal(_)) => {
                    parts.pop();
                }
                Some(Component::RootDir) | Some(Component::Prefix(_)) => {}
                _ => parts.push(c),
            },
            _ => parts.push(c),
        }
    }
    if parts.is_empty() {
        return PathBuf::from(".");
    }
    parts.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_dot_pairs_and_dots_are_removed() {
        let c = |p: &str| clean(Path::new(p)).display().to_string();
        assert_eq!(c("configs/../models/m"), "models/m");
        assert_eq!(c("./a/./b/"), "a/b");
        assert_eq!(c("../a/../../b"), "../../b");
        assert_eq!(c("/../x"), "/x");
        assert_eq!(c("a/.."), ".");
        assert_eq!(c("/abs/dir/../f.txt"), "/abs/f.txt");
    }
}
