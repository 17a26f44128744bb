//! Corrupt and hostile model files: every case must give an error naming the file and the
//! problem, never a panic or a huge allocation.

mod io_common;

use io_common::*;
use lowbit_model::gguf::open_gguf;
use lowbit_model::safetensors_dir::open_hf_dir;

/// Write `bytes` as a .gguf in a fresh temp dir and open it.
fn open_bytes(tag: &str, bytes: &[u8]) -> (TempDir, std::path::PathBuf, String) {
    let dir = TempDir::new(tag);
    let path = dir.write(&format!("{tag}.gguf"), bytes);
    let msg = err_msg(open_gguf(&path), tag);
    (dir, path, msg)
}

#[test]
fn small_gguf_is_valid() {
    let dir = TempDir::new("valid");
    let path = dir.write("valid.gguf", &small_gguf());
    open_gguf(&path).expect("the unmodified test file parses");
}

#[test]
fn gguf_truncated_at_many_points() {
    let bytes = small_gguf();
    let (_, q_info_end) = {
        let o = tensor_info_offsets(&bytes, "q.weight");
        (o.n_dims, o.offset + 8)
    };
    let cuts = [
        0,
        3,
        4,
        7,
        8,
        15,
        20,
        24,
        30,
        50,
        61,
        70,
        120,
        200,
        q_info_end - 1,
        bytes.len() - 40,
        bytes.len() - 1,
    ];
    for &cut in &cuts {
        let (_d, path, msg) = open_bytes(&format!("trunc{cut}"), &bytes[..cut]);
        assert!(
            msg.contains("truncated") || msg.contains("past the end") || msg.contains("remain"),
            "cut at {cut}: {msg}"
        );
        assert_names(&msg, &path, &[]);
    }
}

#[test]
fn gguf_bad_magic() {
    let mut bytes = small_gguf();
    bytes[..4].copy_from_slice(b"GGML");
    let (_d, path, msg) = open_bytes("magic", &bytes);
    assert_names(&msg, &path, &["not a GGUF file", "GGML"]);
}

#[test]
fn gguf_unsupported_versions() {
    for (v, words) in [
        (1u32, "version 1"),
        (4, "version 4"),
        (0x0300_0000, "big-endian"),
    ] {
        let mut bytes = small_gguf();
        put_u32(&mut bytes, 4, v);
        let (_d, path, msg) = open_bytes(&format!("version{v}"), &bytes);
        assert_names(&msg, &path, &[words, "not supported"]);
    }
}

#[test]
fn gguf_lying_tensor_count() {
    let mut bytes = small_gguf();
    put_u64(&mut bytes, OFF_TENSOR_COUNT, 1 << 60);
    let (_d, path, msg) = open_bytes("tensorcount", &bytes);
    assert_names(
        &msg,
        &path,
        &["tensor count", "1152921504606846976", "remain"],
    );
}

#[test]
fn gguf_lying_kv_count() {
    let mut bytes = small_gguf();
    put_u64(&mut bytes, OFF_KV_COUNT, u64::MAX);
    let (_d, path, msg) = open_bytes("kvcount", &bytes);
    assert_names(&msg, &path, &["metadata count", "remain"]);
}

#[test]
fn gguf_lying_string_length() {
    // The first key's length, then the first token string's length.
    for (at, words) in [
        (OFF_FIRST_KEY_LEN, "metadata key #0"),
        (OFF_FIRST_TOKEN_LEN, TOKENS_KEY),
    ] {
        let mut bytes = small_gguf();
        put_u64(&mut bytes, at, 1 << 60);
        let (_d, path, msg) = open_bytes(&format!("strlen{at}"), &bytes);
        assert_names(
            &msg,
            &path,
            &[words, "has length 1152921504606846976", "remain"],
        );
    }
}

#[test]
fn gguf_lying_array_length() {
    let mut bytes = small_gguf();
    put_u64(&mut bytes, OFF_TOKENS_COUNT, 1 << 61);
    let (_d, path, msg) = open_bytes("arraylen", &bytes);
    assert_names(
        &msg,
        &path,
        &[TOKENS_KEY, "array length", "2305843009213693952", "remain"],
    );
}

