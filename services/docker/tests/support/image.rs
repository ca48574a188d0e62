//! The offline test image, and its removal. Every image the tests import is
//! removed again, with every container made from it, also when a test panics:
//!
//! - [`TestImage`] is one imported image under a unique tag; dropping it
//!   removes the containers whose ancestor it is, then the image.
//! - [`ImagePool`] hands the same image to every test that asks while any
//!   holds it (tests of one binary run in parallel), so one test's cleanup
//!   never removes an image another still runs; the last holder removes it.
//! - Each image carries [`FIXTURE_LABEL`] and its owner process (pid and
//!   start time) in [`OWNER_KEY`]; [`remove_leftovers`], run before this
//!   process imports its first shared image, removes those of processes that
//!   are gone (a run killed before its guards dropped).
//!
//! The import reads a rootfs tarball cached under `target/`, so an image
//! costs one `docker import` (a fraction of a second).

use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

/// The label every test image carries, `key=value`.
pub const FIXTURE_LABEL: &str = "mesh.test.fixture=mesh-docker";
/// The label naming the process that imported an image: `<pid>-<start time>`.
pub const OWNER_KEY: &str = "mesh.test.owner";
/// The repository of every test image's tag.
const REPOSITORY: &str = "mesh-test-busybox";

/// One imported test image; removed, with its containers, when dropped.
#[derive(Debug)]
pub struct TestImage {
    tag: String,
    id: String,
}

impl TestImage {
    /// Imports a new image owned by this process, under a tag of its own.
    pub fn build() -> Self {
        Self::build_owned_by(&this_process_owner())
    }

    /// Imports a new image whose owner label says `owner`.
    pub fn build_owned_by(owner: &str) -> Self {
        let tag = format!("{REPOSITORY}:{}", uuid::Uuid::now_v7().simple());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/build-test-image.sh");
        let rootfs_tar = concat!(env!("CARGO_TARGET_TMPDIR"), "/mesh-docker-test-rootfs.tar");
        let output = Command::new("bash")
            .args([script, rootfs_tar, &tag, FIXTURE_LABEL, &format!("{OWNER_KEY}={owner}")])
            .output()
            .expect("run build-test-image.sh");
        assert!(output.status.success(), "build-test-image.sh failed: {}", String::from_utf8_lossy(&output.stderr));
        let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(id.starts_with("sha256:"), "docker import printed {id:?}, not an image id");
        Self { tag, id }
    }

    /// The tag to run, e.g. `mesh-test-busybox:0190…`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The full image id, `sha256:…`.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        remove_image_and_its_containers(&self.id);
    }
}

/// Hands out one shared [`TestImage`] while anyone holds it, and a new one
/// once every holder let go of the last (which removed it).
#[derive(Debug)]
pub struct ImagePool {
    current: Mutex<Weak<TestImage>>,
}

impl ImagePool {
    pub const fn new() -> Self {
        Self { current: Mutex::new(Weak::new()) }
    }

    /// The image in use, or a new one when none is.
    pub fn acquire(&self) -> Arc<TestImage> {
        // Held while importing, so two tests starting together share one image.
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(image) = current.upgrade() {
            return image;
        }
        let image = Arc::new(TestImage::build());
        *current = Arc::downgrade(&image);
        image
    }
}

/// The image the tests of this process share (see [`ImagePool`]); the first
/// call removes the leftovers of earlier runs first.
pub fn shared_image() -> Arc<TestImage> {
    static SHARED: ImagePool = ImagePool::new();
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(remove_leftovers);
    SHARED.acquire()
}

/// Removes every test image (and its containers) whose owner process is gone.
pub fn remove_leftovers() {
    let Some(listed) = docker_stdout(&["images", "-q", "--no-trunc", "--filter", &format!("label={FIXTURE_LABEL}")])
    else {
        return;
    };
    let mut ids: Vec<&str> = listed.split_whitespace().collect();
    // An image with two tags is listed twice.
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let owner_format = format!("{{{{index .Config.Labels \"{OWNER_KEY}\"}}}}");
        let Some(owner) = docker_stdout(&["image", "inspect", "--format", &owner_format, id]) else {
            continue;
        };
        if !is_alive(owner.trim()) {
            remove_image_and_its_containers(id);
        }
    }
}

/// Whether the process named by an owner label (`<pid>-<start time>`) still
/// runs: same pid and same start time, so a reused pid does not count.
pub fn is_alive(owner: &str) -> bool {
    let Some((pid, start_time)) = owner.split_once('-') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    process_start_time(&format!("/proc/{pid}/stat")).is_some_and(|actual| actual == start_time)
}

/// This process as an owner label: `<pid>-<start time>`.
pub fn this_process_owner() -> String {
    let start_time = process_start_time("/proc/self/stat").expect("/proc/self/stat has a start time");
    format!("{}-{start_time}", std::process::id())
}

/// The start time (clock ticks after boot, field 22) in a `/proc/<pid>/stat`.
fn process_start_time(stat_path: &str) -> Option<String> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Field 2, the command name, is in parentheses and may hold spaces; field 3 follows the last ')'.
    let after_command = &stat[stat.rfind(')')? + 1..];
    after_command.split_whitespace().nth(22 - 3).map(str::to_owned)
}

/// Removes every container made from image `id` (running or not, with their
/// anonymous volumes), then the image; errors are ignored, as in any cleanup.
pub fn remove_image_and_its_containers(id: &str) {
    if let Some(containers) = docker_stdout(&["ps", "-aq", "--no-trunc", "--filter", &format!("ancestor={id}")]) {
        let containers: Vec<&str> = containers.split_whitespace().collect();
        if !containers.is_empty() {
            let _ = Command::new("docker").args(["rm", "--force", "--volumes"]).args(&containers).output();
        }
    }
    let _ = Command::new("docker").args(["image", "rm", "--force", id]).output();
}

/// The stdout of a docker CLI call that succeeded; `None` otherwise.
fn docker_stdout(args: &[&str]) -> Option<String> {
    let output = Command::new("docker").args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}
