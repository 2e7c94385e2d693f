//! The local-directory store of the embedded default. Writes go to a temporary file beside the
//! target and are renamed into place, so a reader never sees half an object and a crash of the
//! process leaves at most a stray temporary file. A put returns once its object is durable, made
//! so together with every object written beside it (`GroupSync`); a crash of the machine before
//! that can leave a partial object, but only under a key the ledger does not yet name (a job's
//! keys are its own, and its success is written after its outputs are durable). Downloads are
//! served by Kiln's api at `/v1/files/{key}` behind a signed URL; `resolve_own_url` lets Kiln
//! recognise its own URLs when a later job takes an earlier output as input, and read the
//! object directly instead of fetching it over HTTP.
//!
//! An object is one file and nothing else: `{root}/{shard}/{key with '/' as '+'}`, the shard two
//! hex digits of the key's SHA-256 (256 directories, made once). Keys name a directory per job
//! (`jobs/{id}/0.png`); mirroring that on disk cost a directory inode per job, which on ext4
//! made and cleaned up as much work as the file itself (the inode allocator is the largest
//! single cost of a burst, BENCHMARKS.md), and a deleted object left its empty directory
//! behind for good. `+` cannot occur in a key (`validate_key`), so the mapping is one to one.
//! Objects written in the earlier mirrored layout are still found there, and deleted there.
use crate::{
    validate_key, ByteStream, ObjectInfo, ObjectStore, SignatureError, SignedDownloads,
    StorageError, UrlSigner,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use url::Url;

pub struct LocalStore {
    root: PathBuf,
    downloads: SignedDownloads,
    /// Makes written objects durable a group at a time (started on the first write).
    durability: std::sync::OnceLock<GroupSync>,
}

impl LocalStore {
    /// `public_base` is the api's externally reachable base URL, used to build download URLs.
    pub fn new(root: impl Into<PathBuf>, public_base: Url, signer: UrlSigner) -> Self {
        LocalStore {
            root: root.into(),
            downloads: SignedDownloads::new(public_base, signer),
            durability: std::sync::OnceLock::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `key`'s object is written and looked for first.
    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        let shard = hex::encode(&Sha256::digest(key.as_bytes())[..1]);
        Ok(self.root.join(shard).join(key.replace('/', "+")))
    }

    /// Where an object written by an earlier version (which mirrored the key's directories)
    /// would be.
    fn mirrored_path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Opens `key`'s object in the current layout, else in the mirrored one.
    async fn open(&self, key: &str) -> Result<tokio::fs::File, StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::File::open(&path).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tokio::fs::File::open(self.mirrored_path_of(key))
                    .await
                    .map_err(|e| missing_or(e, key))
            }
            opened => opened.map_err(|e| missing_or(e, key)),
        }
    }

    /// Checks a download request's signature; on success the object may be served.
    pub fn verify(&self, key: &str, expires: i64, signature: &str) -> Result<(), SignatureError> {
        self.downloads.verify(key, expires, signature)
    }
}

/// How much of a body is gathered before it is handed to the blocking pool in one write.
const WRITE_BUFFER: usize = 256 * 1024;

/// Whether each object is made durable on its own (`fsync` before its rename) rather than by
/// the group sync after it (`GroupSync`): only Linux has `syncfs`.
fn per_file_sync() -> bool {
    !cfg!(target_os = "linux")
}

/// Creates the temporary file `tmp` (and its shard on the shard's first object) and writes
/// `bytes` into it.
fn create_with(tmp: &Path, bytes: &[u8]) -> std::io::Result<std::fs::File> {
    // The shard exists after its first object: try the file first.
    let mut file = match std::fs::File::create(tmp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let shard = tmp.parent().expect("an object lives in its shard");
            let root = shard.parent().expect("a shard lives in the store's root");
            std::fs::create_dir_all(root)?;
            spread_shards(root);
            std::fs::create_dir_all(shard)?;
            std::fs::File::create(tmp)?
        }
        created => created?,
    };
    file.write_all(bytes)?;
    Ok(file)
}

