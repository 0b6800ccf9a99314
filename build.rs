//! Records the git revision the binary is built from, for `spillway --version`: the short hash of
//! HEAD (`git rev-parse --short HEAD`), or `SPILLWAY_GIT_REVISION` when set (a container build
//! without `.git` passes it as a build argument), else "unknown" (a source tarball, no git).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

/// Asks cargo to run this script again when `path` changes (only existing paths: cargo would
/// rerun the script at every build for a missing one).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SPILLWAY_GIT_REVISION");
    let revision = std::env::var("SPILLWAY_GIT_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SPILLWAY_GIT_REVISION={}", revision.trim());
    // HEAD moves on a checkout (.git/HEAD) and on a commit (the branch's ref, or packed-refs).
    // In a worktree `.git` is a file naming the real git directory: ask git where things are.
    watch(Path::new(".git/HEAD"));
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        watch(&Path::new(&git_dir).join("HEAD"));
    }
    if let (Some(head_ref), Some(common)) = (
        git(&["symbolic-ref", "-q", "HEAD"]),
        git(&["rev-parse", "--git-common-dir"]),
    ) {
        watch(&Path::new(&common).join(head_ref));
        watch(&Path::new(&common).join("packed-refs"));
    }
}
