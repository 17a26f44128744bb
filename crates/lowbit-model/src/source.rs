//! Opening a model from whatever the user points at: a GGUF file, an HF directory (or one of its
//! safetensors files), a llama2.c checkpoint, or a hub id (`org/name`).

use std::path::{Path, PathBuf};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightStore;

/// A model ready to run: config, weights (HF names) and tokenizer.
pub struct LoadedModel {
    pub path: PathBuf,
    /// "gguf", "hf" or "llama2c".
    pub source: &'static str,
    pub config: ModelConfig,
    pub weights: WeightStore,
    pub tokenizer: Box<dyn Tokenizer>,
}

impl LoadedModel {
    pub fn transformer(&self) -> Result<crate::Transformer> {
        crate::Transformer::load(self.config.clone(), &self.weights)
    }
}

fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// Open `spec`: an existing path, else a hub id.
pub fn load_model(spec: &str) -> Result<LoadedModel> {
    let path = PathBuf::from(spec);
    if !path.exists() {
        let looks_like_id =
            spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.ends_with(".gguf");
        if looks_like_id {
            let dir = crate::hub::resolve_hub_id(spec, None)?;
            return load_hf(&dir);
        }
        return Err(ModelError::io(
            &path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    if path.is_dir() {
        return load_hf(&path);
    }
    if is_gguf(&path) {
        return load_gguf(&path);
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        return load_hf(&dir);
    }
    if path.extension().is_some_and(|e| e == "bin") {
        return load_llama2c(&path);
    }
    Err(ModelError::unsupported(
        &path,
        "not a GGUF file, HF model directory, .safetensors file or llama2.c .bin checkpoint",
    ))
}

pub fn load_gguf(path: &Path) -> Result<LoadedModel> {
    let (g, mut weights) = crate::gguf::open_gguf(path)?;
    let config = crate::gguf_model::config_from_gguf(&g, &weights)?;
    crate::gguf_model::rename_to_hf(config.arch, &mut weights);
    let tokenizer = crate::tokenizer::gguf::tokenizer_from_gguf(&g)?;
    Ok(LoadedModel {
        path: path.to_path_buf(),
        source: "gguf",
        config,
        weights,
        tokenizer,
    })
}

pub fn load_hf(dir: &Path) -> Result<LoadedModel> {
    let (cfg_json, mut weights) = crate::safetensors_dir::open_hf_dir(dir)?;
    let config = crate::config::from_hf_config(&cfg_json, &dir.join("config.json"))?;
    // Multimodal checkpoints keep the text model under model.language_model.
    let names: Vec<String> = weights.names().map(|s| s.to_string()).collect();
    for n in names {
        if let Some(rest) = n.strip_prefix("model.language_model.") {
            weights.rename(&n, &format!("model.{rest}"));
        } else if let Some(rest) = n.strip_prefix("language_model.model.") {
            weights.rename(&n, &format!("model.{rest}"));
        }
    }
    let tok_path = dir.join("tokenizer.json");
    // lowbit extension (docs/FORMAT.md): models made from GGUF / llama2.c sources carry their
    // tokenizer as a vocab-only GGUF.
    let gguf_tok = dir.join("tokenizer.gguf");
    let tokenizer: Box<dyn Tokenizer> = if tok_path.exists() {
        Box::new(crate::tokenizer::hf::HfTokenizer::open(dir)?)
    } else if gguf_tok.exists() {
        let bytes = std::fs::read(&gguf_tok).map_err(|e| ModelError::io(&gguf_tok, e))?;
        let g = crate::gguf::GgufFile::parse(&gguf_tok, &bytes)?;
        crate::tokenizer::gguf::tokenizer_from_gguf(&g)?
    } else {
        return Err(ModelError::unsupported(
            dir,
            "no tokenizer.json (or tokenizer.gguf) in the model directory",
        ));
    };
    Ok(LoadedModel {
        path: dir.to_path_buf(),
        source: "hf",
        config,
        weights,
        tokenizer,
    })
}

/// llama2.c: the tokenizer is `tok{vocab}.bin` or `tokenizer.bin` next to the checkpoint.
pub fn load_llama2c(path: &Path) -> Result<LoadedModel> {
    let (config, weights) = crate::llama2c::open_llama2c(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join(format!("tok{}.bin", config.vocab_size)),
        dir.join("tokenizer.bin"),
    ];
    let tok = candidates.iter().find(|p| p.exists()).ok_or_else(|| {
        ModelError::unsupported(
            path,
            format!(
                "no llama2.c tokenizer found next to the checkpoint (looked for {} and {})",
                candidates[0].display(),
                candidates[1].display()
            ),
        )
    })?;
    let tokenizer: Box<dyn Tokenizer> = Box::new(
        crate::tokenizer::llama2c::Llama2cTokenizer::open(tok, Some(config.vocab_size))?,
    );
    Ok(LoadedModel {
        path: path.to_path_buf(),
        source: "llama2c",
        config,
        weights,
        tokenizer,
    })
}
