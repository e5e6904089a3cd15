//! Stamps the source revision into the binary for `metaclinic --version`.
//!
//! The revision is, in order: `METACLINIC_REVISION` from the environment (the Dockerfile
//! passes it, since its build context has no `.git`), the checkout's `git rev-parse --short
//! HEAD`, or `unknown` (a source tarball, or no git installed).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=METACLINIC_REVISION");
    let revision = std::env::var("METACLINIC_REVISION")
        .ok()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=METACLINIC_BUILD_REVISION={revision}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn git_revision() -> Option<String> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let dir = |arg| {
        git(&["-C", &manifest_dir, "rev-parse", arg]).map(|d| Path::new(&manifest_dir).join(d))
    };
    // HEAD is per worktree; branch refs live in the common directory.
    let (git_dir, common_dir) = (dir("--git-dir")?, dir("--git-common-dir")?);
    // A new commit moves the branch's ref (or packed-refs); a checkout moves HEAD. Only paths
    // that exist are named: cargo reruns a build script whose watched path is missing every time.
    let mut watched: Vec<PathBuf> = vec![git_dir.join("HEAD"), common_dir.join("packed-refs")];
    if let Some(head_ref) = git(&["-C", &manifest_dir, "symbolic-ref", "-q", "HEAD"]) {
        watched.push(common_dir.join(head_ref));
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    git(&["-C", &manifest_dir, "rev-parse", "--short=12", "HEAD"])
}