#[test]
fn gguf_unknown_metadata_type() {
    let mut bytes = small_gguf();
    // Value type of the first entry.
    put_u32(&mut bytes, 32 + TOKENS_KEY.len(), 13);
    let (_d, path, msg) = open_bytes("valuetype", &bytes);
    assert_names(&msg, &path, &[TOKENS_KEY, "unknown value type 13"]);
}

#[test]
fn gguf_tensor_offset_past_end() {
    let mut bytes = small_gguf();
    let o = tensor_info_offsets(&bytes, "q.weight");
    put_u64(&mut bytes, o.offset, 1 << 40);
    let (_d, path, msg) = open_bytes("offsetpastend", &bytes);
    assert_names(&msg, &path, &["q.weight", "past the end of the file"]);
}

#[test]
fn gguf_misaligned_offset() {
    let mut bytes = small_gguf();
    let o = tensor_info_offsets(&bytes, "q.weight");
    put_u64(&mut bytes, o.offset, 33);
    let (_d, path, msg) = open_bytes("misaligned", &bytes);
    assert_names(
        &msg,
        &path,
        &["q.weight", "33", "not a multiple of the alignment 32"],
    );
}

#[test]
fn gguf_absurd_dims() {
    let mut bytes = small_gguf();
    let o = tensor_info_offsets(&bytes, "a.weight");
    put_u64(&mut bytes, o.dims, 1 << 40);
    put_u64(&mut bytes, o.dims + 8, 1 << 40);
    let (_d, path, msg) = open_bytes("dimsoverflow", &bytes);
    assert_names(&msg, &path, &["a.weight", "overflows"]);

    let mut bytes = small_gguf();
    put_u64(&mut bytes, o.dims, 0);
    let (_d, path, msg) = open_bytes("dimszero", &bytes);
    assert_names(&msg, &path, &["a.weight", "zero"]);

    let mut bytes = small_gguf();
    put_u32(&mut bytes, o.n_dims, 1000);
    let (_d, path, msg) = open_bytes("ndims", &bytes);
    assert_names(&msg, &path, &["a.weight", "n_dims", "1000"]);
}

#[test]
fn gguf_unknown_tensor_type() {
    let mut bytes = small_gguf();
    let o = tensor_info_offsets(&bytes, "q.weight");
    put_u32(&mut bytes, o.dtype, 77);
    let (_d, path, msg) = open_bytes("dtype", &bytes);
    assert_names(&msg, &path, &["q.weight", "unknown ggml type id 77"]);
}

#[test]
fn gguf_tensor_range_past_end() {
    // The last tensor's data starts inside the file but ends after it.
    let bytes = small_gguf();
    let (_d, path, msg) = open_bytes("rangepastend", &bytes[..bytes.len() - 10]);
    assert_names(&msg, &path, &["q.weight", "run past the end of the file"]);
}

#[test]
fn gguf_block_misaligned_row() {
    // A Q8_0 row of 31 values is not whole blocks.
    let mut bytes = small_gguf();
    let o = tensor_info_offsets(&bytes, "q.weight");
    put_u64(&mut bytes, o.dims, 31);
    let (_d, path, msg) = open_bytes("rowblocks", &bytes);
    assert_names(
        &msg,
        &path,
        &[
            "q.weight",
            "row length 31 is not a multiple of the",
            "block size 32",
        ],
    );
}

