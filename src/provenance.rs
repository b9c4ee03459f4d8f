//! Where results came from: SHA-256 of inputs, the tool's version and git commit, UTC
//! timestamps. Used by the run manifest and cell keys.

use std::io::Read;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// The tool's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binary was built from, if the build could see one.
pub fn git_commit() -> Option<&'static str> {
    option_env!("GPT_ABLATE_GIT_COMMIT").filter(|s| !s.is_empty())
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Hex SHA-256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `2026-11-28T16:24:51Z` for a system time.
pub fn utc_rfc3339(t: SystemTime) -> String {
    let (date, (h, m, s)) = utc_parts(t);
    format!("{date}T{h:02}:{m:02}:{s:02}Z")
}

/// `20261128-162451`: a timestamp for directory names.
pub fn utc_compact(t: SystemTime) -> String {
    let (date, (h, m, s)) = utc_parts(t);
    format!("{}-{h:02}{m:02}{s:02}", date.replace('-', ""))
}

pub fn now_rfc3339() -> String {
    utc_rfc3339(SystemTime::now())
}

fn utc_parts(t: SystemTime) -> (String, (u64, u64, u64)) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        (rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_883_091); // 2026-11-28T16:24:51Z
        assert_eq!(utc_rfc3339(t), "2026-11-28T16:24:51Z");
        assert_eq!(utc_compact(t), "20261128-162451");
        assert_eq!(
            utc_rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn hashes_match_known_vectors() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
