//! The object cache: parsed ELF objects keyed by build-id (or by file identity
//! when there is none), with LRU eviction under a byte budget.
//!
//! Owns object identity and lifetime. A file seen under several paths (one per
//! process, `/proc/PID/root/...`) is parsed once; evicted objects stay alive
//! for callers that still hold them.

use std::collections::HashMap;
use std::fs;
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
    BuildId(Box<[u8]>),
    File(FileIdentity),
    /// An object read from memory with no build-id (a vDSO, tests).
    Memory(u64),
}

struct Inner {
    objects: LruCache<CacheKey, Arc<ElfObject>>,
    /// File identities seen, pointing at the object parsed for them.
    identities: HashMap<FileIdentity, CacheKey>,
}

pub(crate) struct ObjectCache {
    budget: usize,
    inner: Mutex<Inner>,
}

impl ObjectCache {
    pub(crate) fn new(budget: usize) -> ObjectCache {
        ObjectCache {
            budget,
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

    /// The object in the file at `path` (known to its user as `logical_path`).
    pub(crate) fn open(
        &self,
        path: &Path,
        logical_path: &Path,
        counters: &Counters,
    ) -> Result<Arc<ElfObject>, Error> {
        let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let identity = FileIdentity::of(&meta);
        {
            let mut inner = self.lock();
            if let Some(key) = inner.identities.get(&identity).cloned() {
                if let Some(obj) = inner.objects.get(&key) {
                    Counters::bump(&counters.cache_hits);
                    return Ok(Arc::clone(obj));
                }
            }
        }
        Counters::bump(&counters.cache_misses);
        let obj = ElfObject::open(path, logical_path)?;
        let key = match obj.build_id() {
            Some(id) => CacheKey::BuildId(id.into()),
            None => CacheKey::File(identity),
        };
        let obj = self.insert(key.clone(), obj, counters);
        self.lock().identities.insert(identity, key);
        Ok(obj)
    }

    /// The object held in `bytes` (a vDSO image), cached by its build-id.
    pub(crate) fn open_bytes(
        &self,
        bytes: Vec<u8>,
        name: &Path,
        counters: &Counters,
    ) -> Result<Arc<ElfObject>, Error> {
        let obj = ElfObject::parse(Arc::new(Backing::Owned(bytes)), name, name)?;
        let key = match obj.build_id() {
            Some(id) => CacheKey::BuildId(id.into()),
            None => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                obj.data().hash(&mut h);
                CacheKey::Memory(h.finish())
            }
        };
        if let Some(existing) = self.lock().objects.get(&key) {
            Counters::bump(&counters.cache_hits);
            return Ok(Arc::clone(existing));
        }
        Counters::bump(&counters.cache_misses);
        Ok(self.insert(key, obj, counters))
    }

    /// A cached object with build-id `id`.
    pub(crate) fn by_build_id(&self, id: &[u8]) -> Option<Arc<ElfObject>> {
        self.lock()
            .objects
            .get(&CacheKey::BuildId(id.into()))
            .cloned()
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

    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.objects.clear();
        inner.identities.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().objects.len()
    }
}
