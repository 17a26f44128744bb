//! Hub ids: lookup in a fake HF cache, offline mode, and the no-network error. Options are passed
//! explicitly so these tests never change the process environment.

mod io_common;

use std::path::Path;

use io_common::*;
use lowbit_model::hub::{find_cached_snapshot, is_valid_hub_id, resolve_hub_id_with, HubOptions};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const OLD_COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn opts(cache: &Path, endpoint: Option<&str>, offline: bool) -> HubOptions {
    HubOptions {
        cache_dir: cache.to_path_buf(),
        endpoint: endpoint.map(str::to_string),
        offline,
        token: None,
        progress: false,
    }
}

/// A cache with `org/tiny` at COMMIT (refs/main) and an incomplete OLD_COMMIT snapshot.
fn fake_cache() -> TempDir {
    let cache = TempDir::new("hfcache");
    let repo = cache.path().join("models--org--tiny");
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(snap.join("config.json"), TINY_CONFIG).unwrap();
    std::fs::write(snap.join("model.safetensors"), small_safetensors()).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    // A sharded snapshot with a shard missing is not usable.
    let old = repo.join("snapshots").join(OLD_COMMIT);
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("config.json"), TINY_CONFIG).unwrap();
    std::fs::write(
        old.join("model.safetensors.index.json"),
        r#"{"weight_map":{"w":"model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    cache
}

#[test]
fn hub_id_shapes() {
    for ok in ["gpt2", "google/gemma-3-270m", "org/name.v1_x"] {
        assert!(is_valid_hub_id(ok), "{ok}");
    }
    for bad in [
        "",
        "a/b/c",
        "../x",
        "org/..",
        "org/",
        "/name",
        "org/na me",
        "-org/x",
    ] {
        assert!(!is_valid_hub_id(bad), "{bad}");
    }
}

#[test]
fn finds_cached_snapshot() {
    let cache = fake_cache();
    let snap = cache
        .path()
        .join("models--org--tiny/snapshots")
        .join(COMMIT);
    assert_eq!(
        find_cached_snapshot(cache.path(), "org/tiny", None),
        Some(snap.clone())
    );
    assert_eq!(
        find_cached_snapshot(cache.path(), "org/tiny", Some("main")),
        Some(snap.clone())
    );
    assert_eq!(
        find_cached_snapshot(cache.path(), "org/tiny", Some(COMMIT)),
        Some(snap.clone())
    );
    assert_eq!(
        find_cached_snapshot(cache.path(), "org/tiny", Some(OLD_COMMIT)),
        None,
        "incomplete"
    );
    assert_eq!(find_cached_snapshot(cache.path(), "org/other", None), None);
    // The online path is never taken when the cache has it, even with a dead endpoint.
    let dir = resolve_hub_id_with(
        "org/tiny",
        None,
        &opts(cache.path(), Some("http://127.0.0.1:9"), false),
    )
    .unwrap();
    assert_eq!(dir, snap);
    let (cfg, store) = lowbit_model::safetensors_dir::open_hf_dir(&dir).unwrap();
    assert_eq!(cfg["model_type"], "llama");
    assert!(store.contains("w"));
}

#[test]
fn snapshot_without_refs_is_found() {
    // Caches copied by hand often lack refs/: without a revision, any complete snapshot is used.
    let cache = fake_cache();
    std::fs::remove_dir_all(cache.path().join("models--org--tiny/refs")).unwrap();
    let snap = cache
        .path()
        .join("models--org--tiny/snapshots")
        .join(COMMIT);
    assert_eq!(
        find_cached_snapshot(cache.path(), "org/tiny", None),
        Some(snap)
    );
    assert_eq!(
        find_cached_snapshot(cache.path(), "org/tiny", Some("v2")),
        None
    );
}

#[test]
fn offline_miss_is_a_clear_error() {
    let cache = TempDir::new("hfoffline");
    let msg = err_msg(
        resolve_hub_id_with("org/absent", None, &opts(cache.path(), None, true)),
        "offline",
    );
    assert!(
        msg.contains("org/absent") && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
    assert!(msg.contains(&*cache.path().to_string_lossy()), "{msg}");
}

#[test]
fn no_network_is_a_clear_error() {
    let cache = TempDir::new("hfnonet");
    let t0 = std::time::Instant::now();
    let r = resolve_hub_id_with(
        "org/absent",
        Some("main"),
        &opts(cache.path(), Some("http://127.0.0.1:9"), false),
    );
    let msg = err_msg(r, "no network");
    assert!(
        msg.contains("could not download org/absent from the Hugging Face hub"),
        "{msg}"
    );
    assert!(
        msg.contains("no network? Put the model in the HF cache or pass a local path"),
        "{msg}"
    );
    assert!(t0.elapsed().as_secs() < 30, "took {:?}", t0.elapsed());
}

#[test]
fn invalid_id_is_rejected_before_any_lookup() {
    let cache = TempDir::new("hfbadid");
    let msg = err_msg(
        resolve_hub_id_with("../../etc", None, &opts(cache.path(), None, false)),
        "bad id",
    );
    assert!(
        msg.contains("neither an existing path nor a Hugging Face hub id"),
        "{msg}"
    );
}
