//! The previous release's `bulwark`, built from this repository's history, for the
//! rolling-upgrade suite (t201_compose_upgrade): a node of it and a node of this tree
//! run side by side in one cluster.
//!
//! The source is `git archive` of [`PREVIOUS_RELEASE`] (the last commit that landed
//! before this tree's feature levels). It is built with cargo in a target directory
//! of its own beside the running test's (`<target>/previous-release`), seeded with a
//! copy of the dependencies already compiled there (RocksDB's C++ above all), so
//! that only Bulwark's own crates are compiled again (about 100 s here). Only the
//! binary is kept there, for later runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use crate::compose::run;

/// The commit of the previous release: the last to land before feature levels
/// (2026-12-06, with the delivery request `Claim`; feature level 1 to this tree).
pub const PREVIOUS_RELEASE: &str = "d5ad7c4165e8e697c1b77bfdb80aa84542efbb6f";

/// The previous release's `bulwark`, built if it is not there yet.
pub fn previous_release_bin() -> Result<PathBuf> {
    let repo = crate::compose::repo()?;
    let profile_dir = crate::bulwark_bin()?
        .parent()
        .context("the binary's directory")?
        .to_path_buf();
    let target = profile_dir
        .parent()
        .context("the target directory")?
        .to_path_buf();
    let home = target.join("previous-release");
    let short = &PREVIOUS_RELEASE[..12];
    let bin = home.join(format!("bulwark-{short}"));
    if bin.is_file() {
        return Ok(bin);
    }
    let has = Command::new("git")
        .current_dir(&repo)
        .args(["cat-file", "-e", &format!("{PREVIOUS_RELEASE}^{{commit}}")])
        .stderr(Stdio::null())
        .status()
        .context("running git")?;
    ensure!(
        has.success(),
        "the previous release, commit {PREVIOUS_RELEASE}, is not in {}: the upgrade suite \
         needs the repository's history (a clone, not a shallow one or an export)",
        repo.display()
    );
    let started = Instant::now();
    let src = home.join(format!("src-{short}"));
    if src.exists() {
        std::fs::remove_dir_all(&src)?;
    }
    std::fs::create_dir_all(&src)?;
    // Extracted with the time of extraction (-m): newer than anything in the seeded
    // target directory, so cargo compiles these sources rather than take the
    // fingerprints of this tree's crates for theirs.
    let archive = Command::new("git")
        .current_dir(&repo)
        .args(["archive", "--format=tar", PREVIOUS_RELEASE])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let untar = Command::new("tar")
        .args(["-x", "-m", "-C"])
        .arg(&src)
        .stdin(archive.stdout.context("git archive's output")?)
        .status()
        .context("running tar")?;
    ensure!(untar.success(), "tar of the previous release: {untar}");
    // Built with this tree's cargo configuration (its target features), which the
    // seeded dependencies were compiled with: other flags would compile them again.
    let config = repo.join(".cargo/config.toml");
    if config.is_file() {
        std::fs::create_dir_all(src.join(".cargo"))?;
        std::fs::copy(&config, src.join(".cargo/config.toml"))?;
    }
    let own_target = home.join("target");
    if own_target.exists() {
        std::fs::remove_dir_all(&own_target)?;
    }
    seed(&profile_dir, &own_target.join("debug"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .current_dir(&src)
        .args([
            "build",
            "--locked",
            "-p",
            "bulwark-node",
            "--bin",
            "bulwark",
        ])
        .env("CARGO_TARGET_DIR", &own_target)
        .env_remove("RUSTFLAGS"))?;
    std::fs::copy(own_target.join("debug/bulwark"), &bin)?;
    // Only the binary is kept: the seeded copy is as large as RocksDB's build.
    std::fs::remove_dir_all(&src)?;
    std::fs::remove_dir_all(&own_target)?;
    println!(
        "the previous release ({short}) built in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        bin.display()
    );
    Ok(bin)
}

/// Whether `name` (in `deps`, `build` or `.fingerprint`) is Bulwark's own: compiled
/// again from the previous release's source, never copied.
fn own(name: &str) -> bool {
    name.starts_with("bulwark") || name.starts_with("libbulwark")
}

/// Copies into `to` what `from` (a profile directory) holds of compiled
/// dependencies: build script outputs, fingerprints, and the libraries in `deps`
/// (not the test and program executables, not Bulwark's own crates), with their
/// modification times, which cargo's freshness checks compare.
fn seed(from: &Path, to: &Path) -> Result<()> {
    for dir in ["build", ".fingerprint"] {
        for entry in std::fs::read_dir(from.join(dir))? {
            let entry = entry?;
            if !own(&entry.file_name().to_string_lossy()) {
                copy_tree(&entry.path(), &to.join(dir).join(entry.file_name()))?;
            }
        }
    }
    let deps = to.join("deps");
    std::fs::create_dir_all(&deps)?;
    for entry in std::fs::read_dir(from.join("deps"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let library = [".rlib", ".rmeta", ".so", ".d"]
            .iter()
            .any(|ext| name.ends_with(ext));
        if library && !own(&name) {
            copy_file(&entry.path(), &deps.join(&name))?;
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        copy_file(from, to)
    }
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    let modified = std::fs::metadata(from)?.modified()?;
    std::fs::File::open(to)?.set_modified(modified)?;
    Ok(())
}
