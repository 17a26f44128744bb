//! Randomly mutated GGUF and safetensors headers must give Ok or Err, never a panic (a cheap
//! in-CI complement to the cargo-fuzz targets in fuzz/).

mod io_common;

use std::path::Path;

use io_common::*;
use lowbit_model::gguf::GgufFile;
use lowbit_model::safetensors_dir::parse_safetensors_header;
use proptest::prelude::*;

/// Apply `edits` (position, byte) and optionally truncate.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    for &(at, b) in edits {
        let n = bytes.len();
        bytes[at % n] = b;
    }
    if let Some(c) = cut {
        bytes.truncate(c % (bytes.len() + 1));
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_gguf_never_panics(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let bytes = mutate(small_gguf(), &edits, cut);
        if let Ok(g) = GgufFile::parse(Path::new("m.gguf"), &bytes) {
            for t in &g.tensors {
                prop_assert!(g.data_offset + t.offset + t.byte_len() as u64 <= bytes.len() as u64);
            }
        }
    }

    #[test]
    fn mutated_safetensors_never_panics(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let bytes = mutate(small_safetensors(), &edits, cut);
        if let Ok(h) = parse_safetensors_header(Path::new("m.safetensors"), &bytes) {
            for t in &h.tensors {
                prop_assert!(t.start <= t.end && h.data_offset + t.end <= bytes.len());
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut gguf = b"GGUF\x03\x00\x00\x00".to_vec();
        gguf.extend_from_slice(&bytes);
        let _ = GgufFile::parse(Path::new("r.gguf"), &gguf);
        let _ = parse_safetensors_header(Path::new("r.safetensors"), &bytes);
    }
}
