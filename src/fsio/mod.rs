//! Files the tool writes and reads, done so that nothing is lost, corrupted or endless:
//!
//! - [`lock`]: an exclusive lock on an output directory ([`DirLock`]), released by the OS
//!   when the process dies, so a second process on the same directory stops at once.
//! - [`write`]: atomic replacement ([`write_atomic`]) and appends that leave no partial line
//!   ([`append_line`]); every error names the path, and no temporary file is left behind.
//! - [`read`]: reading a regular file up to a size limit ([`read_limited`]): FIFOs, devices
//!   and oversized files are refused with an error instead of being read without end.
//! - [`path`]: paths without `.` and `dir/..` ([`clean`]), for result files.

pub mod lock;
pub mod path;
pub mod read;
pub mod write;

pub use lock::{DirLock, LockError};
pub use path::clean;
pub use read::{
    open_regular, read_limited, read_limited_to_string, ReadError, DATA_LIMIT_ENV, SMALL_FILE_LIMIT,
};
pub use write::{append_line, write_atomic, WriteError};