#[test]
fn gguf_bad_alignment() {
    use lowbit_model::gguf::GgufValue;
    let meta = vec![("general.alignment".to_string(), GgufValue::U32(24))];
    let mut bytes =
        lowbit_model::gguf_write::gguf_bytes(Vec::<(String, GgufValue)>::new(), &[]).unwrap();
    // The writer refuses a bad alignment, so patch one in by hand: an entry with value 24.
    assert!(lowbit_model::gguf_write::gguf_bytes(meta, &[]).is_err());
    put_u64(&mut bytes, OFF_KV_COUNT, 1);
    bytes.truncate(24);
    bytes.extend_from_slice(&17u64.to_le_bytes());
    bytes.extend_from_slice(b"general.alignment");
    bytes.extend_from_slice(&4u32.to_le_bytes());
    bytes.extend_from_slice(&24u32.to_le_bytes());
    let (_d, path, msg) = open_bytes("alignment", &bytes);
    assert_names(&msg, &path, &["general.alignment is 24", "power of two"]);
}

#[test]
fn gguf_deeply_nested_arrays() {
    // 10,000 levels of one-element arrays: must be refused, not overflow the stack.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.push(b'k');
    bytes.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..10_000 {
        bytes.extend_from_slice(&9u32.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
    }
    let (_d, path, msg) = open_bytes("nested", &bytes);
    assert_names(&msg, &path, &["metadata 'k'", "nested deeper"]);
}

// ---- safetensors ----

/// A model dir with config.json and `model.safetensors` = `bytes`; returns the open error.
fn open_st(tag: &str, bytes: &[u8]) -> (TempDir, std::path::PathBuf, String) {
    let dir = TempDir::new(tag);
    dir.write("config.json", TINY_CONFIG.as_bytes());
    let path = dir.write("model.safetensors", bytes);
    let msg = err_msg(open_hf_dir(dir.path()), tag);
    (dir, path, msg)
}

#[test]
fn small_safetensors_is_valid() {
    let dir = TempDir::new("stvalid");
    dir.write("config.json", TINY_CONFIG.as_bytes());
    dir.write("model.safetensors", &small_safetensors());
    open_hf_dir(dir.path()).expect("the unmodified test file parses");
}

#[test]
fn safetensors_truncated_header() {
    let bytes = small_safetensors();
    let (_d, path, msg) = open_st("sttrunc", &bytes[..5]);
    assert_names(&msg, &path, &["truncated", "5 bytes"]);
    // Cut inside the JSON header.
    let (_d, path, msg) = open_st("sttrunc2", &bytes[..60]);
    assert_names(
        &msg,
        &path,
        &["header length", "larger than the rest of the file"],
    );
}

#[test]
fn safetensors_header_length_larger_than_file() {
    let mut bytes = small_safetensors();
    put_u64(&mut bytes, 0, 1 << 50);
    let (_d, path, msg) = open_st("sthdrlen", &bytes);
    assert_names(
        &msg,
        &path,
        &[
            "header length 1125899906842624",
            "larger than the rest of the file",
        ],
    );
}

#[test]
fn safetensors_bad_json() {
    let bytes = safetensors_bytes(
        r#"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]"#,
        &[0; 4],
    );
    let (_d, path, msg) = open_st("stjson", &bytes);
    assert_names(&msg, &path, &["not valid JSON"]);
    let bytes = safetensors_bytes("[1, 2]", &[]);
    let (_d, path, msg) = open_st("stjson2", &bytes);
    assert_names(&msg, &path, &["not a JSON object"]);
}

#[test]
fn safetensors_offsets_past_end() {
    let bytes = safetensors_bytes(
        r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
        &[0; 8],
    );
    let (_d, path, msg) = open_st("stpastend", &bytes);
    assert_names(
        &msg,
        &path,
        &["'w'", "run past the end of the data section (8 bytes)"],
    );
    let bytes = safetensors_bytes(
        r#"{"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}"#,
        &[0; 8],
    );
    let (_d, path, msg) = open_st("stbackwards", &bytes);
    assert_names(&msg, &path, &["'w'", "start is after end"]);
}

#[test]
fn safetensors_unsupported_dtype() {
    let bytes = safetensors_bytes(
        r#"{"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#,
        &[0; 16],
    );
    let (_d, path, msg) = open_st("stdtype", &bytes);
    assert_names(&msg, &path, &["'ids'", "dtype I64 is not supported"]);
}

#[test]
fn safetensors_data_length_mismatch() {
    let bytes = safetensors_bytes(
        r#"{"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,8]}}"#,
        &[0; 16],
    );
    let (_d, path, msg) = open_st("stlen", &bytes);
    assert_names(&msg, &path, &["'w'", "needs 12 bytes", "hold 8"]);
}

#[test]
fn safetensors_bad_shape_and_offsets_fields() {
    let bytes = safetensors_bytes(
        r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
        &[0; 4],
    );
    let (_d, path, msg) = open_st("stshape", &bytes);
    assert_names(&msg, &path, &["'w'", "shape"]);
    let bytes = safetensors_bytes(
        r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#,
        &[0; 4],
    );
    let (_d, path, msg) = open_st("stoffsets", &bytes);
    assert_names(&msg, &path, &["'w'", "data_offsets"]);
    let huge = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{0},{0},{0}],"data_offsets":[0,4]}}}}"#,
        1u64 << 40
    );
    let bytes = safetensors_bytes(&huge, &[0; 4]);
    let (_d, path, msg) = open_st("stoverflow", &bytes);
    assert_names(&msg, &path, &["'w'", "overflows"]);
}

