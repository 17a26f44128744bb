//! Hugging Face hub ids (`org/name`): found in the local HF cache first, otherwise downloaded with
//! `hf-hub` (config, tokenizer files, safetensors and their index) into that same cache.
//!
//! Cache layout (shared with Python's huggingface_hub):
//! `<cache>/models--org--name/refs/<revision>` holds a commit hash, and
//! `<cache>/models--org--name/snapshots/<commit>/` holds the files.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};
use crate::safetensors_dir::{INDEX_FILE, SINGLE_FILE};

/// Where and how to look for hub models. `from_env` reads the usual HF_* variables; tests build
/// one directly so they never touch the process environment.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The hub cache directory (the one holding `models--*` folders).
    pub cache_dir: PathBuf,
    /// Hub URL; None means hf-hub's default (https://huggingface.co).
    pub endpoint: Option<String>,
    /// Never touch the network (HF_HUB_OFFLINE=1).
    pub offline: bool,
    /// Access token for gated models (HF_TOKEN); None falls back to `<HF_HOME>/token`.
    pub token: Option<String>,
    /// Show download progress bars.
    pub progress: bool,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The hub cache directory: HF_HUB_CACHE, else HF_HOME/hub, else
/// $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
pub fn hf_cache_dir() -> PathBuf {
    if let Some(dir) = env_nonempty("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = env_nonempty("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    if let Some(xdg) = env_nonempty("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("huggingface").join("hub");
    }
    let home = env_nonempty("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home)
        .join(".cache")
        .join("huggingface")
        .join("hub")
}

impl HubOptions {
    pub fn from_env() -> HubOptions {
        let offline = env_nonempty("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        HubOptions {
            cache_dir: hf_cache_dir(),
            endpoint: env_nonempty("HF_ENDPOINT"),
            offline,
            token: env_nonempty("HF_TOKEN").or_else(|| env_nonempty("HUGGING_FACE_HUB_TOKEN")),
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

/// Whether `s` has the shape of a hub model id: `name` or `org/name`, made of ASCII letters,
/// digits, `-`, `_` and `.`, without `..` or leading/trailing punctuation.
pub fn is_valid_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.is_empty() || parts.len() > 2 {
        return false;
    }
    parts.iter().all(|p| {
        !p.is_empty()
            && p.len() <= 96
            && !p.contains("..")
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    })
}

/// The `models--org--name` folder of `id` in `cache_dir`.
pub fn repo_cache_dir(cache_dir: &Path, id: &str) -> PathBuf {
    cache_dir.join(format!("models--{}", id.replace('/', "--")))
}

/// Whether `dir` holds config.json and complete safetensors weights (a single file, or an index
/// whose every shard is present).
pub fn snapshot_is_complete(dir: &Path) -> bool {
    if !dir.join("config.json").is_file() {
        return false;
    }
    if dir.join(SINGLE_FILE).is_file() {
        return true;
    }
    let Ok(text) = std::fs::read(dir.join(INDEX_FILE)) else {
        return false;
    };
    shards_of_index(&text)
        .is_some_and(|shards| !shards.is_empty() && shards.iter().all(|s| dir.join(s).is_file()))
}

/// Distinct shard file names of an index, or None when it is malformed or names a path.
fn shards_of_index(text: &[u8]) -> Option<Vec<String>> {
    let index: serde_json::Value = serde_json::from_slice(text).ok()?;
    let map = index.get("weight_map")?.as_object()?;
    let mut shards: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file.as_str()?;
        if Path::new(file).file_name().is_none_or(|n| n != file) {
            return None;
        }
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
    }
    Some(shards)
}

fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A complete cached snapshot of `id` at `revision` (default "main"). A branch or tag is looked up
/// through `refs/`; without a revision and without `refs/main`, the newest complete snapshot is
/// used, as an offline cache copied from elsewhere may lack refs.
pub fn find_cached_snapshot(cache_dir: &Path, id: &str, revision: Option<&str>) -> Option<PathBuf> {
    let repo = repo_cache_dir(cache_dir, id);
    let snapshots = repo.join("snapshots");
    let rev = revision.unwrap_or("main");
    if is_commit_hash(rev) {
        let dir = snapshots.join(rev);
        if snapshot_is_complete(&dir) {
            return Some(dir);
        }
    }
    if let Ok(commit) = std::fs::read_to_string(repo.join("refs").join(rev)) {
        let commit = commit.trim();
        if !commit.is_empty() && !commit.contains(['/', '\\']) && commit != ".." {
            let dir = snapshots.join(commit);
            if snapshot_is_complete(&dir) {
                return Some(dir);
            }
        }
    }
    if revision.is_some() {
        return None;
    }
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(&snapshots).ok()?.flatten() {
        let dir = entry.path();
        if !snapshot_is_complete(&dir) {
            continue;
        }
        let mtime = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, _)| mtime > *t) {
            best = Some((mtime, dir));
        }
    }
    best.map(|(_, dir)| dir)
}

/// Resolve a hub id to a local snapshot directory holding config.json, tokenizer files and
/// safetensors, using the HF_* environment (see `HubOptions::from_env`).
pub fn resolve_hub_id(id: &str, revision: Option<&str>) -> Result<PathBuf> {
    resolve_hub_id_with(id, revision, &HubOptions::from_env())
}

/// `resolve_hub_id` with explicit options.
pub fn resolve_hub_id_with(id: &str, revision: Option<&str>, opts: &HubOptions) -> Result<PathBuf> {
    if !is_valid_hub_id(id) {
        return Err(ModelError::Other(format!(
            "'{id}' is neither an existing path nor a Hugging Face hub id (org/name)"
        )));
    }
    if let Some(dir) = find_cached_snapshot(&opts.cache_dir, id, revision) {
        return Ok(dir);
    }
    let rev = revision.unwrap_or("main");
    if opts.offline {
        return Err(ModelError::Other(format!(
            "{id} (revision {rev}) is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set; \
             download it there or pass a local path",
            opts.cache_dir.display()
        )));
    }
    download(id, rev, opts)
}

/// An error for a failed hub request: HTTP statuses get their own hints, anything else is most
/// likely a missing network.
fn hub_error(id: &str, what: &str, err: &dyn std::fmt::Display) -> ModelError {
    let msg = err.to_string();
    let hint = if msg.contains("status code 401") || msg.contains("status code 403") {
        "access denied: a gated or private model? Accept its license on the hub and set HF_TOKEN"
    } else if msg.contains("status code 404") {
        "not found on the hub: check the id and revision"
    } else {
        "no network? Put the model in the HF cache or pass a local path"
    };
    ModelError::Other(format!(
        "could not download {id} from the Hugging Face hub ({what}: {msg}): {hint}"
    ))
}

fn download(id: &str, rev: &str, opts: &HubOptions) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};

    let mut builder = ApiBuilder::from_cache(Cache::new(opts.cache_dir.clone()))
        .with_progress(opts.progress)
        .with_retries(2);
    if let Some(endpoint) = &opts.endpoint {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    if opts.token.is_some() {
        builder = builder.with_token(opts.token.clone());
    }
    let api = builder
        .build()
        .map_err(|e| hub_error(id, "client setup", &e))?;
    let repo = api.repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        rev.to_string(),
    ));

    let info = repo
        .info()
        .map_err(|e| hub_error(id, "repository info", &e))?;
    let files: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let has = |f: &str| files.contains(&f);
    if !has("config.json") {
        let ggufs: Vec<&str> = files
            .iter()
            .copied()
            .filter(|f| f.ends_with(".gguf"))
            .collect();
        let hint = if ggufs.is_empty() {
            String::new()
        } else {
            format!(
                " It has GGUF files ({}): download one and pass its path.",
                ggufs.join(", ")
            )
        };
        return Err(ModelError::Other(format!(
            "{id} (revision {rev}) on the Hugging Face hub has no config.json, so it is not a transformers model.{hint}"
        )));
    }
    let get = |f: &str| repo.get(f).map_err(|e| hub_error(id, f, &e));
    let config = get("config.json")?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        if has(f) {
            get(f)?;
        }
    }
    if has(INDEX_FILE) {
        let index = get(INDEX_FILE)?;
        let text = std::fs::read(&index).map_err(|e| ModelError::io(&index, e))?;
        let shards = shards_of_index(&text)
            .ok_or_else(|| ModelError::format(&index, "malformed weight_map in the index"))?;
        for shard in shards {
            get(&shard)?;
        }
    } else if has(SINGLE_FILE) {
        get(SINGLE_FILE)?;
    } else {
        return Err(ModelError::Other(format!(
            "{id} (revision {rev}) on the Hugging Face hub has neither {SINGLE_FILE} nor {INDEX_FILE}; \
             lowbit reads safetensors weights only"
        )));
    }
    config.parent().map(Path::to_path_buf).ok_or_else(|| {
        ModelError::Other(format!("hf-hub returned a bad path {}", config.display()))
    })
}
