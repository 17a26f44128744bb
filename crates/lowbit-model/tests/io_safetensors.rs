//! HF safetensors directories: single file, sharded index, a path to one .safetensors file, and
//! the header parser on its own.

mod io_common;

use io_common::*;
use lowbit_formats::GgmlType;
use lowbit_model::safetensors_dir::{open_hf_dir, parse_safetensors_header};

fn check_small(store: &lowbit_model::WeightStore) {
    assert_eq!(store.names().collect::<Vec<_>>(), vec!["b", "c", "w"]);
    let w = store.entry("w").unwrap();
    assert_eq!((w.dtype, w.shape.clone()), (GgmlType::F32, vec![2, 2]));
    assert_eq!(store.entry("b").unwrap().dtype, GgmlType::F16);
    assert_eq!(store.entry("c").unwrap().dtype, GgmlType::BF16);
    assert_eq!(store.to_f32("w").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(store.to_f32("b").unwrap(), vec![0.5, -1.0, 2.0]);
    assert_eq!(store.to_f32("c").unwrap(), vec![3.0, -0.25]);
}

#[test]
fn header_parser() {
    let bytes = small_safetensors();
    let h = parse_safetensors_header(std::path::Path::new("x.safetensors"), &bytes).unwrap();
    assert_eq!(h.metadata.get("format").map(|s| s.as_str()), Some("pt"));
    assert_eq!(h.data_offset + 26, bytes.len());
    let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["b", "c", "w"]);
    assert_eq!((h.tensors[0].start, h.tensors[0].end), (16, 22));
}

#[test]
fn single_file_dir() {
    let dir = TempDir::new("stsingle");
    dir.write("config.json", TINY_CONFIG.as_bytes());
    dir.write("model.safetensors", &small_safetensors());
    let (cfg, store) = open_hf_dir(dir.path()).unwrap();
    assert_eq!(cfg["model_type"], "llama");
    check_small(&store);
    // A path to the file itself works too.
    let (_, store) = open_hf_dir(&dir.path().join("model.safetensors")).unwrap();
    check_small(&store);
}

#[test]
fn sharded_dir() {
    let dir = TempDir::new("stsharded");
    dir.write("config.json", TINY_CONFIG.as_bytes());
    // Shard 1: "w" (F32); shard 2: "b" (F16) and "c" (BF16).
    let s1 = safetensors_bytes(
        r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#,
        &f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
    );
    let mut d2 = Vec::new();
    for x in [0.5f32, -1.0, 2.0] {
        d2.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
    }
    for x in [3.0f32, -0.25] {
        d2.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes());
    }
    let s2 = safetensors_bytes(
        r#"{"b":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},"c":{"dtype":"BF16","shape":[2],"data_offsets":[6,10]}}     "#,
        &d2,
    );
    dir.write("model-00001-of-00002.safetensors", &s1);
    dir.write("model-00002-of-00002.safetensors", &s2);
    let index = r#"{"metadata":{"total_size":26},"weight_map":{"w":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}}"#;
    dir.write("model.safetensors.index.json", index.as_bytes());
    let (_, store) = open_hf_dir(dir.path()).unwrap();
    check_small(&store);
    // Pointing at one shard opens the whole indexed model.
    let (_, store) = open_hf_dir(&dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    check_small(&store);
}

#[test]
fn duplicate_tensor_across_shards() {
    let dir = TempDir::new("stdup");
    dir.write("config.json", TINY_CONFIG.as_bytes());
    let s = small_safetensors();
    dir.write("a.safetensors", &s);
    let second = dir.write("b.safetensors", &s);
    let index = r#"{"weight_map":{"w":"a.safetensors","b":"b.safetensors"}}"#;
    dir.write("model.safetensors.index.json", index.as_bytes());
    let msg = err_msg(open_hf_dir(dir.path()), "duplicate");
    assert_names(&msg, &second, &["also present in another safetensors file"]);
}