#[test]
fn hf_dir_missing_config() {
    let dir = TempDir::new("noconfig");
    dir.write("model.safetensors", &small_safetensors());
    let msg = err_msg(open_hf_dir(dir.path()), "missing config");
    assert_names(&msg, dir.path(), &["no config.json"]);
}

#[test]
fn hf_dir_missing_weights() {
    let dir = TempDir::new("noweights");
    dir.write("config.json", TINY_CONFIG.as_bytes());
    let msg = err_msg(open_hf_dir(dir.path()), "missing weights");
    assert_names(
        &msg,
        dir.path(),
        &["neither model.safetensors nor model.safetensors.index.json"],
    );
}

#[test]
fn hf_dir_bad_config_json() {
    let dir = TempDir::new("badconfig");
    let cfg = dir.write("config.json", b"{\"hidden_size\": ");
    dir.write("model.safetensors", &small_safetensors());
    let msg = err_msg(open_hf_dir(dir.path()), "bad config");
    assert_names(&msg, &cfg, &["config.json", "invalid JSON"]);
}

#[test]
fn hf_dir_shard_missing() {
    let dir = TempDir::new("shardmissing");
    dir.write("config.json", TINY_CONFIG.as_bytes());
    dir.write("model-00001-of-00002.safetensors", &small_safetensors());
    let index = r#"{"metadata":{},"weight_map":{"w":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00001-of-00002.safetensors","x":"model-00002-of-00002.safetensors"}}"#;
    let index_path = dir.write("model.safetensors.index.json", index.as_bytes());
    let msg = err_msg(open_hf_dir(dir.path()), "shard missing");
    assert_names(
        &msg,
        &index_path,
        &[
            "model-00002-of-00002.safetensors",
            "listed in the index but missing",
        ],
    );
}

#[test]
fn hf_dir_tensor_missing_from_shard() {
    let dir = TempDir::new("tensormissing");
    dir.write("config.json", TINY_CONFIG.as_bytes());
    let shard = dir.write("model-00001-of-00001.safetensors", &small_safetensors());
    let index = r#"{"weight_map":{"w":"model-00001-of-00001.safetensors","ghost":"model-00001-of-00001.safetensors"}}"#;
    dir.write("model.safetensors.index.json", index.as_bytes());
    let msg = err_msg(open_hf_dir(dir.path()), "tensor missing");
    assert_names(&msg, &shard, &["'ghost'", "not in it"]);
}

#[test]
fn hf_dir_shard_path_traversal() {
    let dir = TempDir::new("traversal");
    dir.write("config.json", TINY_CONFIG.as_bytes());
    let index = r#"{"weight_map":{"w":"../../etc/passwd"}}"#;
    let index_path = dir.write("model.safetensors.index.json", index.as_bytes());
    let msg = err_msg(open_hf_dir(dir.path()), "traversal");
    assert_names(&msg, &index_path, &["not a plain file name"]);
}
