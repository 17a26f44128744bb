//! GgufFile::parse on arbitrary bytes: must return Ok or Err, never panic, hang or over-allocate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit_model::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = GgufFile::parse(std::path::Path::new("fuzz.gguf"), data) {
        // Whatever parses must describe byte ranges inside the input.
        for t in &file.tensors {
            let start = file.data_offset + t.offset;
            assert!(start + t.byte_len() as u64 <= data.len() as u64);
        }
        let _ = file.architecture();
    }
});
