//! Kernel modules, loaded by name with `finit_module(2)`; no modprobe is needed (a diskless
//! node's initramfs has none).
//!
//! - **Already there:** a module named in `/proc/modules`, present under `/sys/module/<name>`
//!   (loaded, or built in with parameters), or listed in `<modules_dir>/modules.builtin` is
//!   [`Outcome::Unchanged`]; so is `EEXIST` from the kernel. Names compare with `-` and `_`
//!   equal, as the kernel does.
//! - **Finding the file:** `<modules_dir>/modules.dep` when it exists (it names every module
//!   and its dependencies); else a walk of `<modules_dir>` (symlinks not followed: `build` and
//!   `source` point into kernel headers) for `<name>.ko`, `.ko.zst`, `.ko.xz` or `.ko.gz`.
//!   The index is built once per [`Loader`], i.e. once per apply.
//! - **Dependencies:** from `modules.dep`, loaded first, deepest first (the reverse of the
//!   listed order, as modprobe does), each skipped when already loaded. Without `modules.dep`
//!   there is no dependency information: a module whose dependencies are missing fails with
//!   the kernel's "Unknown symbol" error (ENOENT) and the declared list must name them first.
//! - **Compressed modules:** `.ko.zst` is decompressed in the agent (zstd is already linked for
//!   overlays) and loaded with `init_module(2)`. `.ko.xz`/`.ko.gz` are handed to the kernel with
//!   `MODULE_INIT_COMPRESSED_FILE` (Linux 6.4+ with `CONFIG_MODULE_DECOMPRESS`); when the
//!   kernel refuses that flag and `modprobe` exists under the root (`/sbin`, `/usr/sbin`), it is
//!   run for that one module as the only fallback, since the agent links no xz/gzip decoder;
//!   with neither the item fails and says so.
//! - **Parameters:** a declared entry `"name key=value ..."` passes everything after the name
//!   to the module (the declared module itself, not its dependencies).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;

use rustix::io::Errno;

use super::{errno_text, Outcome, Target};

/// `MODULE_INIT_COMPRESSED_FILE` (include/uapi/linux/module.h): the kernel decompresses.
const MODULE_INIT_COMPRESSED_FILE: i32 = 4;
/// Largest decompressed module accepted (the largest in-tree modules are tens of MiB).
const MAX_IMAGE: u64 = 512 << 20;
/// Largest `modules.dep`/`modules.builtin` read, and deepest walk without one.
const MAX_INDEX_FILE: u64 = 64 << 20;
const MAX_WALK_DEPTH: usize = 12;
const MAX_WALK_ENTRIES: usize = 200_000;

/// Loads modules for one apply: knows what is loaded and where module files are.
pub struct Loader<'a> {
    t: &'a Target,
    loaded: HashSet<String>,
    index: Option<Index>,
}

#[derive(Default)]
struct Index {
    /// Normalised module name → path relative to `modules_dir`.
    by_name: HashMap<String, String>,
    /// Relative path → its dependencies' relative paths, as `modules.dep` lists them.
    deps: HashMap<String, Vec<String>>,
    builtin: HashSet<String>,
    /// How the index was built, for "not found" messages.
    how: String,
}

/// The kernel's form of a module name: `-` and `_` are the same character to it.
fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name a file or `modules.dep` path stands for.
fn name_of(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = [".ko", ".ko.zst", ".ko.xz", ".ko.gz"].iter().find_map(|ext| file.strip_suffix(ext))?;
    Some(normalise(stem))
}

