use std::path::PathBuf;

use super::*;
use crate::export::FileExport;
use crate::metrics::NbdMetrics;

const CLUSTER: u64 = 4096;

struct Fixture {
    dir: tempfile::TempDir,
    golden: PathBuf,
    base: Vec<u8>,
    metrics: Arc<NbdMetrics>,
}

/// A golden file of `size` bytes (not a multiple of the cluster size, so
/// the last cluster is short).
fn fixture(size: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let golden = dir.path().join("golden.img");
    let base: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&golden, &base).unwrap();
    Fixture { dir, golden, base, metrics: Arc::default() }
}

impl Fixture {
    fn overlay(&self, cap: u64) -> CowExport<SparseOverlay> {
        let base: Arc<dyn Export> = Arc::new(FileExport::open(&self.golden).unwrap());
        let store = SparseOverlay::create(
            &self.dir.path().join(format!("c{cap}.overlay")),
            self.base.len() as u64,
            CLUSTER,
            cap,
            Arc::clone(&self.metrics),
        )
        .unwrap();
        CowExport::new(base, store)
    }

    fn read_all(export: &dyn Export) -> Vec<u8> {
        let mut out = vec![0u8; export.info().size as usize];
        export.read_at(&mut out, 0).unwrap();
        out
    }

    fn golden_unchanged(&self) {
        assert_eq!(std::fs::read(&self.golden).unwrap(), self.base, "the golden file changed");
    }
}

#[test]
fn writes_land_in_the_overlay_and_reads_merge_it_with_the_base() {
    let fx = fixture(5 * CLUSTER as usize + 100);
    let cow = fx.overlay(1 << 20);
    assert_eq!(Fixture::read_all(&cow), fx.base, "an empty overlay reads as the base");
    let info = cow.info();
    assert!(!info.read_only && !info.multi_conn && info.trim && info.write_zeroes);

    let mut expected = fx.base.clone();
    // Unaligned, spanning three clusters; then a short write inside one.
    for (offset, len, byte) in
        [(CLUSTER as usize - 10, CLUSTER as usize + 20, 0xaa), (3 * CLUSTER as usize + 5, 3, 0xbb)]
    {
        cow.write_at(&vec![byte; len], offset as u64, false).unwrap();
        expected[offset..offset + len].fill(byte);
    }
    assert_eq!(Fixture::read_all(&cow), expected);
    let mut cached = vec![0u8; expected.len()];
    cow.try_read_at(&mut cached, 0).expect("just written: cached").unwrap();
    assert_eq!(cached, expected);
    assert_eq!(cow.store().used_bytes(), 4 * CLUSTER, "clusters 0, 1, 2 and 3");
    assert_eq!(fx.metrics.snapshot().overlay_bytes, 4 * CLUSTER);

    // The short last cluster, written to the very end.
    let end = fx.base.len();
    cow.write_at(&[1, 2, 3], end as u64 - 3, true).unwrap();
    expected[end - 3..].copy_from_slice(&[1, 2, 3]);
    assert_eq!(Fixture::read_all(&cow), expected);
    assert!(matches!(cow.write_at(&[0], end as u64, false), Err(ExportError::OutOfRange { .. })));
    cow.flush().unwrap();
    fx.golden_unchanged();
}

#[test]
fn the_cap_refuses_new_clusters_but_not_rewrites() {
    let fx = fixture(8 * CLUSTER as usize);
    let cow = fx.overlay(2 * CLUSTER);
    cow.write_at(&[1; 10], 0, false).unwrap();
    cow.write_at(&[2; 10], CLUSTER, false).unwrap();
    let full = cow.write_at(&[3; 10], 2 * CLUSTER, false).unwrap_err();
    assert!(matches!(full, ExportError::CacheFull { cap } if cap == 2 * CLUSTER), "{full:?}");
    assert_eq!(full.errno(), crate::wire::Errno::NoSpc);
    cow.write_at(&[4; 10], 5, false).unwrap();

    // Trimming a whole cluster gives its room back, and the base shows again.
    cow.trim(0, CLUSTER, false).unwrap();
    let mut first = vec![0u8; CLUSTER as usize];
    cow.read_at(&mut first, 0).unwrap();
    assert_eq!(first, fx.base[..CLUSTER as usize]);
    cow.write_at(&[3; 10], 2 * CLUSTER, false).unwrap();
    // A trim of part of a cluster keeps it.
    cow.trim(CLUSTER + 1, CLUSTER - 1, false).unwrap();
    assert_eq!(cow.store().used_bytes(), 2 * CLUSTER);
    fx.golden_unchanged();
}

