//! Hashing every regular file of a manifest, on several threads: each has its own
//! ext4-view handle (which is `!Send`), and takes the next file from a shared index.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::error::{InspectError, Result};
use crate::files::sha256_file;
use crate::image::{DiskImage, guarded};

/// At most this many threads hash one manifest.
const MAX_THREADS: usize = 4;
/// Fewer files than this are hashed on the calling thread.
const PARALLEL_FROM: usize = 256;

/// A file to hash: its raw path, and its manifest key.
pub(crate) struct Job {
    pub(crate) raw: Vec<u8>,
    pub(crate) key: String,
}

/// SHA-256 of each job's file, in job order, and the bytes read in all.
pub(crate) fn hash_all(img: &DiskImage, jobs: &[Job]) -> Result<(Vec<[u8; 32]>, u64)> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_THREADS);
    if threads == 1 || jobs.len() < PARALLEL_FROM {
        let mut out = Vec::with_capacity(jobs.len());
        let mut total = 0u64;
        for job in jobs {
            let (sha, n) = sha256_file(img.fs(), &job.raw)?;
            out.push(sha);
            total += n;
        }
        return Ok((out, total));
    }

    let locator = img.locator();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<[u8; 32]>>> = Mutex::new(vec![None; jobs.len()]);
    let total = AtomicUsize::new(0);
    let first_error: Mutex<Option<InspectError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let work = || -> Result<()> {
                    let fs = locator.load()?;
                    let mut local = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        let (sha, n) = sha256_file(&fs, &job.raw)?;
                        total
                            .fetch_add(usize::try_from(n).unwrap_or(usize::MAX), Ordering::Relaxed);
                        local.push((i, sha));
                    }
                    let mut results = results
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    for (i, sha) in local {
                        results[i] = Some(sha);
                    }
                    Ok(())
                };
                if let Err(e) = guarded("hashing files", work) {
                    failed.store(true, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = first_error
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return Err(e);
    }
    let results = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let hashes = results
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| InspectError::Corrupt("a file was left unhashed".to_owned()))?;
    Ok((hashes, total.into_inner() as u64))
}