/// Asks the filesystem to place the store's shards as it places top-level directories
/// (`FS_TOPDIR_FL`, what `chattr +T` sets), before a shard is made: each then goes to a block
/// group of its own with free inodes to spare, and its objects' inodes with it. Left to the
/// default, ext4 puts every shard, and so every object, in the root's group. Where ext4 runs
/// without a journal, it will not reuse an inode deleted in the last minutes until it has
/// looked at every such inode of the group, on each file it creates: after an expiry sweep, or
/// any burst of deletions beside the store, each new object cost a scan of thousands of
/// inodes, and that scan was most of a worker's CPU on the side-by-side benchmark
/// (BENCHMARKS.md, issue 17, tenth pass). Only the placement of shards made after the flag
/// changes; where the filesystem has no such flag, or refuses it, nothing does, and the store
/// works as before. The flag stays on the root (`lsattr -d` shows `T`), on a directory given
/// as `file:///DIR` too; it changes only where ext4 places new subdirectories.
#[cfg(target_os = "linux")]
fn spread_shards(root: &Path) {
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    let flag = || -> std::io::Result<()> {
        let dir = std::fs::File::open(root)?;
        let flags = ioctl_getflags(&dir)?;
        if !flags.contains(IFlags::TOPDIR) {
            ioctl_setflags(&dir, flags | IFlags::TOPDIR)?;
        }
        Ok(())
    };
    let flagged = flag();
    if let Err(e) = flagged {
        tracing::debug!(root = %root.display(), error = %e, "the store's shards keep the default placement");
    }
}

#[cfg(not(target_os = "linux"))]
fn spread_shards(_root: &Path) {}

/// Puts a written temporary file in its place.
fn rename_into_place(file: &std::fs::File, tmp: &Path, path: &Path) -> std::io::Result<()> {
    if per_file_sync() {
        file.sync_all()?;
    }
    std::fs::rename(tmp, path)
}

/// A file written from async code a buffer at a time, each write one hop to the blocking pool.
struct BlockingWriter {
    /// `None` only while a hop holds it.
    file: Option<std::fs::File>,
    pending: Vec<u8>,
    written: u64,
}

impl BlockingWriter {
    async fn push(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.pending.extend_from_slice(chunk);
        self.written += chunk.len() as u64;
        if self.pending.len() >= WRITE_BUFFER {
            let bytes = std::mem::take(&mut self.pending);
            self.hop(move |file| file.write_all(&bytes)).await?;
        }
        Ok(())
    }

    /// Writes what is left and renames the file into place: one hop.
    async fn finish(mut self, tmp: PathBuf, path: PathBuf) -> std::io::Result<u64> {
        let bytes = std::mem::take(&mut self.pending);
        self.hop(move |file| {
            file.write_all(&bytes)?;
            rename_into_place(file, &tmp, &path)
        })
        .await?;
        Ok(self.written)
    }

