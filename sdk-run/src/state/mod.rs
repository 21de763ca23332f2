//! Everything sdk-run keeps on disk, in one place: where it lives
//! (`paths`), sandbox names that cannot be invalid (`name`), the running
//! init's record and its liveness (`record`), and the per-sandbox lock
//! (`lock`). What a sandbox was created with (`config.json`) is
//! `sandbox::config`; the image store is `rootfs::store`.

pub mod lock;
pub mod name;
pub mod paths;
pub mod record;

pub use name::SandboxName;
pub use paths::{SandboxPaths, StateDir};
pub use record::{
    NsIds, State, is_running, read_json, read_json_opt, read_state, start_time, write_json,
};
