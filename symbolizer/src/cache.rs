//! The object cache: parsed ELF objects keyed by build-id plus a content
//! fingerprint (or by file identity when there is no build-id), with LRU
//! eviction under a byte budget. A file whose build-id is already cached
//! shares that entry only if its bytes are the same; otherwise (a forged
//! build-id) it gets its own entry, never the other's symbols. Comparing
//! only on a build-id collision keeps the common path free of hashing.
//!
//! Owns object identity and lifetime. A file seen under several paths (one per
//! process, `/proc/PID/root/...`) is parsed once; evicted objects stay alive
//! for callers that still hold them.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fs::{self, File};
use std::hash::BuildHasher;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

use crate::elf::{Backing, ElfObject};
use crate::stats::Counters;
use crate::Error;

/// What identifies a file when it has no build-id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileIdentity {
    pub(crate) fn of(meta: &fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    /// Build-id, and 0 for the first file seen with it, else the identity
    /// hash of a file with the same build-id but other bytes.
    BuildId(Box<[u8]>, u64),
    File(FileIdentity),
    /// An object read from memory with no build-id (a vDSO, tests).
    Memory(u64),
}

struct Inner {
    objects: LruCache<CacheKey, Arc<ElfObject>>,
    /// File identities seen, pointing at the object parsed for them.
    identities: HashMap<FileIdentity, CacheKey>,
}

/// How a file of a profiled process is read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReadFile {
    /// What lookups read of it, copied, at most `cap` bytes.
    Copy { cap: u64 },
    /// Mapped: the profiled process is the caller (see
    /// `SymbolizerBuilder::map_own_process_files`).
    Map,
}

pub(crate) struct ObjectCache {
    budget: usize,
    /// Keys the content hash with a secret of this process, so that no file
    /// can be made to collide with another on purpose.
    fingerprint: RandomState,
    inner: Mutex<Inner>,
}