#[test]
fn write_zeroes_zeroes_whole_and_partial_clusters() {
    let fx = fixture(4 * CLUSTER as usize + 10);
    let cow = fx.overlay(1 << 20);
    cow.write_at(&[9; 100], 2 * CLUSTER, false).unwrap();
    // Cluster 0 partly, 1 whole (a hole), 2 whole while present, 3 with no_hole.
    cow.write_zeroes(100, 3 * CLUSTER - 100, false, false).unwrap();
    cow.write_zeroes(3 * CLUSTER, CLUSTER, true, true).unwrap();
    let mut expected = fx.base.clone();
    expected[100..4 * CLUSTER as usize].fill(0);
    assert_eq!(Fixture::read_all(&cow), expected);
    // The whole export, short last cluster included.
    cow.write_zeroes(0, fx.base.len() as u64, false, false).unwrap();
    assert!(Fixture::read_all(&cow).iter().all(|b| *b == 0));
    fx.golden_unchanged();
}

#[test]
fn concurrent_partial_writes_to_one_cluster_all_survive() {
    const CLUSTERS: u64 = 256;
    let fx = fixture((CLUSTERS * CLUSTER) as usize);
    let cow = Arc::new(fx.overlay(1 << 30));
    // Sixteen writers each fill their own 256 bytes of every new cluster,
    // all starting at once: each first write copies the base cluster, and
    // without the cluster lock one copy overwrites another writer's bytes.
    let start = Arc::new(std::sync::Barrier::new(16));
    let threads: Vec<_> = (0..16u8)
        .map(|i| {
            let (cow, start) = (Arc::clone(&cow), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                for cluster in 0..CLUSTERS {
                    cow.write_at(&[i + 1; 256], cluster * CLUSTER + u64::from(i) * 256, false).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let data = Fixture::read_all(&*cow);
    for (i, chunk) in data.chunks(256).enumerate() {
        assert!(chunk.iter().all(|b| *b == (i % 16) as u8 + 1), "bytes {} lost their write", i * 256);
    }
}

#[test]
fn a_new_boot_discards_the_cache_and_clients_are_isolated() {
    let fx = fixture(4 * CLUSTER as usize);
    let dir = fx.dir.path().join("caches");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("stale.7.overlay"), b"from a crash").unwrap();
    let caches =
        WriteCaches::new(&dir, 1 << 20, 2, Arc::clone(&fx.metrics)).unwrap().with_cluster_size(CLUSTER);
    assert!(!dir.join("stale.7.overlay").exists(), "left-over caches are deleted at start");
    let base: Arc<dyn Export> = Arc::new(FileExport::open(&fx.golden).unwrap());

    let a = caches.boot("52:54:00:00:00:0a", Arc::clone(&base)).unwrap();
    let b = caches.boot("52:54:00:00:00:0b", Arc::clone(&base)).unwrap();
    a.write_at(&[0xee; 64], 0, false).unwrap();
    assert_eq!(Fixture::read_all(&*b), fx.base, "b does not see a's write");
    assert!(Arc::ptr_eq(&caches.current("52:54:00:00:00:0a").unwrap(), &a));
    assert_eq!(caches.usage(), [("52:54:00:00:00:0a".into(), CLUSTER), ("52:54:00:00:00:0b".into(), 0)]);
    assert!(matches!(
        caches.boot("third", Arc::clone(&base)),
        Err(WriteCacheError::TooManyClients { max: 2 })
    ));
    assert!(matches!(caches.boot("", Arc::clone(&base)), Err(WriteCacheError::InvalidKey(_))));
    assert!(matches!(caches.boot("a b", Arc::clone(&base)), Err(WriteCacheError::InvalidKey(_))));
    let writable: Arc<dyn Export> = Arc::new(fx.overlay(1 << 20));
    assert!(matches!(caches.boot("c", writable), Err(WriteCacheError::WritableBase)));

    // a boots again: a fresh cache; the old file goes with its last user.
    let old_path = a.store().path().to_owned();
    let again = caches.boot("52:54:00:00:00:0a", Arc::clone(&base)).unwrap();
    assert_eq!(Fixture::read_all(&*again), fx.base);
    assert!(old_path.exists(), "a lingering session still holds the old cache");
    drop(a);
    assert!(!old_path.exists());
    assert_eq!(fx.metrics.snapshot().overlay_bytes, 0);
    assert!(caches.discard("52:54:00:00:00:0b"));
    assert!(!caches.discard("52:54:00:00:00:0b"));
    drop((b, again, caches));
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    fx.golden_unchanged();
}
