//! `resolve_hub_id` reading its settings from the environment. This file holds one test so that
//! setting variables cannot race with other tests (each tests/*.rs is its own process).

mod io_common;

use io_common::*;

#[test]
fn env_driven_lookup_and_no_network_error() {
    let cache = TempDir::new("hfenv");
    let snap = cache
        .path()
        .join("models--org--tiny/snapshots/0123456789abcdef0123456789abcdef01234567");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(snap.join("config.json"), TINY_CONFIG).unwrap();
    std::fs::write(snap.join("model.safetensors"), small_safetensors()).unwrap();
    std::env::set_var("HF_HUB_CACHE", cache.path());
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    std::env::remove_var("HF_HUB_OFFLINE");

    assert_eq!(
        lowbit_model::hub::resolve_hub_id("org/tiny", None).unwrap(),
        snap
    );

    let msg = err_msg(
        lowbit_model::hub::resolve_hub_id("org/absent", None),
        "no network",
    );
    assert!(
        msg.contains("could not download org/absent from the Hugging Face hub ("),
        "{msg}"
    );
    assert!(
        msg.contains("): no network? Put the model in the HF cache or pass a local path"),
        "{msg}"
    );

    std::env::set_var("HF_HUB_OFFLINE", "1");
    let msg = err_msg(
        lowbit_model::hub::resolve_hub_id("org/absent", None),
        "offline",
    );
    assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
}
