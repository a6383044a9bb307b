//! A filesystem with reflinks for the clone tests: an XFS image (`mkfs.xfs -m reflink=1`)
//! in a temp dir, on a loop device, mounted. [`ReflinkFs`] unmounts it, detaches the loop
//! device and removes the image when dropped, also when a test panics.
//!
//! Needs root, loop devices and `mkfs.xfs` (Debian's xfsprogs; `scripts/test` installs it
//! when missing). Where any is missing [`ReflinkFs::mount`] says which: the test fails with
//! that reason (a test that cannot do its job must not pass), unless
//! `PVKIT_SKIP_REFLINK_TEST=1` asks to skip it, which `CI=true` refuses.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of the image: the smallest XFS mkfs.xfs 6 makes is 300 MiB (sparse: little of it is
/// ever written).
const IMAGE_BYTES: u64 = 320 << 20;

/// A mounted XFS with reflinks.
#[derive(Debug)]
pub struct ReflinkFs {
    dir: PathBuf,
    mnt: PathBuf,
    loop_dev: Option<String>,
    mounted: bool,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

impl ReflinkFs {
    /// Makes and mounts the filesystem under `dir` (created; an earlier run's leftovers are
    /// removed by the caller's fresh dir).
    pub fn mount(dir: &Path) -> Result<Self, String> {
        let mut fs = Self {
            dir: dir.to_owned(),
            mnt: dir.join("mnt"),
            loop_dev: None,
            mounted: false,
        };
        if !Path::new("/dev/loop-control").exists() {
            return Err("no loop devices (/dev/loop-control is missing)".into());
        }
        let image = dir.join("xfs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(IMAGE_BYTES))
            .map_err(|e| format!("cannot create {}: {e}", image.display()))?;
        run(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&image))
        .map_err(|e| format!("mkfs.xfs (Debian: xfsprogs): {e}"))?;
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image))?;
        fs.loop_dev = Some(dev.clone());
        std::fs::create_dir_all(&fs.mnt).map_err(|e| e.to_string())?;
        run(Command::new("mount").arg(&dev).arg(&fs.mnt))?;
        fs.mounted = true;
        Ok(fs)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// [`ReflinkFs::mount`], or `None` when `PVKIT_SKIP_REFLINK_TEST=1` asks to skip a
    /// machine that cannot (said on stderr); any other failure panics with its reason.
    pub fn mount_or_skip(dir: &Path) -> Option<Self> {
        match Self::mount(dir) {
            Ok(fs) => Some(fs),
            Err(e) => {
                let skip = std::env::var("PVKIT_SKIP_REFLINK_TEST").is_ok_and(|v| v == "1");
                if skip && !super::ci() {
                    eprintln!(
                        "warning: SKIPPED the reflink clone test (PVKIT_SKIP_REFLINK_TEST=1): {e}"
                    );
                    return None;
                }
                panic!(
                    "cannot set up the XFS-with-reflinks filesystem on a loop device, so the \
                     reflink path of clones cannot be tested: {e}. Run as root with loop \
                     devices and xfsprogs (scripts/test installs it), or set \
                     PVKIT_SKIP_REFLINK_TEST=1 outside CI to skip this test"
                );
            }
        }
    }
}

impl Drop for ReflinkFs {
    fn drop(&mut self) {
        if self.mounted {
            // Lazily if a process (a pvkit of a failed test) still has a file open there.
            if run(Command::new("umount").arg(&self.mnt)).is_err() {
                let _ = run(Command::new("umount").arg("-l").arg(&self.mnt));
            }
        }
        if let Some(dev) = &self.loop_dev {
            let _ = run(Command::new("losetup").args(["-d", dev]));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The extents of `file` as `filefrag -v` (e2fsprogs) lists them: (first logical block,
/// last logical block, shared with another file).
pub fn extents(file: &Path) -> Vec<(u64, u64, bool)> {
    let out = run(Command::new("filefrag").arg("-v").arg(file)).expect("filefrag");
    out.lines()
        .filter_map(|l| {
            // `   0:        0..       0:      24..      24:      1:             shared`
            let (ext, rest) = l.trim().split_once(':')?;
            ext.parse::<u64>().ok()?;
            let (range, _) = rest.trim().split_once(':')?;
            let (a, b) = range.split_once("..")?;
            Some((
                a.trim().parse().ok()?,
                b.trim().parse().ok()?,
                l.contains("shared"),
            ))
        })
        .collect()
}
