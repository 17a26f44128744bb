//! parse_safetensors_header on arbitrary bytes: must return Ok or Err, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit_model::safetensors_dir::parse_safetensors_header;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse_safetensors_header(std::path::Path::new("fuzz.safetensors"), data) {
        // Whatever parses must describe byte ranges inside the input.
        for t in &h.tensors {
            assert!(t.start <= t.end && h.data_offset + t.end <= data.len());
        }
    }
});