impl ObjectCache {
    pub(crate) fn new(budget: usize) -> ObjectCache {
        ObjectCache {
            budget,
            fingerprint: RandomState::new(),
            inner: Mutex::new(Inner {
                objects: LruCache::unbounded(),
                identities: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves the maps consistent
        // (every update is a single insert or remove), so keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The object in the file at `path` (known to its user as
    /// `logical_path`), a file no profiled process controls: mapped.
    pub(crate) fn open(
        &self,
        path: &Path,
        logical_path: &Path,
        counters: &Counters,
    ) -> Result<Arc<ElfObject>, Error> {
        let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let identity = FileIdentity::of(&meta);
        if let Some(obj) = self.by_identity(&identity, counters) {
            return Ok(obj);
        }
        Counters::bump(&counters.cache_misses);
        let obj = ElfObject::open(path, logical_path)?;
        Ok(self.insert_file(identity, obj, counters))
    }

    /// The object in `file`, a file of a profiled process opened by the
    /// rule of [`crate::process`]: read into owned memory (at most `cap`
    /// bytes), so that truncating it cannot reach us; mapped only where
    /// the profiled process is the caller itself ([`ReadFile::Map`]).
    pub(crate) fn open_file(
        &self,
        file: &File,
        logical_path: &Path,
        read: ReadFile,
        counters: &Counters,
    ) -> Result<Arc<ElfObject>, Error> {
        let meta = file.metadata().map_err(|e| Error::io(logical_path, e))?;
        let identity = FileIdentity::of(&meta);
        if let Some(obj) = self.by_identity(&identity, counters) {
            return Ok(obj);
        }
        Counters::bump(&counters.cache_misses);
        let backing = match read {
            ReadFile::Copy { cap } => {
                // One object never takes more than the whole budget.
                let backing = Backing::read(file, logical_path, cap, self.budget as u64)?;
                if let Backing::Copied(copy) = &backing {
                    let left_out = copy.left_out();
                    if left_out.debug || left_out.symtab {
                        Counters::bump(&counters.objects_cut_to_budget);
                        tracing::debug!(
                            "{}: read without {} (over the symbol cache's {} bytes)",
                            logical_path.display(),
                            if left_out.symtab {
                                "debug sections and .symtab"
                            } else {
                                "debug sections"
                            },
                            self.budget
                        );
                    }
                }
                backing
            }
            ReadFile::Map => Backing::map(file, logical_path)?,
        };
        let obj = ElfObject::parse(Arc::new(backing), logical_path, logical_path)?;
        Ok(self.insert_file(identity, obj, counters))
    }

    fn by_identity(&self, identity: &FileIdentity, counters: &Counters) -> Option<Arc<ElfObject>> {
        let mut inner = self.lock();
        let key = inner.identities.get(identity).cloned()?;
        let obj = inner.objects.get(&key)?;
        Counters::bump(&counters.cache_hits);
        Some(Arc::clone(obj))
    }

    fn insert_file(
        &self,
        identity: FileIdentity,
        obj: ElfObject,
        counters: &Counters,
    ) -> Arc<ElfObject> {
        let key = match obj.build_id() {
            Some(id) => self.build_id_key(id, &obj, || self.fingerprint.hash_one(identity)),
            None => CacheKey::File(identity),
        };
        let obj = self.insert(key.clone(), obj, counters);
        self.lock().identities.insert(identity, key);
        obj
    }

    /// The object held in `bytes` (a vDSO image), cached by its build-id
    /// and content.
    pub(crate) fn open_bytes(
        &self,
        bytes: Vec<u8>,
        name: &Path,
        counters: &Counters,
    ) -> Result<Arc<ElfObject>, Error> {
        let obj = ElfObject::parse(Arc::new(Backing::Owned(bytes)), name, name)?;
        let hash = self.fingerprint.hash_one(&***obj.data());
        let key = match obj.build_id() {
            Some(id) => self.build_id_key(id, &obj, || hash),
            None => CacheKey::Memory(hash),
        };
        if let Some(existing) = self.lock().objects.get(&key) {
            Counters::bump(&counters.cache_hits);
            return Ok(Arc::clone(existing));
        }
        Counters::bump(&counters.cache_misses);
        Ok(self.insert(key, obj, counters))
    }

    /// The key for `obj` with build-id `id`: that of a cached object with the
    /// same build-id and the same bytes, else a key of its own (`variant`
    /// tells it from the others).
    fn build_id_key(&self, id: &[u8], obj: &ElfObject, variant: impl FnOnce() -> u64) -> CacheKey {
        let inner = self.lock();
        let mut taken = false;
        for (key, cached) in inner.objects.iter() {
            if let CacheKey::BuildId(b, v) = key {
                if **b == *id {
                    if ***cached.data() == ***obj.data() {
                        return key.clone();
                    }
                    taken |= *v == 0;
                }
            }
        }
        let v = if taken { variant().max(1) } else { 0 };
        CacheKey::BuildId(id.into(), v)
    }

    /// A cached object with build-id `id` (the most recently used, should
    /// several files claim it).
    pub(crate) fn by_build_id(&self, id: &[u8]) -> Option<Arc<ElfObject>> {
        let mut inner = self.lock();
        let key = inner
            .objects
            .iter()
            .find(|(k, _)| matches!(k, CacheKey::BuildId(b, _) if **b == *id))
            .map(|(k, _)| k.clone())?;
        inner.objects.get(&key).cloned()
    }

    /// Inserts `obj` unless an object with the same key is there already
    /// (same build-id under another path, or a racing thread); returns the
    /// cached one.
    fn insert(&self, key: CacheKey, obj: ElfObject, counters: &Counters) -> Arc<ElfObject> {
        let mut inner = self.lock();
        if let Some(existing) = inner.objects.get(&key) {
            Counters::bump(&counters.cache_hits);
            return Arc::clone(existing);
        }
        Counters::bump(&counters.objects_parsed);
        let obj = Arc::new(obj);
        inner.objects.put(key, Arc::clone(&obj));
        self.evict(&mut inner, counters);
        obj
    }

    /// Re-checks the budget: lazily parsed parts grow objects after insertion.
    pub(crate) fn enforce_budget(&self, counters: &Counters) {
        let mut inner = self.lock();
        self.evict(&mut inner, counters);
    }

    fn evict(&self, inner: &mut Inner, counters: &Counters) {
        let mut total: usize = inner.objects.iter().map(|(_, o)| o.weight()).sum();
        let mut evicted = false;
        // The most recently used object always stays, even alone over budget.
        while total > self.budget && inner.objects.len() > 1 {
            let Some((_, obj)) = inner.objects.pop_lru() else {
                break;
            };
            total = total.saturating_sub(obj.weight());
            tracing::debug!(
                "{}: dropped from the symbol cache ({} bytes; over {} bytes)",
                obj.path.display(),
                obj.weight(),
                self.budget
            );
            Counters::bump(&counters.cache_evictions);
            evicted = true;
        }
        if evicted {
            let Inner {
                objects,
                identities,
            } = inner;
            identities.retain(|_, key| objects.contains(key));
        }
        counters
            .cache_bytes
            .store(total as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Gives back the pages of the cached objects' mapped DWARF sections.
    pub(crate) fn give_back_pages(&self) {
        for (_, obj) in self.lock().objects.iter() {
            obj.give_back_pages();
        }
    }

    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.objects.clear();
        inner.identities.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().objects.len()
    }
}
