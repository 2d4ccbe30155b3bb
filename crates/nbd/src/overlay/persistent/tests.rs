use super::*;
use crate::export::{Export, FileExport};
use crate::overlay::CowExport;

const CLUSTER: u64 = 4096;
const SIZE: usize = 10 * 4096 + 100;

struct Fixture {
    dir: tempfile::TempDir,
    base: Arc<dyn Export>,
    golden: Vec<u8>,
    metrics: Arc<NbdMetrics>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let golden: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join("golden.img"), &golden).unwrap();
    let base: Arc<dyn Export> = Arc::new(FileExport::open(&dir.path().join("golden.img")).unwrap());
    Fixture { dir, base, golden, metrics: Arc::default() }
}

impl Fixture {
    fn path(&self) -> PathBuf {
        self.dir.path().join("host.overlay")
    }

    fn open(&self, base_name: &str) -> Result<CowExport<PersistentOverlay>, PersistentOverlayError> {
        let store = PersistentOverlay::open(
            &self.path(),
            base_name,
            SIZE as u64,
            CLUSTER,
            1 << 20,
            Arc::clone(&self.metrics),
        )?;
        Ok(CowExport::new(Arc::clone(&self.base), store))
    }
}

fn read_all(export: &dyn Export) -> Vec<u8> {
    let mut out = vec![0u8; SIZE];
    export.read_at(&mut out, 0).unwrap();
    out
}

#[test]
fn flushed_writes_survive_closing_and_reopening() {
    let fx = fixture();
    let mut expected = fx.golden.clone();
    {
        let export = fx.open("debian/12/root.ext4").unwrap();
        // A partial write (the cluster is copied from the base around it),
        // a FUA write in the short last cluster, zeroes, a trim.
        export.write_at(&[0xaa; 100], 4096 + 10, false).unwrap();
        expected[4096 + 10..4096 + 110].fill(0xaa);
        export.write_at(&[0xbb; 50], SIZE as u64 - 50, true).unwrap();
        expected[SIZE - 50..].fill(0xbb);
        export.write_zeroes(3 * 4096, 4096, false, false).unwrap();
        expected[3 * 4096..4 * 4096].fill(0);
        export.flush().unwrap();
        assert_eq!(read_all(&export), expected);
    }
    let export = fx.open("debian/12/root.ext4").unwrap();
    assert_eq!(read_all(&export), expected, "after reopening");
    assert_eq!(export.store().used_bytes(), 4096 + 4096 + (SIZE as u64 % 4096));
}

#[test]
fn after_a_crash_the_overlay_is_what_the_last_flush_saved() {
    let fx = fixture();
    {
        let export = fx.open("v1").unwrap();
        export.write_at(&[1; 4096], 0, false).unwrap();
        export.flush().unwrap();
        // Never flushed: the process "crashes" (the store is dropped
        // without a flush, as a kill leaves it).
        export.write_at(&[2; 4096], 5 * 4096, false).unwrap();
    }
    let export = fx.open("v1").unwrap();
    let data = read_all(&export);
    assert_eq!(data[..4096], [1; 4096]);
    assert_eq!(data[5 * 4096..6 * 4096], fx.golden[5 * 4096..6 * 4096], "an unflushed cluster came back");
}

#[test]
fn an_overlay_opens_only_over_its_own_base_and_geometry() {
    let fx = fixture();
    fx.open("img/1/root.ext4").unwrap().flush().unwrap();
    let other = fx.open("img/2/root.ext4");
    assert!(matches!(other, Err(PersistentOverlayError::OtherBase { .. })), "{other:?}");
    let resized =
        PersistentOverlay::open(&fx.path(), "img/1/root.ext4", 4096, CLUSTER, 1 << 20, Arc::default());
    assert!(matches!(resized, Err(PersistentOverlayError::OtherBase { .. })), "{resized:?}");
    std::fs::write(fx.path().with_extension("map"), b"BFOVMAP1 and then nonsense").unwrap();
    let damaged = fx.open("img/1/root.ext4");
    assert!(matches!(damaged, Err(PersistentOverlayError::Corrupt { .. })), "{damaged:?}");
}

#[test]
fn deleting_resets_the_host_to_the_base() {
    let fx = fixture();
    let export = fx.open("v1").unwrap();
    export.write_at(&[9; 10], 0, true).unwrap();
    drop(export);
    let store =
        PersistentOverlay::open(&fx.path(), "v1", SIZE as u64, CLUSTER, 1 << 20, Arc::default()).unwrap();
    store.delete().unwrap();
    assert!(!fx.path().exists() && !fx.path().with_extension("map").exists());
    assert_eq!(read_all(&fx.open("v1").unwrap()), fx.golden);
}

#[test]
fn saved_maps_round_trip_and_damaged_ones_are_errors_not_panics() {
    let map =
        SavedMap { size: 3 * 4096 * 64, cluster: 4096, base: "a/1/b".into(), words: vec![5, 0, u64::MAX] };
    let bytes = encode_map(&map);
    assert_eq!(parse_map(&bytes), Ok(map));
    for end in 0..bytes.len() {
        assert!(parse_map(&bytes[..end]).is_err(), "a map cut at {end} parsed");
    }
    let mut bad = bytes.clone();
    bad[16] = 3; // cluster size 3
    assert!(parse_map(&bad).is_err());
    bad = bytes.clone();
    bad.push(0);
    assert!(parse_map(&bad).is_err());
}