impl<'a> Loader<'a> {
    pub fn new(t: &'a Target) -> Loader<'a> {
        // Unreadable (a kernel without module support, or no /proc): nothing is known to be
        // loaded, and loading tells the rest.
        let loaded = std::fs::read_to_string("/proc/modules")
            .map(|s| s.lines().filter_map(|l| l.split_whitespace().next()).map(normalise).collect())
            .unwrap_or_default();
        Loader { t, loaded, index: None }
    }

    fn is_loaded(&self, name: &str) -> bool {
        self.loaded.contains(name) || Path::new("/sys/module").join(name).is_dir()
    }

    /// Loads one declared module (with its dependencies).
    pub fn load(&mut self, entry: &str) -> Outcome {
        let mut words = entry.split_whitespace();
        let Some(declared) = words.next() else {
            return Outcome::Failed("empty module name".into());
        };
        let params = words.collect::<Vec<_>>().join(" ");
        let name = normalise(declared);
        if name.contains('/') {
            return Outcome::Failed(format!("invalid module name {declared:?}"));
        }
        if self.is_loaded(&name) {
            return Outcome::Unchanged;
        }
        let dir = self.t.modules_dir.clone();
        let index = self.index.get_or_insert_with(|| Index::build(&dir));
        if index.builtin.contains(&name) {
            return Outcome::Unchanged;
        }
        let Some(rel) = index.by_name.get(&name).cloned() else {
            return Outcome::Failed(format!("module {declared} not found under {} ({})", dir.display(), index.how));
        };
        let deps = index.deps.get(&rel).cloned().unwrap_or_default();
        for dep in deps.iter().rev() {
            let Some(dep_name) = name_of(dep) else { continue };
            if self.is_loaded(&dep_name) {
                continue;
            }
            match self.load_file(&dir.join(dep), &dep_name, "") {
                Ok(_) => {
                    self.loaded.insert(dep_name);
                }
                Err(e) => return Outcome::Failed(format!("dependency {dep_name} of {declared}: {e}")),
            }
        }
        match self.load_file(&dir.join(&rel), &name, &params) {
            Ok(true) => {
                self.loaded.insert(name);
                Outcome::Applied
            }
            Ok(false) => {
                self.loaded.insert(name);
                Outcome::Unchanged
            }
            Err(e) => Outcome::Failed(e),
        }
    }

    /// Ok(true): loaded now; Ok(false): the kernel already had it (EEXIST).
    fn load_file(&self, path: &Path, name: &str, params: &str) -> Result<bool, String> {
        let shown = path.display();
        let cparams = CString::new(params).map_err(|_| format!("parameters of {name} contain a NUL byte"))?;
        let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let result = if file_name.ends_with(".ko.zst") {
            let image = decompress_zstd(path).map_err(|e| format!("decompressing {shown}: {e}"))?;
            rustix::system::init_module(&image, &cparams)
        } else {
            let file = File::open(path).map_err(|e| format!("opening {shown}: {e}"))?;
            if file_name.ends_with(".ko") {
                rustix::system::finit_module(&file, &cparams, 0)
            } else {
                match rustix::system::finit_module(&file, &cparams, MODULE_INIT_COMPRESSED_FILE) {
                    Err(e @ (Errno::INVAL | Errno::OPNOTSUPP)) => {
                        return self.modprobe(name, params).map_err(|why| {
                            format!("{shown}: the kernel cannot decompress it itself ({}) and {why}", errno_text(e))
                        });
                    }
                    other => other,
                }
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(Errno::NOSYS) => Err("the kernel was built without module support".into()),
            Err(e @ Errno::PERM) => Err(format!("loading {shown}: {} (needs CAP_SYS_MODULE)", errno_text(e))),
            Err(e) => Err(format!("loading {shown}: {}", errno_text(e))),
        }
    }

    /// The fallback for xz/gzip modules on kernels that cannot decompress them.
    fn modprobe(&self, name: &str, params: &str) -> Result<bool, String> {
        let Some(bin) =
            ["sbin/modprobe", "usr/sbin/modprobe"].iter().map(|p| self.t.root.join(p)).find(|p| p.is_file())
        else {
            return Err("there is no modprobe on the node".into());
        };
        let out = std::process::Command::new(&bin)
            .arg("--")
            .arg(name)
            .args(params.split_whitespace())
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", bin.display()))?;
        if out.status.success() {
            Ok(true)
        } else {
            Err(format!("{} failed ({}): {}", bin.display(), out.status, String::from_utf8_lossy(&out.stderr).trim()))
        }
    }
}

fn decompress_zstd(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut image = Vec::new();
    zstd::stream::read::Decoder::new(File::open(path)?)?.take(MAX_IMAGE + 1).read_to_end(&mut image)?;
    if image.len() as u64 > MAX_IMAGE {
        return Err(std::io::Error::other(format!("larger than {} MiB decompressed", MAX_IMAGE >> 20)));
    }
    Ok(image)
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    let mut s = String::new();
    File::open(path)?.take(MAX_INDEX_FILE).read_to_string(&mut s)?;
    Ok(s)
}

impl Index {
    fn build(dir: &Path) -> Index {
        let mut ix = Index::default();
        if let Ok(text) = read_bounded(&dir.join("modules.builtin")) {
            ix.builtin = text.lines().filter_map(|l| name_of(l.trim())).collect();
        }
        match read_bounded(&dir.join("modules.dep")) {
            Ok(text) => {
                for line in text.lines() {
                    let Some((module, deps)) = line.split_once(':') else { continue };
                    let module = module.trim();
                    let Some(name) = name_of(module) else { continue };
                    ix.by_name.entry(name).or_insert_with(|| module.to_string());
                    ix.deps.insert(module.to_string(), deps.split_whitespace().map(str::to_string).collect());
                }
                ix.how = "looked up in modules.dep".into();
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if !dir.is_dir() {
                    ix.how = "no such directory".into();
                    return ix;
                }
                let mut seen = 0usize;
                walk(dir, "", 0, &mut seen, &mut ix.by_name);
                ix.how = format!("no modules.dep; searched {seen} entries");
            }
            Err(e) => ix.how = format!("modules.dep unreadable: {e}"),
        }
        ix
    }
}

fn walk(dir: &Path, rel: &str, depth: usize, seen: &mut usize, out: &mut HashMap<String, String>) {
    if depth > MAX_WALK_DEPTH {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    // Sorted, so which of two same-named files wins does not depend on directory order.
    let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        *seen += 1;
        if *seen > MAX_WALK_ENTRIES {
            return;
        }
        let Ok(ft) = e.file_type() else { continue };
        let fname = e.file_name().to_string_lossy().into_owned();
        let child_rel = if rel.is_empty() { fname.clone() } else { format!("{rel}/{fname}") };
        if ft.is_dir() {
            walk(&e.path(), &child_rel, depth + 1, seen, out);
        } else if ft.is_file() {
            if let Some(name) = name_of(&fname) {
                out.entry(name).or_insert(child_rel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_paths() {
        assert_eq!(name_of("kernel/drivers/net/virtio_net.ko").as_deref(), Some("virtio_net"));
        assert_eq!(name_of("kernel/fs/nfs/nfs-v4.ko.xz").as_deref(), Some("nfs_v4"));
        assert_eq!(name_of("kernel/x/a.ko.zst").as_deref(), Some("a"));
        assert_eq!(name_of("kernel/x/a.o"), None);
    }
}
