//! Helpers shared by the io_* tests: temp dirs, a small valid GGUF, safetensors builders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use lowbit_formats::GgmlType;
use lowbit_model::gguf::GgufValue;
use lowbit_model::gguf_write::{gguf_bytes, GgufTensorWrite};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lowbit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// Write `bytes` to `name` inside the dir and return its path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The first metadata entry is the token array, so its fields sit at fixed offsets:
/// 24 key length, 32 key, 53 value type, 57 element type, 61 count, 69 first string length.
pub const TOKENS_KEY: &str = "tokenizer.ggml.tokens";
pub const OFF_TENSOR_COUNT: usize = 8;
pub const OFF_KV_COUNT: usize = 16;
pub const OFF_FIRST_KEY_LEN: usize = 24;
pub const OFF_TOKENS_COUNT: usize = 32 + TOKENS_KEY.len() + 4 + 4;
pub const OFF_FIRST_TOKEN_LEN: usize = OFF_TOKENS_COUNT + 8;

pub fn small_metadata() -> Vec<(String, GgufValue)> {
    let s = |x: &str| GgufValue::String(x.to_string());
    vec![
        (
            TOKENS_KEY.into(),
            GgufValue::Array(vec![s("<unk>"), s("<s>"), s("hello"), s("▁wörld")]),
        ),
        ("general.architecture".into(), s("llama")),
        ("general.name".into(), s("tiny")),
        ("llama.block_count".into(), GgufValue::U32(2)),
        ("llama.rope.freq_base".into(), GgufValue::F32(10000.0)),
        ("llama.use_parallel".into(), GgufValue::Bool(true)),
        ("u8".into(), GgufValue::U8(200)),
        ("i8".into(), GgufValue::I8(-5)),
        ("u16".into(), GgufValue::U16(65535)),
        ("i16".into(), GgufValue::I16(-300)),
        ("i32".into(), GgufValue::I32(-70000)),
        ("u64".into(), GgufValue::U64(1 << 40)),
        ("i64".into(), GgufValue::I64(-(1 << 40))),
        ("f64".into(), GgufValue::F64(0.125)),
        (
            "tokenizer.ggml.scores".into(),
            GgufValue::Array(vec![
                GgufValue::F32(0.0),
                GgufValue::F32(-1.5),
                GgufValue::F32(2.0),
                GgufValue::F32(3.0),
            ]),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array(vec![
                GgufValue::I32(2),
                GgufValue::I32(3),
                GgufValue::I32(1),
                GgufValue::I32(1),
            ]),
        ),
        (
            "nested".into(),
            GgufValue::Array(vec![
                GgufValue::Array(vec![GgufValue::U32(1), GgufValue::U32(2)]),
                GgufValue::Array(vec![GgufValue::U32(3)]),
            ]),
        ),
    ]
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Tensor data of the small GGUF: an F32 [2, 4] and a Q8_0 [2, 32] (scale 1.0, quants 0..31).
pub fn small_tensor_data() -> (Vec<u8>, Vec<u8>) {
    let a = f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    let mut q = Vec::new();
    for _ in 0..2 {
        q.extend_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
        q.extend((0..32).map(|i| i as u8));
    }
    (a, q)
}

/// A small valid GGUF v3 file: all metadata value types, two tensors, 32-byte alignment.
pub fn small_gguf() -> Vec<u8> {
    let (a, q) = small_tensor_data();
    let tensors = [
        GgufTensorWrite {
            name: "a.weight".into(),
            dtype: GgmlType::F32,
            shape: vec![2, 4],
            data: &a,
        },
        GgufTensorWrite {
            name: "q.weight".into(),
            dtype: GgmlType::Q8_0,
            shape: vec![2, 32],
            data: &q,
        },
    ];
    gguf_bytes(small_metadata(), &tensors).unwrap()
}

/// Offsets in `bytes` of a tensor-table entry's n_dims, first dim, type and offset fields.
pub struct TensorInfoOffsets {
    pub n_dims: usize,
    pub dims: usize,
    pub dtype: usize,
    pub offset: usize,
}

pub fn tensor_info_offsets(bytes: &[u8], name: &str) -> TensorInfoOffsets {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("tensor name in table");
    let n_dims = at + needle.len();
    let n = u32::from_le_bytes(bytes[n_dims..n_dims + 4].try_into().unwrap()) as usize;
    let dims = n_dims + 4;
    let dtype = dims + 8 * n;
    TensorInfoOffsets {
        n_dims,
        dims,
        dtype,
        offset: dtype + 4,
    }
}

pub fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// A safetensors file from a JSON header and raw data.
pub fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A valid safetensors file with an F32 [2, 2] "w", an F16 [3] "b" and a BF16 [2] "c".
pub fn small_safetensors() -> Vec<u8> {
    let mut data = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    for x in [0.5f32, -1.0, 2.0] {
        data.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
    }
    for x in [3.0f32, -0.25] {
        data.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes());
    }
    let header = r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[3],"data_offsets":[16,22]},"c":{"dtype":"BF16","shape":[2],"data_offsets":[22,26]}}"#;
    safetensors_bytes(header, &data)
}

pub const TINY_CONFIG: &str =
    r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":2}"#;

/// The error message of `r`, panicking with a clear note when it is Ok.
pub fn err_msg<T>(r: lowbit_model::Result<T>, case: &str) -> String {
    match r {
        Ok(_) => panic!("{case}: expected an error, got Ok"),
        Err(e) => {
            eprintln!("{case}: {e}");
            e.to_string()
        }
    }
}

/// Assert that `msg` names `path` and contains every one of `words`.
pub fn assert_names(msg: &str, path: &Path, words: &[&str]) {
    let file = path.file_name().unwrap().to_string_lossy();
    assert!(
        msg.contains(&*file),
        "message does not name the file {file}: {msg}"
    );
    for w in words {
        assert!(msg.contains(w), "message lacks '{w}': {msg}");
    }
}
