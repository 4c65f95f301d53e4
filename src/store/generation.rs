//! Generations of the database file, for rebuilds without downtime.
//!
//! `JOBSTATS_DB_PATH` names either a plain SQLite file or a symlink to a generation file
//! `<name>.gen-<timestamp>` in the same directory. A rebuild writes a new generation under a
//! `.building` name, renames it when complete, then atomically replaces the symlink. A running
//! `serve` notices that the path now resolves elsewhere, moves its projector and then its readers
//! to the new file, and deletes the old generation. Because connections always open the
//! resolved file, each generation keeps its own `-wal`/`-shm` and a swap never mixes them.
//!
//! Locks (advisory, released by the kernel when a process dies, even by kill -9):
//! `<name>.serve.lock` is held by the one `serve` of a database, `<name>.rebuild.lock` by the
//! one rebuild.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::{resolve, StoreError};

/// Errors specific to generation handling.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("another {0} holds {1}")]
    Busy(&'static str, PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("file system: {0}")]
    Io(#[from] io::Error),
}

/// An exclusive advisory lock, released on drop or process death.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn sibling(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    db.with_file_name(name)
}

fn try_lock(path: PathBuf, holder: &'static str) -> Result<FileLock, GenerationError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(FileLock { _file: file, path }),
        Err(std::fs::TryLockError::WouldBlock) => Err(GenerationError::Busy(holder, path)),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Taken by `serve` for its whole life: one server per database file.
pub fn lock_serve(db: &Path) -> Result<FileLock, GenerationError> {
    try_lock(sibling(db, ".serve.lock"), "jobstats serve")
}

/// Taken by a rebuild: one rebuild per database at a time.
pub fn lock_rebuild(db: &Path) -> Result<FileLock, GenerationError> {
    try_lock(sibling(db, ".rebuild.lock"), "jobstats rebuild")
}

/// Whether a `serve` currently holds the database.
pub fn is_served(db: &Path) -> bool {
    matches!(lock_serve(db), Err(GenerationError::Busy(..)))
}

/// A fresh name for the next generation, and the name it is built under.
pub fn next_generation(db: &Path) -> (PathBuf, PathBuf) {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let generation = sibling(db, &format!(".gen-{stamp}"));
    let building = sibling(&generation, ".building");
    (generation, building)
}

/// Atomically points `db` at `generation` (a file in the same directory). Returns the file
/// `db` resolved to before, if any.
pub fn swap_in(db: &Path, generation: &Path) -> Result<Option<PathBuf>, GenerationError> {
    let previous = db.exists().then(|| resolve(db));
    let target = generation.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "generation has no file name")
    })?;
    let temporary = sibling(db, ".swap");
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(target, &temporary)?;
    std::fs::rename(&temporary, db)?;
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(previous)
}

/// Deletes a database file with its `-wal` and `-shm` companions.
pub fn remove_database_files(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = sibling(path, suffix);
        match std::fs::remove_file(&file) {
            Ok(()) => tracing::debug!(file = %file.display(), "removed"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %file.display(), error = %e, "could not remove"),
        }
    }
}

/// Removes what interrupted rebuilds and finished swaps left behind: `.building` files (when
/// no rebuild runs), generations the path no longer points to, and the stray `-wal`/`-shm` of
/// a plain file replaced by a symlink. Call only when no process reads an old generation.
pub fn remove_leftovers(db: &Path) -> Result<(), GenerationError> {
    let rebuild_running = matches!(lock_rebuild(db), Err(GenerationError::Busy(..)));
    let current = resolve(db);
    for (path, building) in generations(db)? {
        if building && rebuild_running {
            continue;
        }
        if !building && resolve(&path) == current {
            continue;
        }
        remove_database_files(&path);
    }
    remove_stray_journals(db);
    Ok(())
}

/// Removes the `.building` files of interrupted rebuilds. The caller holds the rebuild lock.
pub fn remove_interrupted_builds(
    _rebuild_lock: &FileLock,
    db: &Path,
) -> Result<(), GenerationError> {
    for (path, building) in generations(db)? {
        if building {
            tracing::info!(file = %path.display(), "removing an interrupted rebuild");
            remove_database_files(&path);
        }
    }
    Ok(())
}

/// After a swap that no `serve` follows: removes the file `db` resolved to before (a plain
/// file replaced by the symlink leaves only its journals behind).
pub fn remove_replaced(db: &Path, previous: &Path) {
    if previous == db {
        remove_stray_journals(db);
    } else if resolve(db) != previous {
        remove_database_files(previous);
    }
}

/// A symlinked path has no journals of its own; those left are a replaced plain file's.
fn remove_stray_journals(db: &Path) {
    if db.is_symlink() {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(sibling(db, suffix));
        }
    }
}

/// The generation files next to `db` (not their journals), each with whether it is still
/// being built.
fn generations(db: &Path) -> Result<Vec<(PathBuf, bool)>, GenerationError> {
    let dir = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(name) = db.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.gen-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        if rest.ends_with("-wal") || rest.ends_with("-shm") || rest.ends_with("-journal") {
            continue;
        }
        found.push((entry.path(), rest.ends_with(".building")));
    }
    Ok(found)
}