    async fn hop(
        &mut self,
        work: impl FnOnce(&mut std::fs::File) -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<()> {
        let mut file = self.file.take().expect("one hop at a time");
        let (file, result) = tokio::task::spawn_blocking(move || {
            let result = work(&mut file);
            (file, result)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.file = Some(file);
        result
    }
}

/// Group durability for the local store: an object written and renamed into place is made
/// durable by one `syncfs` of the store's filesystem, shared by every object renamed while the
/// previous one ran, instead of an `fsync` of its own. On a burst, each `fsync` was a device
/// flush of its own and the largest share of the store's cost (BENCHMARKS.md); one `syncfs`
/// writes the group's files and their directory entries, then flushes once. It also covers the
/// rename itself, which a file's own `fsync` did not. A put returns only once its object is
/// durable, so the ledger never names an object a crash of the machine could lose; a lone
/// object still syncs at once (the group is whatever is waiting, never a timer). The price:
/// `syncfs` flushes whatever else is dirty on that filesystem too, so the store is best kept on
/// a filesystem of its own when something else writes heavily beside it.
struct GroupSync {
    waiting: tokio::sync::mpsc::UnboundedSender<tokio::sync::oneshot::Sender<std::io::Result<()>>>,
}

impl GroupSync {
    /// Starts the syncing task; it ends with the store.
    fn start(root: PathBuf) -> Self {
        let (waiting, mut queue) = tokio::sync::mpsc::unbounded_channel::<
            tokio::sync::oneshot::Sender<std::io::Result<()>>,
        >();
        tokio::spawn(async move {
            // The root stays open for the store's life: `syncfs` reports a writeback error once
            // to each open descriptor of the filesystem, so one opened per sync could miss an
            // error an earlier one was told of. An error anywhere on the filesystem since the
            // last sync fails the whole group (their writers try again), never one silently.
            let mut root_dir: Option<std::sync::Arc<std::fs::File>> = None;
            while let Some(first) = queue.recv().await {
                let mut group = vec![first];
                while let Ok(next) = queue.try_recv() {
                    group.push(next);
                }
                let (root, held) = (root.clone(), root_dir.clone());
                let synced = tokio::task::spawn_blocking(move || {
                    let dir = match held {
                        Some(dir) => dir,
                        None => std::sync::Arc::new(std::fs::File::open(&root)?),
                    };
                    sync_filesystem(&dir)?;
                    Ok::<_, std::io::Error>(dir)
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|synced| synced)
                .map(|dir| {
                    root_dir = Some(dir);
                });
                for reply in group {
                    // io::Error is not Clone: each waiter gets the same kind and message.
                    let _ = reply.send(match &synced {
                        Ok(()) => Ok(()),
                        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                    });
                }
            }
        });
        GroupSync { waiting }
    }

    /// Returns once everything renamed into place before the call is durable.
    async fn wait(&self) -> std::io::Result<()> {
        let (reply, synced) = tokio::sync::oneshot::channel();
        let stopped = || std::io::Error::other("the store's sync task stopped");
        self.waiting.send(reply).map_err(|_| stopped())?;
        synced.await.map_err(|_| stopped())?
    }
}

#[cfg(target_os = "linux")]
fn sync_filesystem(root_dir: &std::fs::File) -> std::io::Result<()> {
    rustix::fs::syncfs(root_dir)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sync_filesystem(_root_dir: &std::fs::File) -> std::io::Result<()> {
    // Never asked: each file was synced before its rename (`per_file_sync`).
    Ok(())
}

fn missing_or(e: std::io::Error, key: &str) -> StorageError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound(key.to_owned())
    } else {
        e.into()
    }
}

/// A file as a download describes it. An object is replaced only by renaming a new file over
/// it, so its length and modification time together change whenever its bytes do: they are
/// the entity tag.
fn describe(meta: &std::fs::Metadata) -> ObjectInfo {
    let modified: DateTime<Utc> = meta.modified().map(DateTime::from).unwrap_or_else(|_| {
        // Every filesystem Kiln runs on keeps modification times; without one the tag still
        // changes with the length.
        DateTime::UNIX_EPOCH
    });
    ObjectInfo {
        bytes: meta.len(),
        etag: format!(
            "\"{:x}-{:x}\"",
            meta.len(),
            modified.timestamp_nanos_opt().unwrap_or_default()
        ),
        last_modified: modified,
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(
        &self,
        key: &str,
        _content_type: &str,
        mut body: ByteStream,
    ) -> Result<u64, StorageError> {
        let path = self.path_of(key)?;
        // Each filesystem call is a hop to tokio's blocking pool and back (a thread wake-up
        // each way). The body is gathered up to one buffer first, so a small output (the usual
        // case) is created, written and renamed into place in one hop; a larger one is written
        // a buffer at a time (bounded) and renamed with its last buffer.
        let mut first = Vec::new();
        let mut ended = false;
        while first.len() < WRITE_BUFFER {
            match body.next().await {
                Some(chunk) => first.extend_from_slice(&chunk?),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let tmp_path = path
            .parent()
            .expect("an object lives in its shard")
            .join(format!(".tmp-{}", rand::random::<u64>()));
        let written = first.len() as u64;
        let (tmp, target) = (tmp_path.clone(), path.clone());
        let file = tokio::task::spawn_blocking(move || {
            let file = create_with(&tmp, &first)?;
            if ended {
                rename_into_place(&file, &tmp, &target)?;
                return Ok(None);
            }
            Ok::<_, std::io::Error>(Some(file))
        })
        .await
        .unwrap_or_else(|panicked| Err(std::io::Error::other(panicked)));
        let written = match file {
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp_path).await;
                return Err(e.into());
            }
            Ok(None) => written,
            Ok(Some(file)) => {
                let mut writer = BlockingWriter {
                    file: Some(file),
                    pending: Vec::new(),
                    written,
                };
                let rest = async {
                    while let Some(chunk) = body.next().await {
                        writer.push(&chunk?).await?;
                    }
                    writer.finish(tmp_path.clone(), path.clone()).await
                }
                .await;
                if rest.is_err() {
                    let _ = tokio::fs::remove_file(&tmp_path).await;
                }
                rest?
            }
        };
        if !per_file_sync() {
            let durability = self
                .durability
                .get_or_init(|| GroupSync::start(self.root.clone()));
            if let Err(e) = durability.wait().await {
                // Not known to be durable, so not written: the caller writes it again or fails.
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e.into());
            }
        }
        Ok(written)
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        let file = self.open(key).await?;
        Ok(tokio_util::io::ReaderStream::new(file).boxed())
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StorageError> {
        let meta = match tokio::fs::metadata(self.path_of(key)?).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tokio::fs::metadata(self.mirrored_path_of(key)).await
            }
            found => found,
        }
        .map_err(|e| missing_or(e, key))?;
        Ok(describe(&meta))
    }

    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<ByteStream, StorageError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = self.open(key).await?;
        file.seek(std::io::SeekFrom::Start(range.start)).await?;
        let len = range.end.saturating_sub(range.start);
        Ok(tokio_util::io::ReaderStream::new(file.take(len)).boxed())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let gone = |removed: std::io::Result<()>| match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        gone(tokio::fs::remove_file(self.path_of(key)?).await)?;
        let mirrored = self.mirrored_path_of(key);
        gone(tokio::fs::remove_file(&mirrored).await)?;
        // The mirrored layout's per-job directory goes with its last object; a directory that
        // still holds something refuses, which is the answer wanted.
        if let Some(dir) = mirrored.parent().filter(|dir| *dir != self.root) {
            let _ = tokio::fs::remove_dir(dir).await;
        }
        Ok(())
    }

    async fn resolve_own_url(&self, url: &Url) -> Option<Result<String, SignatureError>> {
        self.downloads.resolve(url)
    }

    async fn presign_get(&self, key: &str, until: DateTime<Utc>) -> Result<Url, StorageError> {
        self.downloads.url(key, until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_URL_LIFETIME;
    use bytes::Bytes;

    fn store(dir: &Path) -> LocalStore {
        LocalStore::new(
            dir,
            Url::parse("http://127.0.0.1:9/").unwrap(),
            UrlSigner::new(b"k".to_vec()),
        )
    }

    async fn read_all(mut s: ByteStream) -> Vec<u8> {
        let mut out = vec![];
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn put_get_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let chunks = vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ];
        let n = s
            .put(
                "jobs/j/0.png",
                "image/png",
                futures::stream::iter(chunks).boxed(),
            )
            .await
            .unwrap();
        assert_eq!(n, 11);
        assert_eq!(
            read_all(s.get("jobs/j/0.png").await.unwrap()).await,
            b"hello world"
        );
        s.delete("jobs/j/0.png").await.unwrap();
        s.delete("jobs/j/0.png").await.unwrap();
        assert!(matches!(
            s.get("jobs/j/0.png").await,
            Err(StorageError::NotFound(_))
        ));
        // No temporary files are left behind.
        assert_eq!(files_under(dir.path()), Vec::<PathBuf>::new());
    }

    /// Every file under `dir`, at any depth.
    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().unwrap().is_dir() {
                found.extend(files_under(&entry.path()));
            } else {
                found.push(entry.path());
            }
        }
        found
    }

    #[tokio::test]
    async fn an_object_is_one_file_in_a_shard_and_no_directory_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        for key in ["jobs/a/0.png", "jobs/a/0.png.preview.jpg", "jobs/b/0.png"] {
            let body = futures::stream::iter([Ok(Bytes::from_static(b"x"))]).boxed();
            s.put(key, "image/png", body).await.unwrap();
        }
        let files = files_under(dir.path());
        assert_eq!(files.len(), 3, "{files:?}");
        for file in &files {
            // {root}/{two hex digits}/{the key, flat}
            let shard = file.parent().unwrap();
            assert_eq!(shard.parent().unwrap(), dir.path(), "{file:?}");
            let shard = shard.file_name().unwrap().to_str().unwrap();
            assert!(shard.len() == 2 && shard.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(file
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("jobs+"));
        }
        assert!(!dir.path().join("jobs").exists(), "no directory per job");
    }

    /// The root is flagged before its first shard is made, where the filesystem takes the flag
    /// (ext4 does; tmpfs, xfs and btrfs refuse it, and there nothing is asked of them).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_root_asks_for_its_shards_to_be_spread_before_the_first_is_made() {
        use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
        let dir = tempfile::tempdir().unwrap();
        let flags_of = |path: &Path| ioctl_getflags(std::fs::File::open(path).unwrap());
        // Whether this filesystem takes the flag at all, asked of a directory of its own.
        let probe = dir.path().join("probe");
        std::fs::create_dir(&probe).unwrap();
        let taken = flags_of(&probe).and_then(|flags| {
            ioctl_setflags(std::fs::File::open(&probe).unwrap(), flags | IFlags::TOPDIR)
        });
        if let Err(e) = taken {
            eprintln!(
                "{} does not take the flag ({e}): nothing to check",
                probe.display()
            );
            return;
        }
        let root = dir.path().join("store");
        std::fs::create_dir(&root).unwrap();
        assert!(!flags_of(&root).unwrap().contains(IFlags::TOPDIR));
        let s = store(&root);
        let body = futures::stream::iter([Ok(Bytes::from_static(b"x"))]).boxed();
        s.put("jobs/a/0.png", "image/png", body).await.unwrap();
        assert!(flags_of(&root).unwrap().contains(IFlags::TOPDIR));
        let files = files_under(&root);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].parent().unwrap().parent().unwrap(), root);
    }

    #[tokio::test]
    async fn an_object_in_the_mirrored_layout_is_still_read_and_deleted_with_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        std::fs::create_dir_all(dir.path().join("jobs/old")).unwrap();
        std::fs::write(dir.path().join("jobs/old/0.png"), b"earlier").unwrap();
        assert_eq!(
            read_all(s.get("jobs/old/0.png").await.unwrap()).await,
            b"earlier"
        );
        assert_eq!(s.head("jobs/old/0.png").await.unwrap().bytes, 7);
        assert_eq!(
            read_all(s.get_range("jobs/old/0.png", 2..5).await.unwrap()).await,
            b"rli"
        );
        s.delete("jobs/old/0.png").await.unwrap();
        assert!(matches!(
            s.head("jobs/old/0.png").await,
            Err(StorageError::NotFound(_))
        ));
        assert!(!dir.path().join("jobs/old").exists());
    }

    /// A body of `len` bytes in 64 KiB chunks, byte `i` being `(i * 7 + seed) % 251`, ending
    /// in an error when `fail` says so.
    fn body_of(len: usize, seed: usize, fail: bool) -> ByteStream {
        let bytes: Vec<u8> = (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect();
        let mut chunks: Vec<Result<Bytes, std::io::Error>> = bytes
            .chunks(64 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        if fail {
            chunks.push(Err(std::io::Error::other("upstream reset")));
        }
        futures::stream::iter(chunks).boxed()
    }

    #[tokio::test]
    async fn objects_written_at_once_small_and_past_one_buffer_are_each_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        // Small ones take the one-hop path; large ones are written a buffer at a time. All of
        // them at once, so their syncs are shared.
        let sizes: Vec<usize> = (0..24)
            .map(|i| {
                if i % 6 == 0 {
                    2 * WRITE_BUFFER + 4321
                } else {
                    100 + i
                }
            })
            .collect();
        let puts = sizes.iter().enumerate().map(|(i, &len)| {
            let s = &s;
            async move {
                let key = format!("jobs/j{i}/0.png");
                let written = s.put(&key, "image/png", body_of(len, i, false)).await;
                (key, written)
            }
        });
        for ((key, written), (i, &len)) in futures::future::join_all(puts)
            .await
            .into_iter()
            .zip(sizes.iter().enumerate())
        {
            assert_eq!(written.unwrap(), len as u64, "{key}");
            let expected: Vec<u8> = (0..len).map(|b| ((b * 7 + i) % 251) as u8).collect();
            assert_eq!(
                read_all(s.get(&key).await.unwrap()).await,
                expected,
                "{key}"
            );
        }
        assert_eq!(files_under(dir.path()).len(), sizes.len());
    }

    #[tokio::test]
    async fn a_body_failing_past_its_first_buffer_leaves_no_object() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let put = s
            .put(
                "jobs/j/0.png",
                "image/png",
                body_of(WRITE_BUFFER + 1, 0, true),
            )
            .await;
        assert!(put.is_err());
        assert!(matches!(
            s.get("jobs/j/0.png").await,
            Err(StorageError::NotFound(_))
        ));
        // The temporary file the first buffer went into is gone too.
        assert_eq!(files_under(dir.path()), Vec::<PathBuf>::new());
    }

    #[tokio::test]
    async fn a_failed_body_leaves_no_object() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let chunks = vec![
            Ok(Bytes::from_static(b"part")),
            Err(std::io::Error::other("upstream reset")),
        ];
        assert!(s
            .put(
                "jobs/j/0.png",
                "image/png",
                futures::stream::iter(chunks).boxed()
            )
            .await
            .is_err());
        assert!(matches!(
            s.get("jobs/j/0.png").await,
            Err(StorageError::NotFound(_))
        ));
        assert_eq!(files_under(dir.path()), Vec::<PathBuf>::new());
    }

    #[tokio::test]
    async fn presigned_urls_resolve_and_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let far = Utc::now() + chrono::Duration::days(30);
        let url = s.presign_get("jobs/j/0.png", far).await.unwrap();
        assert!(url
            .as_str()
            .starts_with("http://127.0.0.1:9/v1/files/jobs/j/0.png?expires="));
        assert_eq!(
            s.resolve_own_url(&url).await,
            Some(Ok("jobs/j/0.png".to_owned()))
        );
        let expires: i64 = url
            .query_pairs()
            .find(|(k, _)| k == "expires")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert!(expires <= (Utc::now() + MAX_URL_LIFETIME).timestamp());
        let mut tampered = url.clone();
        tampered.set_path("/v1/files/jobs/k/0.png");
        assert_eq!(
            s.resolve_own_url(&tampered).await,
            Some(Err(SignatureError::Invalid))
        );
        assert_eq!(
            s.resolve_own_url(&Url::parse("http://x/elsewhere").unwrap())
                .await,
            None
        );
    }
}
